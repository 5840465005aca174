import { RunningServer } from '../../src/main';
import { SyntheticMember } from '../../scripts/synthetic';
import { fhir, startTestServer } from '../helpers/server';
import { memberMatchBody, seedPopulation } from '../helpers/seed';

describe('HRex $member-match', () => {
  let server: RunningServer;
  let members: SyntheticMember[];
  let url: string;

  beforeAll(async () => {
    server = await startTestServer();
    members = await seedPopulation(server, 6);
    url = `${server.baseUrl}/Patient/$member-match`;
  });
  afterAll(async () => server.stop());

  it('matches a member by coverage identifier and demographics, tolerant of case and accents, and stores the consent', async () => {
    const m = members[1];
    const body = memberMatchBody({ ...m, family: m.family.toUpperCase().normalize('NFD').replace(/[\u0300-\u036f]/g, '') });
    const res = await fhir('POST', url, body);
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toMatch(/^application\/fhir\+json/);
    const byName = Object.fromEntries(res.body.parameter.map((p: { name: string }) => [p.name, p]));
    expect(byName.MemberIdentifier.valueIdentifier).toMatchObject({ value: m.memberId, type: { coding: [{ code: 'MB' }, { code: 'UMB' }] } });
    expect(byName.MemberId.valueReference.reference).toBe(`Patient/${m.patientId}`);
    const consents = await fhir('GET', `${server.baseUrl}/Consent?patient=Patient/${m.patientId}`);
    expect(consents.body.total).toBe(1);
    expect(consents.body.entry[0].resource.policy[0].uri).toMatch(/#regular$/);
  });

  it('matches by subscriberId too', async () => {
    const m = members[2];
    const body = memberMatchBody(m);
    body.parameter[1].resource = { resourceType: 'Coverage', subscriberId: `SUB-${m.memberId.slice(4)}` } as never;
    expect((await fhir('POST', url, body)).status).toBe(200);
  });

  it('answers 422 without saying why when nothing matches', async () => {
    const m = members[0];
    const wrongBirth = await fhir('POST', url, memberMatchBody({ ...m, birthDate: '1901-01-01' }));
    const wrongId = await fhir('POST', url, memberMatchBody({ ...m, memberId: 'MEM-999999' }));
    for (const res of [wrongBirth, wrongId]) {
      expect(res.status).toBe(422);
      expect(res.body.resourceType).toBe('OperationOutcome');
    }
    expect(wrongBirth.body.issue[0].diagnostics).toBe(wrongId.body.issue[0].diagnostics);
  });

  it('answers 422 when two members match', async () => {
    const m = members[3];
    await server.store.update('Patient', 'twin', { resourceType: 'Patient', id: 'twin', name: [{ family: m.family, given: [m.given] }], birthDate: m.birthDate } as never);
    await server.store.update('Coverage', 'twin-cov', { resourceType: 'Coverage', id: 'twin-cov', status: 'active', identifier: [{ system: 'http://source-payer.example.com/member-id', value: m.memberId }], beneficiary: { reference: 'Patient/twin' }, payor: [{ reference: 'Organization/src-payer' }] } as never);
    expect((await fhir('POST', url, memberMatchBody(m))).status).toBe(422);
  });

  it('answers 422 for a consent it cannot honour', async () => {
    const m = members[4];
    const unknownPolicy = await fhir('POST', url, memberMatchBody(m, { policy: 'everything' }));
    const ended = await fhir('POST', url, memberMatchBody(m, { consent: { provision: { period: { start: '2020-01-01', end: '2021-01-01' } } } }));
    const future = await fhir('POST', url, memberMatchBody(m, { consent: { provision: { period: { start: '2999-01-01' } } } }));
    expect([unknownPolicy.status, ended.status, future.status]).toEqual([422, 422, 422]);
    const current = await fhir('POST', url, memberMatchBody(m, { consent: { provision: { period: { start: '2020-01-01', end: '2999-01-01' } } } }));
    expect(current.status).toBe(200);
  });

  it('answers 400 naming the part for malformed input, and stores nothing', async () => {
    const before = (await fhir('GET', `${server.baseUrl}/Consent?_summary=count`)).body.total;
    const body = memberMatchBody(members[5]);
    const missing = await fhir('POST', url, { ...body, parameter: body.parameter.filter((p) => p.name !== 'MemberPatient') });
    expect(missing.status).toBe(400);
    expect(missing.body.issue[0].diagnostics).toMatch(/MemberPatient/);
    const wrongType = await fhir('POST', url, { ...body, parameter: body.parameter.map((p) => (p.name === 'CoverageToMatch' ? { ...p, resource: { resourceType: 'Patient' } } : p)) });
    expect(wrongType.status).toBe(400);
    expect(wrongType.body.issue[0].diagnostics).toMatch(/CoverageToMatch/);
    expect((await fhir('POST', url, { resourceType: 'Bundle' })).status).toBe(400);
    expect((await fhir('POST', url, '{"resourceType":')).status).toBe(400);
    expect((await fhir('GET', `${server.baseUrl}/Consent?_summary=count`)).body.total).toBe(before);
  });
});
