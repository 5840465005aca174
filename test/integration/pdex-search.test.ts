import fs from 'node:fs';
import { RunningServer } from '../../src/main';
import { fhir, startTestServer } from '../helpers/server';
import { download, kickoff, poll } from '../helpers/bulk';

/** The searches PDex's server CapabilityStatement requires beyond R4's own parameters, as a partner or Inferno sends them. */
describe("PDex's search parameters", () => {
  let server: RunningServer;
  let base: string;
  const claimType = (code: string) => ({ coding: [{ system: 'http://terminology.hl7.org/CodeSystem/claim-type', code }] });
  const eob = (id: string, type: string, use: string, billable: string, itemDate?: string) => ({
    resourceType: 'ExplanationOfBenefit', id, status: 'active', use, type: claimType(type), patient: { reference: 'Patient/p1' }, created: `${billable}T00:00:00Z`,
    billablePeriod: { start: billable, end: billable }, insurer: { display: 'Plan' }, provider: { display: 'Clinic' }, outcome: 'complete', insurance: [{ focal: true, coverage: { display: 'c' } }],
    ...(itemDate ? { item: [{ sequence: 1, productOrService: { text: 'x' }, servicedDate: itemDate }] } : {}),
  });

  beforeAll(async () => {
    server = await startTestServer();
    base = server.baseUrl;
    await fhir('PUT', `${base}/Patient/p1`, { resourceType: 'Patient', id: 'p1', name: [{ family: 'Searched' }] });
    for (const r of [eob('e-pro-2019', 'professional', 'claim', '2019-03-01'), eob('e-inst-2024', 'institutional', 'claim', '2024-05-01'), eob('e-pharm-item', 'pharmacy', 'claim', '2018-01-01', '2025-02-02'), eob('e-pa', 'professional', 'preauthorization', '2023-07-07')]) {
      expect((await fhir('PUT', `${base}/ExplanationOfBenefit/${r.id}`, r)).status).toBe(201);
    }
    await fhir('PUT', `${base}/Group/g1`, { resourceType: 'Group', id: 'g1', type: 'person', actual: true, code: { coding: [{ system: 'http://hl7.org/fhir/us/davinci-pdex/CodeSystem/PdexMultiMemberMatchResultCS', code: 'match' }] }, characteristic: [{ code: { text: 'match' }, valueReference: { reference: 'Organization/o1' }, exclude: false }] });
  });
  afterAll(async () => {
    await server.stop();
    fs.rmSync(server.config.dataDir, { recursive: true, force: true });
  });

  const ids = async (query: string) => ((await fhir('GET', `${base}/${query}`)).body.entry ?? []).map((e: any) => e.resource.id).sort();

  it('ExplanationOfBenefit by type, use and service-date (billable period or item dates)', async () => {
    expect(await ids('ExplanationOfBenefit?type=http://terminology.hl7.org/CodeSystem/claim-type|professional')).toEqual(['e-pa', 'e-pro-2019']);
    expect(await ids('ExplanationOfBenefit?type=pharmacy')).toEqual(['e-pharm-item']);
    expect(await ids('ExplanationOfBenefit?use=preauthorization')).toEqual(['e-pa']);
    expect(await ids('ExplanationOfBenefit?service-date=ge2024-01-01')).toEqual(['e-inst-2024', 'e-pharm-item']);
    expect(await ids('ExplanationOfBenefit?service-date=lt2019-12-31&patient=Patient/p1')).toEqual(['e-pharm-item', 'e-pro-2019']);
    // None is reported as an unsupported parameter.
    const bundle = (await fhir('GET', `${base}/ExplanationOfBenefit?type=pharmacy&service-date=ge2020`)).body;
    expect((bundle.entry ?? []).filter((e: any) => e.resource.resourceType === 'OperationOutcome')).toEqual([]);
  });

  it("the IG's _typeFilter example works in an export", async () => {
    const filter = 'ExplanationOfBenefit?service-date=ge2024-01-01';
    const k = await kickoff(`${base}/Patient/p1/$export?_type=ExplanationOfBenefit&_typeFilter=${encodeURIComponent(filter)}`);
    expect(k.status).toBe(202);
    const done = await poll(k.location as string);
    const file = done.body.output.find((o: any) => o.type === 'ExplanationOfBenefit');
    expect((await download(file.url)).resources.map((r: any) => r.id).sort()).toEqual(['e-inst-2024', 'e-pharm-item']);
  });

  it('Group by code and characteristic-value-reference', async () => {
    expect(await ids('Group?code=http://hl7.org/fhir/us/davinci-pdex/CodeSystem/PdexMultiMemberMatchResultCS|match')).toEqual(['g1']);
    expect(await ids('Group?code=nomatch')).toEqual([]);
    expect(await ids('Group?characteristic-value-reference=Organization/o1')).toEqual(['g1']);
    expect(await ids('Group?characteristic-value-reference=Organization/o2')).toEqual([]);
  });
});
