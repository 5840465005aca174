import { RunningServer } from '../../src/main';
import { SyntheticMember } from '../../scripts/synthetic';
import { fhir, startTestServer } from '../helpers/server';
import { memberMatchBody, seedPopulation } from '../helpers/seed';
import { download, exportAll } from '../helpers/bulk';
import { getToken, requestToken, writeClientsFile } from '../helpers/clients';

/** The audit trail of disclosures: who got a token, matched, exported, downloaded and read which member's data. */
describe('AuditEvent', () => {
  let server: RunningServer;
  let base: string;
  let member: SyntheticMember;
  const tokens: Record<string, string> = {};
  const as = (who: string) => ({ authorization: `Bearer ${tokens[who]}` });
  const events = async (query: string) => (await fhir('GET', `${base}/AuditEvent?${query}&_count=100`, undefined, as('service'))).body.entry?.map((e: any) => e.resource) ?? [];

  beforeAll(async () => {
    const { file, clients } = await writeClientsFile([
      { clientId: 'new-plan', scopes: 'system/*.read' },
      { clientId: 'back-office', scopes: 'system/*.*', role: 'service', secret: 'right-secret' },
    ]);
    server = await startTestServer({ authRequired: true, clientsFile: file });
    base = server.baseUrl;
    member = (await seedPopulation(server, 3))[1];
    tokens.partner = await getToken(server.tokenUrl, clients['new-plan']);
    const basic = (secret: string) => ({ authorization: `Basic ${Buffer.from(`back-office:${secret}`).toString('base64')}` });
    tokens.service = (await requestToken(server.tokenUrl, { grant_type: 'client_credentials', scope: 'system/*.*' }, basic('right-secret'))).body.access_token;
    expect((await requestToken(server.tokenUrl, { grant_type: 'client_credentials', scope: 'system/*.*' }, basic('wrong'))).status).toBe(401);
    expect((await fhir('POST', `${base}/Patient/$member-match`, memberMatchBody(member), as('partner'))).status).toBe(200);
    expect((await fhir('GET', `${base}/Patient/${member.patientId}`, undefined, as('partner'))).status).toBe(200);
    expect((await fhir('GET', `${base}/Condition?patient=Patient/${member.patientId}`, undefined, as('partner'))).status).toBe(200);
    const { manifest } = await exportAll(`${base}/Patient/${member.patientId}/$export?_type=Patient,Condition`, { token: tokens.partner });
    for (const o of manifest.output) expect((await download(o.url, tokens.partner)).status).toBe(200);
  });
  afterAll(async () => server.stop());

  it('records tokens issued, naming the client, and refused, naming no client as the agent', async () => {
    const tokenEvents = await events('type=http://dicom.nema.org/resources/ontology/DCM|110114');
    // A refused request proved nothing: its agent is "unauthenticated", the id it claimed only a detail.
    const refused = tokenEvents.filter((e: any) => e.outcome === '4');
    expect(refused.map((e: any) => e.agent[0].name)).toEqual(['unauthenticated']);
    expect(refused[0].entity[0].detail[0]).toEqual({ type: 'claimed-client-id', valueString: 'back-office' });
    expect(tokenEvents.filter((e: any) => e.outcome === '0').map((e: any) => e.agent[0].name)).toEqual(expect.arrayContaining(['new-plan', 'back-office']));
  });

  it('records each disclosure of the member to the partner: match, read, search, export, download', async () => {
    const mine = await events(`patient=Patient/${member.patientId}&altid=new-plan`);
    const kinds = mine.map((e: any) => `${e.subtype[0].code}:${e.outcomeDesc.split(' ')[0]}`);
    expect(kinds).toEqual(expect.arrayContaining(['operation:$member-match:', 'read:read', 'search-type:search', 'operation:$export', 'read:export']));
    for (const e of mine) expect(e.agent[0].who.display).toBe('new-plan');
    // Ids and counts only: no demographics, no queries, no tokens.
    const all = JSON.stringify(await events('_count=100'));
    expect(all).not.toContain(member.birthDate);
    expect(all).not.toContain(member.family);
    expect(all).not.toContain(tokens.partner);
  });

  it('is the payer\'s own: partners read none of it, nobody writes it', async () => {
    expect((await fhir('GET', `${base}/AuditEvent`, undefined, as('partner'))).body.entry ?? []).toEqual([]);
    const one = (await events('_count=1'))[0];
    expect((await fhir('GET', `${base}/AuditEvent/${one.id}`, undefined, as('partner'))).status).toBe(404);
    expect((await fhir('POST', `${base}/AuditEvent`, { ...one, id: undefined }, as('service'))).status).toBe(405);
    expect((await fhir('PUT', `${base}/AuditEvent/${one.id}`, one, as('service'))).status).toBe(405);
    expect((await fhir('DELETE', `${base}/AuditEvent/${one.id}`, undefined, as('service'))).status).toBe(405);
  });
});
