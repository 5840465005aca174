import { RunningServer } from '../../src/main';
import { fhir } from '../helpers/server';
import { createLocalPatient, invokeBody, SourcePayerFixture, startRequester, startSource, waitForTask } from '../helpers/payers';

const bundleIds = (b: any) => (b.entry ?? []).filter((e: any) => e.search?.mode === 'match').map((e: any) => e.resource.id).sort();

describe('payer-to-payer exchange between two servers', () => {
  let source: SourcePayerFixture;
  let requester: RunningServer;
  let op: string;

  beforeAll(async () => {
    source = await startSource(6);
    requester = await startRequester({ tokenUrl: source.server.tokenUrl, fhirBaseUrl: source.server.baseUrl, client: source.client });
    op = `${requester.baseUrl}/Patient/$sdh.s2s.invoke-export`;
  });
  afterAll(async () => {
    await requester.stop();
    await source.server.stop();
  });

  it("runs the seed's request to completion: Task, imported data searchable by patient, Provenance, archive", async () => {
    const m = source.members[1];
    const local = await createLocalPatient(requester, m);
    const res = await fhir('POST', op, invokeBody(local, m));
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toMatch(/^application\/fhir\+json/);
    const task = res.body;
    expect(res.headers.get('content-location')).toBe(`Task/${task.id}`);
    expect(task).toMatchObject({
      resourceType: 'Task',
      status: 'requested',
      code: { coding: [{ system: 'http://hl7.org/fhir/us/davinci-hrex/CodeSystem/hrex-temp', code: 'data-request' }] },
      for: { reference: `Patient/${local}` },
    });
    expect(task.authoredOn).toBeDefined();
    expect(task.input).toEqual(expect.arrayContaining([{ type: { text: 'sourceIssuerUrl' }, valueUrl: 'https://source-payer.example.com' }]));
    expect(JSON.stringify(task)).not.toContain(m.birthDate); // no member demographics on the Task

    const done = await waitForTask(requester, task.id);
    expect(done.status).toBe('completed');
    expect(done.businessStatus.text).toBe('completed');
    expect(done.owner.display).toBe('Source Health Plan');
    expect(done.focus.reference).toMatch(/^Consent\//);
    expect(done.meta.tag).toEqual(expect.arrayContaining([expect.objectContaining({ code: 'payer-to-payer-exchange' })]));
    expect(done.note.length).toBeGreaterThan(3);
    const outputs = Object.fromEntries(done.output.map((o: any) => [o.type.text, o]));
    expect(outputs.MemberIdentifier.valueIdentifier.value).toBe(m.memberId);

    // The member's claims are now here, searchable by the local patient, with their origin kept.
    const sourceEobs = await fhir('GET', `${source.server.baseUrl}/ExplanationOfBenefit?patient=${m.patientId}`, undefined, { authorization: `Bearer ${await sourceToken()}` });
    const eobs = await fhir('GET', `${requester.baseUrl}/ExplanationOfBenefit?patient=${local}`);
    expect(eobs.body.total).toBe(sourceEobs.body.total);
    expect(eobs.body.total).toBeGreaterThan(0);
    expect(outputs['count:ExplanationOfBenefit'].valueInteger).toBe(eobs.body.total);
    const eob = eobs.body.entry[0].resource;
    expect(eob.patient.reference).toBe(`Patient/${local}`);
    expect(eob.identifier).toEqual(expect.arrayContaining([{ system: 'https://source-payer.example.com/resource-id', value: expect.stringMatching(/^src-eob-/) }]));
    expect(eob.meta.source).toMatch(new RegExp(`^${source.server.baseUrl}/ExplanationOfBenefit/src-eob-`));
    // References between imported resources resolve locally.
    const provider = await fhir('GET', `${requester.baseUrl}/${eob.provider.reference}`);
    expect(provider.status).toBe(200);
    const coverage = await fhir('GET', `${requester.baseUrl}/${eob.insurance[0].coverage.reference}`);
    expect(coverage.body.beneficiary.reference).toBe(`Patient/${local}`);
    // The member stays one Patient here.
    expect((await fhir('GET', `${requester.baseUrl}/Patient?_summary=count`)).body.total).toBe(1);

    const provenance = await fhir('GET', `${requester.baseUrl}/${outputs.Provenance.valueReference.reference}`);
    expect(provenance.body.target.map((t: any) => t.reference)).toContain(`ExplanationOfBenefit/${eob.id}`);
    expect(provenance.body.agent[0].who.reference).toBe(done.owner.reference);
    expect(provenance.body.entity.map((e: any) => e.what.reference)).toContain(`Task/${task.id}`);

    // The files as received are archived and linked from the Task.
    const files = done.output.filter((o: any) => o.type.text === 'received-file');
    expect(files.length).toBeGreaterThan(0);
    const doc = (await fhir('GET', `${requester.baseUrl}/${files[0].valueReference.reference}`)).body;
    const binary = (await fhir('GET', `${requester.baseUrl}/${doc.content[0].attachment.url}`)).body;
    const lines = Buffer.from(binary.data, 'base64').toString('utf8').trim().split('\n').map((l) => JSON.parse(l));
    expect(lines.length).toBe(Number(doc.description.match(/(\d+) resources/)[1]));
    expect(lines[0].id).toMatch(/^src-/); // unaltered: the source's own ids
  });

  async function sourceToken() {
    const { getToken } = await import('../helpers/clients');
    return getToken(source.server.tokenUrl, source.client);
  }
});
