import fs from 'node:fs';
import path from 'node:path';
import { RunningServer } from '../../src/main';
import { SyntheticMember } from '../../scripts/synthetic';
import { fhir, startTestServer } from '../helpers/server';
import { memberMatchBody, seedPopulation } from '../helpers/seed';
import { getToken, requestToken, writeClientsFile } from '../helpers/clients';

/**
 * Every way a partner is shown a member's data through the REST API leaves an AuditEvent naming the
 * partner and the member: vread, instance/type/system history, `$everything`, and the entries a
 * search adds with `_include`/`_revinclude`.
 */
describe('AuditEvent for every disclosure to a partner', () => {
  let server: RunningServer;
  const dirs: string[] = [];
  let base: string;
  let member: SyntheticMember;
  let other: SyntheticMember;
  const tokens: Record<string, string> = {};
  const as = (who: string) => ({ authorization: `Bearer ${tokens[who]}` });
  const events = async (patientId: string) =>
    (await fhir('GET', `${base}/AuditEvent?patient=Patient/${patientId}&altid=new-plan&_count=500`, undefined, as('service'))).body.entry?.map((e: any) => e.resource) ?? [];

  /** The AuditEvents naming the member that `request` added, by its partner. */
  async function addedBy(request: () => Promise<{ status: number }>, patientId = member.patientId) {
    const before = new Set((await events(patientId)).map((e: any) => e.id));
    const res = await request();
    const added = (await events(patientId)).filter((e: any) => !before.has(e.id));
    return { status: res.status, added };
  }
  const get = (path: string) => () => fhir('GET', `${base}/${path}`, undefined, as('partner'));
  const entityTypes = (e: any) => (e.entity ?? []).map((x: any) => x.type?.code).filter(Boolean);

  beforeAll(async () => {
    const { file, clients } = await writeClientsFile([
      { clientId: 'new-plan', scopes: 'system/*.read' },
      { clientId: 'back-office', scopes: 'system/*.*', role: 'service', secret: 'right-secret' },
    ]);
    server = await startTestServer({ authRequired: true, clientsFile: file });
    dirs.push(server.config.dataDir, path.dirname(file));
    base = server.baseUrl;
    [member, other] = (await seedPopulation(server, 3)).slice(1);
    tokens.partner = await getToken(server.tokenUrl, clients['new-plan']);
    const basic = { authorization: `Basic ${Buffer.from('back-office:right-secret').toString('base64')}` };
    tokens.service = (await requestToken(server.tokenUrl, { grant_type: 'client_credentials', scope: 'system/*.*' }, basic)).body.access_token;
    expect((await fhir('POST', `${base}/Patient/$member-match`, memberMatchBody(member), as('partner'))).status).toBe(200);
  });
  afterAll(async () => {
    await server.stop();
    for (const dir of dirs) fs.rmSync(dir, { recursive: true, force: true });
  });

  it('vread', async () => {
    const { status, added } = await addedBy(get(`Patient/${member.patientId}/_history/1`));
    expect(status).toBe(200);
    expect(added.map((e: any) => e.subtype[0].code)).toEqual(['vread']);
    expect(added[0].agent[0].name).toBe('new-plan');
    expect(added[0].entity.map((x: any) => x.what?.reference)).toContain(`Patient/${member.patientId}`);
  });

  it('instance, type and system history', async () => {
    for (const [path, code] of [
      [`Patient/${member.patientId}/_history`, 'history-instance'],
      ['Condition/_history', 'history-type'],
      ['_history', 'history-system'],
    ]) {
      const { status, added } = await addedBy(get(path));
      expect({ path, status, codes: added.map((e: any) => e.subtype[0].code) }).toEqual({ path, status: 200, codes: [code] });
      expect(added[0].outcomeDesc).toMatch(/^history of /);
    }
  });

  it('$everything', async () => {
    const { status, added } = await addedBy(get(`Patient/${member.patientId}/$everything?_count=50`));
    expect(status).toBe(200);
    expect(added).toHaveLength(1);
    expect(added[0].subtype[0].code).toBe('operation');
    expect(added[0].outcomeDesc).toMatch(/^\$everything of Patient: \d+ resource\(s\)/);
    expect(entityTypes(added[0])).toEqual(expect.arrayContaining(['Patient', 'Condition', 'Practitioner']));
  });

  it('the entries a search adds with _revinclude and _include name their members', async () => {
    // A directory record the member's encounter names: the search itself returns nobody's data; the revinclude does.
    const enc = (await fhir('GET', `${base}/Encounter?patient=Patient/${member.patientId}&_count=1`, undefined, as('service'))).body.entry[0].resource;
    const practitioner = enc.participant[0].individual.reference.split('/')[1];
    const rev = await addedBy(get(`Practitioner?_id=${practitioner}&_revinclude=Encounter:practitioner`));
    expect(rev.status).toBe(200);
    expect(rev.added).toHaveLength(1);
    expect(rev.added[0].subtype[0].code).toBe('search-type');
    expect(entityTypes(rev.added[0])).toEqual(expect.arrayContaining(['Practitioner', 'Encounter']));
    const inc = await addedBy(get(`Encounter?_id=${enc.id}&_include=Encounter:practitioner`));
    expect(inc.status).toBe(200);
    expect(inc.added).toHaveLength(1);
    expect(entityTypes(inc.added[0])).toEqual(expect.arrayContaining(['Encounter', 'Practitioner']));
  });

  it('records nothing of a member the partner may not see (404 is no disclosure)', async () => {
    for (const path of [`Patient/${other.patientId}/_history/1`, `Patient/${other.patientId}/_history`, `Patient/${other.patientId}/$everything`]) {
      const { status, added } = await addedBy(get(path), other.patientId);
      expect({ path, status, added }).toEqual({ path, status: 404, added: [] });
    }
    const all = JSON.stringify((await fhir('GET', `${base}/AuditEvent?altid=new-plan&_count=500`, undefined, as('service'))).body);
    expect(all).not.toContain(`Patient/${other.patientId}"`);
    expect(all).not.toContain(member.family);
    expect(all).not.toContain(member.birthDate);
  });
});
