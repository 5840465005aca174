import type { Resource } from 'fhir/r4';
import { RunningServer } from '../../src/main';
import { SyntheticMember } from '../../scripts/synthetic';
import { fhir, startTestServer } from '../helpers/server';
import { memberMatchBody, seedPopulation } from '../helpers/seed';
import { download, downloadAll, exportAll, kickoff, poll } from '../helpers/bulk';
import { getToken, writeClientsFile } from '../helpers/clients';

/**
 * PDex §pdex-127 and the member's whole record, through HTTP with a partner's token: every export
 * and `$everything` answer names this payer's Organization as transmitter of exactly what it sent;
 * the member's Device and the Provenance of the member's claims are the member's (read, search,
 * `_revinclude`, `$everything`, export), another member's are not.
 */
const TRANSMITTER = { system: 'http://hl7.org/fhir/us/core/CodeSystem/us-core-provenance-participant-type', code: 'transmitter' };
const PDEX_PROVENANCE = 'http://hl7.org/fhir/us/davinci-pdex/StructureDefinition/pdex-provenance';
const RESULT = 'http://hl7.org/fhir/us/davinci-pdex/CodeSystem/PdexMultiMemberMatchResultCS';

describe('transmitter Provenance, the member\'s Device and Provenance', () => {
  let server: RunningServer;
  let base: string;
  let member: SyntheticMember;
  let other: SyntheticMember;
  const tokens: Record<string, string> = {};
  const as = (who: string) => ({ authorization: `Bearer ${tokens[who]}` });
  const get = (who: string, path: string) => fhir('GET', `${base}/${path}`, undefined, as(who));
  const put = (r: Record<string, unknown>) => server.store.update(String(r.resourceType), String(r.id), r as unknown as Resource);
  const key = (r: any) => `${r.resourceType}/${r.id}`;
  const isTransmitter = (r: any) => r.resourceType === 'Provenance' && (r.agent ?? []).some((a: any) => (a.type?.coding ?? []).some((c: any) => c.system === TRANSMITTER.system && c.code === TRANSMITTER.code));

  /** What an answer sent, and its transmitter Provenance: their targets are exactly the rest, the agent this payer's Organization, which is sent too. */
  function checkTransmitted(resources: any[]) {
    const sentBy = resources.filter(isTransmitter);
    const rest = resources.filter((r) => !isTransmitter(r));
    expect(sentBy.length).toBeGreaterThan(0);
    for (const p of sentBy) {
      expect(p.meta.profile).toEqual([PDEX_PROVENANCE]);
      expect(p.target.length).toBeLessThanOrEqual(1000);
      expect(typeof p.recorded).toBe('string');
      expect(p.agent).toHaveLength(1);
      expect(p.agent[0].who.reference).toBe('Organization/this-payer');
    }
    expect(sentBy.flatMap((p) => p.target.map((t: any) => t.reference)).sort()).toEqual(rest.map(key).sort());
    const org = rest.find((r) => key(r) === 'Organization/this-payer');
    expect(org).toMatchObject({ resourceType: 'Organization', active: true, name: expect.any(String) });
    return { sentBy, rest };
  }

  beforeAll(async () => {
    const written = await writeClientsFile([{ clientId: 'partner', scopes: 'system/*.read' }, { clientId: 'back-office', scopes: 'system/*.read system/*.write', role: 'service' as const }]);
    server = await startTestServer({ authRequired: true, clientsFile: written.file });
    base = server.baseUrl;
    [member, other] = await seedPopulation(server, 2, 'pv');
    tokens.partner = await getToken(server.tokenUrl, written.clients.partner);
    tokens.service = await getToken(server.tokenUrl, written.clients['back-office'], 'system/*.read system/*.write');
    const m = { reference: `Patient/${member.patientId}` };
    const o = { reference: `Patient/${other.patientId}` };
    const eob = (id: string, patient: { reference: string }) => ({ resourceType: 'ExplanationOfBenefit', id, status: 'active', type: { coding: [{ system: 'http://terminology.hl7.org/CodeSystem/claim-type', code: 'professional' }] }, use: 'claim', patient, created: new Date().toISOString(), insurer: { reference: 'Organization/pv-payer' }, provider: { reference: 'Organization/pv-payer' }, outcome: 'complete', insurance: [{ focal: true, coverage: { reference: 'Coverage/x' } }], billablePeriod: { start: new Date().toISOString().slice(0, 10) } });
    // Provenance as PDex's examples make it (an author for a record), one stored before its target.
    const provenance = (id: string, target: string) => ({ resourceType: 'Provenance', id, meta: { profile: [PDEX_PROVENANCE] }, target: [{ reference: target }], recorded: '2024-07-10T16:26:23.217+00:00', agent: [{ type: { coding: [{ system: 'http://terminology.hl7.org/CodeSystem/provenance-participant-type', code: 'author' }] }, who: { reference: 'Organization/pv-payer' } }], entity: [{ role: 'source', what: { display: 'No reference available' } }] });
    await put(provenance('prov-eob-m', 'ExplanationOfBenefit/eob-m'));
    await put(eob('eob-m', m));
    await put(eob('eob-o', o));
    await put(provenance('prov-eob-o', 'ExplanationOfBenefit/eob-o'));
    await put({ resourceType: 'Device', id: 'dev-m', patient: m, type: { text: 'CPAP' } });
    await put({ resourceType: 'Device', id: 'dev-o', patient: o, type: { text: 'CPAP' } });
    await put(provenance('prov-dev-m', 'Device/dev-m'));
    expect((await fhir('POST', `${base}/Patient/$member-match`, memberMatchBody(member), as('partner'))).status).toBe(200);
  });
  afterAll(async () => server.stop());

  it('the partner reads its member\'s Device and the Provenance of the member\'s claim and device, not another member\'s; totals agree', async () => {
    for (const [path, status] of [['Device/dev-m', 200], ['Device/dev-o', 404], ['Provenance/prov-eob-m', 200], ['Provenance/prov-dev-m', 200], ['Provenance/prov-eob-o', 404]] as const) {
      expect({ path, status: (await get('partner', path)).status }).toEqual({ path, status });
    }
    const search = async (query: string) => {
      const res = await get('partner', `${query}${query.includes('?') ? '&' : '?'}_total=accurate&_count=500`);
      expect(res.status).toBe(200);
      const entries = res.body.entry ?? [];
      return { total: res.body.total, matches: entries.filter((e: any) => e.search.mode === 'match').map((e: any) => key(e.resource)).sort(), included: entries.filter((e: any) => e.search.mode === 'include').map((e: any) => key(e.resource)).sort() };
    };
    expect(await search(`Device?patient=Patient/${member.patientId}`)).toEqual({ total: 1, matches: ['Device/dev-m'], included: [] });
    expect(await search('Device')).toEqual({ total: 1, matches: ['Device/dev-m'], included: [] });
    expect(await search(`Device?patient=Patient/${other.patientId}`)).toEqual({ total: 0, matches: [], included: [] });
    expect(await search('Provenance?target=ExplanationOfBenefit/eob-m')).toEqual({ total: 1, matches: ['Provenance/prov-eob-m'], included: [] });
    expect(await search('Provenance?target=ExplanationOfBenefit/eob-o')).toEqual({ total: 0, matches: [], included: [] });
    expect(await search('Provenance')).toEqual({ total: 2, matches: ['Provenance/prov-dev-m', 'Provenance/prov-eob-m'], included: [] });
    expect(await search('ExplanationOfBenefit?_id=eob-m,eob-o&_revinclude=Provenance:target')).toEqual({ total: 1, matches: ['ExplanationOfBenefit/eob-m'], included: ['Provenance/prov-eob-m'] });
    expect(await search('Device?_revinclude=Provenance:target')).toEqual({ total: 1, matches: ['Device/dev-m'], included: ['Provenance/prov-dev-m'] });
    const count = await get('partner', 'Provenance?_summary=count');
    expect(count.body.total).toBe(2);
  });

  it('Patient/$export and $export hold the member\'s Device and Provenance, and a transmitter Provenance of exactly what was sent', async () => {
    for (const path of [`Patient/${member.patientId}/$export`, 'Patient/$export', '$export']) {
      const { manifest } = await exportAll(`${base}/${path}`, { token: tokens.partner });
      const all = Object.values(await downloadAll(manifest, tokens.partner)).flat() as any[];
      const { rest } = checkTransmitted(all);
      const keys = rest.map(key);
      expect({ path, has: ['Device/dev-m', 'Provenance/prov-eob-m', 'Provenance/prov-dev-m', 'ExplanationOfBenefit/eob-m'].filter((k) => keys.includes(k)).length }).toEqual({ path, has: 4 });
      expect({ path, others: keys.filter((k) => ['Device/dev-o', 'Provenance/prov-eob-o', 'ExplanationOfBenefit/eob-o', `Patient/${other.patientId}`].includes(k)) }).toEqual({ path, others: [] });
      // The manifest's counts are of what the files hold.
      const counted = manifest.output.reduce((n: number, o: any) => n + o.count, 0);
      expect(counted).toBe(all.length);
    }
    // A type list without Provenance asks for none.
    const { manifest } = await exportAll(`${base}/Patient/${member.patientId}/$export?_type=Patient`, { token: tokens.partner });
    expect(manifest.output.map((o: any) => o.type)).toEqual(['Patient']);
  });

  it('the back office\'s system export names the transmitter too, over every member', async () => {
    const { manifest } = await exportAll(`${base}/$export?_type=Patient,Device,Provenance,Organization`, { token: tokens.service });
    const all = Object.values(await downloadAll(manifest, tokens.service)).flat() as any[];
    const { rest } = checkTransmitted(all);
    expect(rest.map(key)).toEqual(expect.arrayContaining(['Device/dev-o', 'Provenance/prov-eob-o', 'Device/dev-m']));
  });

  it('each $everything page names the transmitter of what it holds', async () => {
    const pages: any[][] = [];
    for (let url: string | undefined = `${base}/Patient/${member.patientId}/$everything?_count=7`; url; ) {
      const res = await fhir('GET', url, undefined, as('partner'));
      expect(res.status).toBe(200);
      pages.push(res.body.entry.map((e: any) => e.resource));
      url = res.body.link?.find((l: any) => l.relation === 'next')?.url;
    }
    expect(pages.length).toBeGreaterThan(1);
    for (const page of pages) checkTransmitted(page);
    const keys = pages.flat().filter((r) => !isTransmitter(r)).map(key);
    expect(keys).toEqual(expect.arrayContaining(['Device/dev-m', 'Provenance/prov-eob-m', 'Provenance/prov-dev-m']));
    expect(keys.filter((k) => ['Device/dev-o', 'Provenance/prov-eob-o'].includes(k))).toEqual([]);
  });

  it('$davinci-data-export of a $bulk-member-match Group carries the transmitter Provenance', async () => {
    const body = { resourceType: 'Parameters', parameter: [{ name: 'MemberBundle', part: memberMatchBody(member).parameter }] };
    const k = await kickoff(`${base}/Group/$bulk-member-match`, { method: 'POST', body, token: tokens.partner });
    expect(k.status).toBe(202);
    const done = await poll(k.location as string, tokens.partner);
    const groups = (await download(done.body.output.find((o: any) => o.type === 'Group').url, tokens.partner)).resources;
    const matched = groups.find((g: any) => JSON.stringify(g).includes(`"${RESULT}"`) && JSON.stringify(g).includes('"match"') && (g.member ?? []).some((m: any) => m.entity.reference === `Patient/${member.patientId}`));
    const x = await kickoff(`${base}/Group/${matched.id}/$davinci-data-export`, { method: 'POST', body: { resourceType: 'Parameters', parameter: [{ name: 'exportType', valueCanonical: 'hl7.fhir.us.davinci-pdex#payertopayer' }] }, token: tokens.partner });
    expect(x.status).toBe(202);
    const manifest = (await poll(x.location as string, tokens.partner)).body;
    const all = Object.values(await downloadAll(manifest, tokens.partner)).flat() as any[];
    const { rest } = checkTransmitted(all);
    expect(rest.map(key)).toEqual(expect.arrayContaining(['Device/dev-m', 'Provenance/prov-eob-m']));
  });
});
