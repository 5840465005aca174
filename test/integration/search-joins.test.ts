import { RunningServer } from '../../src/main';
import { SyntheticMember } from '../../scripts/synthetic';
import { fhir, startTestServer } from '../helpers/server';
import { memberMatchBody, seedPopulation } from '../helpers/seed';
import { getToken, writeClientsFile } from '../helpers/clients';

/** _include, _revinclude (with :iterate), chained parameters and _has, for a service client and under a partner's access. */
describe('includes, chains and _has', () => {
  let server: RunningServer;
  let base: string;
  let members: SyntheticMember[];
  const tokens: Record<string, string> = {};
  const get = async (who: string, query: string) => {
    const res = await fhir('GET', `${base}/${query}`, undefined, { authorization: `Bearer ${tokens[who]}` });
    expect({ query, status: res.status }).toEqual({ query, status: 200 });
    const entries = (res.body.entry ?? []) as { resource: any; search: { mode: string } }[];
    const ids = (mode: string) => entries.filter((e) => e.search.mode === mode).map((e) => `${e.resource.resourceType}/${e.resource.id}`).sort();
    return { match: ids('match'), include: ids('include'), body: res.body };
  };
  const ref = (type: string, id: string) => `${type}/${id}`;

  beforeAll(async () => {
    const { file, clients } = await writeClientsFile([
      { clientId: 'service', scopes: 'system/*.*', role: 'service' },
      { clientId: 'partner', scopes: 'system/*.read' },
    ]);
    server = await startTestServer({ authRequired: true, clientsFile: file });
    base = server.baseUrl;
    members = await seedPopulation(server, 9);
    tokens.service = await getToken(server.tokenUrl, clients.service, 'system/*.*');
    tokens.partner = await getToken(server.tokenUrl, clients.partner, 'system/*.read');
    // The partner matched member 0 only (regular consent: nothing sensitive).
    expect((await fhir('POST', `${base}/Patient/$member-match`, memberMatchBody(members[0]), { authorization: `Bearer ${tokens.partner}` })).status).toBe(200);
    await fhir('POST', `${base}/Provenance`, { resourceType: 'Provenance', target: [{ reference: `Patient/${members[1].patientId}` }], recorded: '2024-01-01T00:00:00Z', agent: [{ who: { display: 'x' } }] }, { authorization: `Bearer ${tokens.service}` });
  });
  afterAll(async () => server.stop());

  it('chains: EOBs by their patient\'s name or birth date, one level, with a type modifier', async () => {
    const m = members[2];
    const expected = (await get('service', `ExplanationOfBenefit?patient=Patient/${m.patientId}`)).match;
    expect(expected.length).toBeGreaterThan(0);
    const sameName = members.filter((x) => x.family === m.family);
    const byName = (await get('service', `ExplanationOfBenefit?patient.family=${encodeURIComponent(m.family)}&_count=100`)).match;
    const all: string[] = [];
    for (const x of sameName) all.push(...(await get('service', `ExplanationOfBenefit?patient=Patient/${x.patientId}`)).match);
    expect(byName).toEqual(all.sort());
    expect((await get('service', `ExplanationOfBenefit?patient:Patient.birthdate=${m.birthDate}&patient.family=${encodeURIComponent(m.family)}`)).match).toEqual(expected);
    expect((await get('service', 'ExplanationOfBenefit?patient.family=nobody-has-this-name')).match).toEqual([]);
  });

  it('_has: patients by what refers to them', async () => {
    const sensitive = members.filter((_, i) => i % 3 === 0).map((m) => ref('Patient', m.patientId)).sort();
    expect((await get('service', 'Patient?_has:Condition:subject:code=35489007&_count=100')).match).toEqual(sensitive);
    expect((await get('service', 'Patient?_has:Observation:patient:code=8867-4&_count=100')).match).toEqual(members.map((m) => ref('Patient', m.patientId)).sort());
  });

  it('_include, _include=*, _revinclude and :iterate, each resource once, marked include', async () => {
    const m = members[1];
    const eobs = await get('service', `ExplanationOfBenefit?patient=Patient/${m.patientId}&_include=ExplanationOfBenefit:patient`);
    expect(eobs.include).toEqual([ref('Patient', m.patientId)]);
    const star = await get('service', `ExplanationOfBenefit?patient=Patient/${m.patientId}&_include=*`);
    expect(star.include).toEqual(expect.arrayContaining([ref('Patient', m.patientId), expect.stringMatching(/^Practitioner\//), expect.stringMatching(/^Organization\//), expect.stringMatching(/^Coverage\//)]));
    const rev = await get('service', `Patient?_id=${m.patientId}&_revinclude=Provenance:target`);
    expect(rev.include).toHaveLength(1);
    expect(rev.include[0]).toMatch(/^Provenance\//);
    const iterate = await get('service', `Encounter?patient=Patient/${m.patientId}&_include=Encounter:location&_include:iterate=Location:organization`);
    expect(iterate.include.some((r) => r.startsWith('Location/'))).toBe(true);
    expect(iterate.include.some((r) => r.startsWith('Organization/'))).toBe(true);
  });

  it('under a partner\'s access, a join or an include never reaches a member or record it may not see', async () => {
    const granted = members[0];
    const other = members[3];
    // The service client finds the other member's EOBs through the chain; the partner finds none.
    const chain = `ExplanationOfBenefit?patient.birthdate=${other.birthDate}&patient.family=${encodeURIComponent(other.family)}`;
    expect((await get('service', chain)).match.length).toBeGreaterThan(0);
    expect((await get('partner', chain)).match).toEqual([]);
    const own = `ExplanationOfBenefit?patient.birthdate=${granted.birthDate}&patient.family=${encodeURIComponent(granted.family)}`;
    expect((await get('partner', own)).match).toEqual((await get('service', `ExplanationOfBenefit?patient=Patient/${granted.patientId}`)).match);
    // Member 0 has a sensitive condition, which a #regular consent does not show: _has finds nobody through it.
    expect((await get('partner', 'Patient?_has:Condition:subject:code=35489007')).match).toEqual([]);
    expect((await get('partner', 'Patient?_has:Observation:patient:code=8867-4')).match).toEqual([ref('Patient', granted.patientId)]);
    // Provenance is not the partner's to see; the other member's Patient neither.
    expect((await get('partner', `Patient?_id=${members[1].patientId}&_revinclude=Provenance:target`)).match).toEqual([]);
    const included = await get('partner', 'ExplanationOfBenefit?_include=ExplanationOfBenefit:patient&_include=ExplanationOfBenefit:care-team&_count=100');
    expect(included.include.filter((r) => r.startsWith('Patient/'))).toEqual([ref('Patient', granted.patientId)]);
    expect(included.include.some((r) => r.startsWith('Practitioner/'))).toBe(true);
  });

  it('what is not taken is said so', async () => {
    const res = await fhir('GET', `${base}/Patient?_include=Patient:nope`, undefined, { authorization: `Bearer ${tokens.service}`, prefer: 'handling=strict' });
    expect(res.status).toBe(400);
    expect((await fhir('GET', `${base}/Patient?_has:Observation:code:status=final`, undefined, { authorization: `Bearer ${tokens.service}`, prefer: 'handling=strict' })).status).toBe(400);
  });
});
