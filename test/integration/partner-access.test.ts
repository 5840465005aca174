import type { Resource } from 'fhir/r4';
import { RunningServer } from '../../src/main';
import { SyntheticMember } from '../../scripts/synthetic';
import { fhir, startTestServer } from '../helpers/server';
import { memberMatchBody, seedPopulation } from '../helpers/seed';
import { downloadAll, exportAll, kickoff } from '../helpers/bulk';
import { getToken, writeClientsFile } from '../helpers/clients';

/**
 * A hostile partner against the access rule, through HTTP with its own token: records that only
 * mention its member, Groups listing other members, sensitive labels in other spellings, a
 * look-alike consent policy, a Consent moved to another patient, and counts of what it cannot see.
 */
describe('partner access: about, not mention', () => {
  let server: RunningServer;
  let base: string;
  let member: SyntheticMember; // matched by the partners
  let dependent: SyntheticMember; // matched by nobody
  const tokens: Record<string, string> = {};
  const as = (who: string) => ({ authorization: `Bearer ${tokens[who]}` });
  const get = (who: string, path: string) => fhir('GET', `${base}/${path}`, undefined, as(who));
  const put = (r: Record<string, unknown>) => server.store.update(String(r.resourceType), String(r.id), r as unknown as Resource);
  const ACT = 'http://terminology.hl7.org/CodeSystem/v3-ActCode';
  const LABELS: [string, string][] = [
    ['urn:oid:2.16.840.1.113883.5.4', 'HIV'], [ACT, 'ETHUD'], [ACT, 'BH'], [ACT, 'OPIOIDUD'], [ACT, 'SICKLE'], [ACT, '42CFRPart2'],
    ['urn:oid:2.16.840.1.113883.5.25', 'R'], ['http://hl7.org/fhir/v3/Confidentiality', 'V'],
  ];
  const labelled = LABELS.map(([system, code], i) => ({ resourceType: 'Condition', id: `label-${i}`, subject: { reference: '' }, code: { text: 'x' }, meta: { security: [{ system, code }] } }));

  /** Every match of a search, following next links, and the total of its first page. */
  async function searchAll(who: string, query: string): Promise<{ ids: string[]; total: number; resources: any[] }> {
    const resources: any[] = [];
    let total = -1;
    for (let url: string | undefined = `${base}/${query}${query.includes('?') ? '&' : '?'}_count=500&_total=accurate`; url; ) {
      const res = await fhir('GET', url, undefined, as(who));
      expect({ url, status: res.status }).toEqual({ url, status: 200 });
      if (total < 0) total = res.body.total;
      resources.push(...(res.body.entry ?? []).filter((e: any) => e.search?.mode === 'match').map((e: any) => e.resource));
      url = res.body.link?.find((l: any) => l.relation === 'next')?.url;
    }
    return { ids: resources.map((r) => `${r.resourceType}/${r.id}`).sort(), total, resources };
  }
  const everything = async (who: string, id: string) => {
    const out: any[] = [];
    for (let url: string | undefined = `${base}/Patient/${id}/$everything?_count=500`; url; ) {
      const res = await fhir('GET', url, undefined, as(who));
      if (res.status !== 200) return { status: res.status, resources: out };
      out.push(...(res.body.entry ?? []).map((e: any) => e.resource));
      url = res.body.link?.find((l: any) => l.relation === 'next')?.url;
    }
    return { status: 200, resources: out };
  };
  const exported = async (who: string, path: string) => {
    const { manifest } = await exportAll(`${base}/${path}`, { token: tokens[who] });
    return Object.values(await downloadAll(manifest, tokens[who])).flat();
  };
  const keys = (rs: any[]) => rs.map((r) => `${r.resourceType}/${r.id}`);

  beforeAll(async () => {
    const partners = ['regular', 'sensitive', 'evil', 'moved'];
    const written = await writeClientsFile([...partners.map((clientId) => ({ clientId, scopes: 'system/*.read' })), { clientId: 'back-office', scopes: 'system/*.read system/*.write', role: 'service' as const }]);
    server = await startTestServer({ authRequired: true, clientsFile: written.file });
    base = server.baseUrl;
    [member, dependent] = await seedPopulation(server, 2, 'pa');
    for (const p of partners) tokens[p] = await getToken(server.tokenUrl, written.clients[p]);
    tokens.service = await getToken(server.tokenUrl, written.clients['back-office'], 'system/*.read system/*.write');
    const m = `Patient/${member.patientId}`;
    const d = `Patient/${dependent.patientId}`;
    // (a) the dependent's records, mentioning the member
    await put({ resourceType: 'Observation', id: 'dep-obs', status: 'final', code: { text: 'x' }, subject: { reference: d }, performer: [{ reference: m }] });
    await put({ resourceType: 'Coverage', id: 'dep-cov', status: 'active', beneficiary: { reference: d }, subscriber: { reference: m }, payor: [{ reference: 'Organization/pa-payer' }] });
    // (b) a Group of both
    await put({ resourceType: 'Group', id: 'household', type: 'person', actual: true, quantity: 2, member: [{ entity: { reference: m } }, { entity: { reference: d } }] });
    // (c) the member's records labelled sensitive in other spellings
    for (const c of labelled) await put({ ...c, subject: { reference: m } });
    // (f) a record whose older version was sensitive, and a deleted one of the member's
    await put({ resourceType: 'Condition', id: 'was-hiv', subject: { reference: m }, code: { text: 'x' }, meta: { security: [{ system: ACT, code: 'HIV' }] } });
    await put({ resourceType: 'Condition', id: 'was-hiv', subject: { reference: m }, code: { text: 'y' } });
    await put({ resourceType: 'Patient', id: 'pa-gone', name: [{ family: 'Gone' }] });
    await server.store.delete('Patient', 'pa-gone');
    for (const [who, policy] of [['regular', 'regular'], ['sensitive', 'sensitive'], ['moved', 'regular']]) {
      expect((await fhir('POST', `${base}/Patient/$member-match`, memberMatchBody(member, { policy }), as(who))).status).toBe(200);
    }
  });
  afterAll(async () => server.stop());

  it('(a) a dependent\'s Observation and Coverage that mention the member are not the member\'s: not by read, search, $everything nor export', async () => {
    for (const path of ['Observation/dep-obs', 'Coverage/dep-cov', 'Observation/dep-obs/_history', 'Coverage/dep-cov/_history/1']) {
      expect({ path, status: (await get('regular', path)).status }).toEqual({ path, status: 404 });
    }
    expect((await searchAll('regular', `Observation?performer=Patient/${member.patientId}`)).ids).toEqual([]);
    expect((await searchAll('regular', `Coverage?subscriber=Patient/${member.patientId}`)).ids).not.toContain('Coverage/dep-cov');
    const coverages = await searchAll('regular', 'Coverage');
    expect(coverages.ids.length).toBeGreaterThan(0);
    expect(coverages.resources.every((c) => c.beneficiary.reference === `Patient/${member.patientId}`)).toBe(true);
    const all = await everything('regular', member.patientId);
    expect(all.status).toBe(200);
    expect(keys(all.resources)).not.toContain('Observation/dep-obs');
    expect(keys(all.resources)).not.toContain('Coverage/dep-cov');
    for (const path of [`Patient/${member.patientId}/$export?_type=Observation,Coverage,Patient`, '$export?_type=Observation,Coverage,Patient']) {
      const got = keys(await exported('regular', path));
      expect({ path, dep: got.filter((k) => ['Observation/dep-obs', 'Coverage/dep-cov', `Patient/${dependent.patientId}`].includes(k)) }).toEqual({ path, dep: [] });
      expect(got).toContain(`Patient/${member.patientId}`);
    }
    // The back office still sees both in the member's compartment.
    expect(keys((await everything('service', member.patientId)).resources)).toEqual(expect.arrayContaining(['Observation/dep-obs', 'Coverage/dep-cov']));
  });

  it('(b) a Group reaches a partner with the members it may see only', async () => {
    const mine = [{ entity: { reference: `Patient/${member.patientId}` } }];
    const read = await get('regular', 'Group/household');
    expect(read.status).toBe(200);
    expect(read.body.member).toEqual(mine);
    expect(read.body.quantity).toBe(1);
    expect((await searchAll('regular', 'Group')).resources.map((g) => g.member)).toEqual([mine]);
    const inExport = (await exported('regular', `Patient/${member.patientId}/$export?_type=Group`)).filter((r) => r.id === 'household');
    expect(inExport.map((g) => g.member)).toEqual([mine]);
    const inEverything = (await everything('regular', member.patientId)).resources.filter((r) => r.resourceType === 'Group');
    expect(inEverything.map((g) => g.member)).toEqual([mine]);
    expect(JSON.stringify([read.body, inExport, inEverything])).not.toContain(dependent.patientId);
    expect((await get('service', 'Group/household')).body.member).toHaveLength(2);
  });

  it('(c) sensitive labels in OID and other ActCode spellings stay from a #regular partner', async () => {
    const ids = labelled.map((c) => `Condition/${c.id}`).sort();
    for (const id of ids) expect({ id, status: (await get('regular', id)).status }).toEqual({ id, status: 404 });
    expect((await searchAll('regular', 'Condition')).ids.filter((k) => ids.includes(k))).toEqual([]);
    expect(keys(await exported('regular', `Patient/${member.patientId}/$export?_type=Condition`)).filter((k) => ids.includes(k))).toEqual([]);
    expect(keys((await everything('regular', member.patientId)).resources).filter((k) => ids.includes(k))).toEqual([]);
    // Under #sensitive they are the member's to share.
    expect((await searchAll('sensitive', 'Condition')).ids.filter((k) => ids.includes(k))).toEqual(ids);
  });

  it('(d) a look-alike #sensitive policy on another host is refused by $member-match, and grants nothing', async () => {
    const body = memberMatchBody(member, { consent: { policy: [{ uri: 'https://evil.example/anything#sensitive' }] } });
    const res = await fhir('POST', `${base}/Patient/$member-match`, body, as('evil'));
    expect(res.status).toBe(422);
    expect(res.body.resourceType).toBe('OperationOutcome');
    expect((await get('evil', `Patient/${member.patientId}`)).status).toBe(404);
    const grants = await get('service', `Patient/${member.patientId}/$access-grants`);
    expect(grants.body.parameter.map((g: any) => g.part.find((p: any) => p.name === 'client').valueString)).not.toContain('evil');
  });

  it('(e) moving a Consent to another patient revokes its grant', async () => {
    expect((await get('moved', `Patient/${member.patientId}`)).status).toBe(200);
    const [consent] = (await searchAll('service', `Consent?_tag=urn:p2p-fhir-server:client|moved`)).resources;
    const moved = await fhir('PUT', `${base}/Consent/${consent.id}`, { ...consent, patient: { reference: `Patient/${dependent.patientId}` } }, as('service'));
    expect(moved.status).toBe(200);
    expect((await get('moved', `Patient/${member.patientId}`)).status).toBe(404);
    expect((await get('moved', `Patient/${dependent.patientId}`)).status).toBe(404);
    expect((await searchAll('moved', 'Condition')).ids).toEqual([]);
  });

  it('(f) totals and counts are of what the partner sees; a deleted member is as unknown as one never known', async () => {
    for (const query of ['Condition', `Condition?patient=Patient/${member.patientId}`, `Condition?subject:Patient.family=${encodeURIComponent(member.family)}`, 'Patient?_has:Condition:patient:_id=was-hiv,label-0', 'Patient?_has:Condition:patient:_id=label-0', `Condition?_id=was-hiv,${labelled.map((c) => c.id).join(',')}`, 'Observation', 'Coverage', 'Group']) {
      const { ids, total } = await searchAll('regular', query);
      expect({ query, total }).toEqual({ query, total: ids.length });
      const count = await get('regular', `${query}${query.includes('?') ? '&' : '?'}_summary=count`);
      expect({ query, count: count.body.total }).toEqual({ query, count: ids.length });
    }
    // A record's hidden (sensitive) version is neither listed nor counted.
    const history = await get('regular', 'Condition/was-hiv/_history');
    expect(history.status).toBe(200);
    expect({ total: history.body.total, versions: history.body.entry.map((e: any) => e.resource.meta.versionId) }).toEqual({ total: 1, versions: ['2'] });
    for (const path of ['Condition/_history?_count=1000', '_history?_count=1000']) {
      const h = await get('regular', path);
      expect({ path, total: h.body.total }).toEqual({ path, total: (h.body.entry ?? []).length });
      expect(JSON.stringify(h.body)).not.toContain('"HIV"');
    }
    // Deleted and unknown: the same answer, whatever the route.
    for (const suffix of ['', '/$everything', '/_history', '/_history/1']) {
      const [gone, unknown] = [await get('regular', `Patient/pa-gone${suffix}`), await get('regular', `Patient/pa-never${suffix}`)];
      expect({ suffix, gone: gone.status, code: gone.body?.issue?.[0]?.code }).toEqual({ suffix, gone: unknown.status, code: unknown.body?.issue?.[0]?.code });
      expect(gone.status).toBe(404);
    }
    for (const path of ['Patient/pa-gone/$export', 'Patient/pa-never/$export', 'Group/pa-never/$export']) {
      const k = await kickoff(`${base}/${path}`, { token: tokens.regular });
      expect({ path, status: k.status }).toEqual({ path, status: 404 });
    }
    // The back office is told the truth.
    expect((await get('service', 'Patient/pa-gone')).status).toBe(410);
  });
});
