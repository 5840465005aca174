import { RunningServer } from '../../src/main';
import { fhir, startTestServer } from '../helpers/server';
import { getToken, writeClientsFile } from '../helpers/clients';

/**
 * Batch and transaction Bundles, conditional interactions and PATCH, through HTTP, the way a loader
 * (Synthea-style transaction Bundles) and a Postman collection use them.
 */
const NPI = 'http://hl7.org/fhir/sid/us-npi';

/** A Synthea-style transaction: members with urn:uuid references, and conditional references to practitioners. */
function syntheaBundle(members: number, tag: string) {
  const entry: unknown[] = [];
  for (let m = 0; m < members; m++) {
    const pat = `urn:uuid:${tag}-pat-${m}`;
    const enc = `urn:uuid:${tag}-enc-${m}`;
    const post = (fullUrl: string, resource: Record<string, unknown>) => entry.push({ fullUrl, resource, request: { method: 'POST', url: resource.resourceType } });
    post(pat, { resourceType: 'Patient', identifier: [{ system: 'urn:synthea', value: `${tag}-${m}` }], name: [{ family: `Loaded${m}`, given: ['Syn'] }], birthDate: '1980-01-0' + (m + 1) });
    post(enc, { resourceType: 'Encounter', status: 'finished', class: { system: 'http://terminology.hl7.org/CodeSystem/v3-ActCode', code: 'AMB' }, subject: { reference: pat }, participant: [{ individual: { reference: `Practitioner?identifier=${NPI}|1000000001` } }] });
    post(`urn:uuid:${tag}-cond-${m}`, { resourceType: 'Condition', subject: { reference: pat }, encounter: { reference: enc }, code: { text: 'Hypertension' } });
    post(`urn:uuid:${tag}-eob-${m}`, {
      resourceType: 'ExplanationOfBenefit', status: 'active', use: 'claim', outcome: 'complete', created: '2024-01-01',
      type: { coding: [{ system: 'http://terminology.hl7.org/CodeSystem/claim-type', code: 'professional' }] },
      patient: { reference: pat }, insurer: { display: 'Plan' }, provider: { reference: `Practitioner?identifier=${NPI}|1000000001` },
      insurance: [{ focal: true, coverage: { display: 'Coverage' } }],
    });
  }
  return { resourceType: 'Bundle', type: 'transaction', entry };
}

describe('batch, transaction, conditional interactions and PATCH', () => {
  let server: RunningServer;
  let base: string;
  const tokens: Record<string, string> = {};
  const as = (who: string) => ({ authorization: `Bearer ${tokens[who]}` });
  const count = async (type: string, q = '') => (await fhir('GET', `${base}/${type}?_summary=count${q}`, undefined, as('service'))).body.total;

  beforeAll(async () => {
    const { file, clients } = await writeClientsFile([
      { clientId: 'loader', scopes: 'system/*.*', role: 'service' },
      { clientId: 'partner', scopes: 'system/*.read' },
    ]);
    server = await startTestServer({ authRequired: true, clientsFile: file });
    base = server.baseUrl;
    tokens.service = await getToken(server.tokenUrl, clients.loader, 'system/*.*');
    tokens.partner = await getToken(server.tokenUrl, clients.partner, 'system/*.read');
  });
  afterAll(async () => server.stop());

  it('loads a Synthea-style transaction: urn:uuid and conditional references resolved, readable by search and $everything', async () => {
    const practitioners = {
      resourceType: 'Bundle',
      type: 'transaction',
      entry: [1, 2].map((n) => ({ resource: { resourceType: 'Practitioner', identifier: [{ system: NPI, value: `100000000${n}` }], name: [{ family: `Doc${n}` }] }, request: { method: 'POST', url: 'Practitioner', ifNoneExist: `identifier=${NPI}|100000000${n}` } })),
    };
    const first = await fhir('POST', base, practitioners, as('service'));
    expect(first.status).toBe(200);
    expect(first.body.entry.map((e: any) => e.response.status)).toEqual(['201 Created', '201 Created']);
    // Sent again, the conditional creates find them: no duplicates.
    const again = await fhir('POST', base, practitioners, as('service'));
    expect(again.body.entry.map((e: any) => e.response.status)).toEqual(['200 OK', '200 OK']);
    expect(await count('Practitioner')).toBe(2);
    const doc1 = first.body.entry[0].resource.id;

    const res = await fhir('POST', base, syntheaBundle(3, 'a'), as('service'));
    expect(res.status).toBe(200);
    expect(res.body.type).toBe('transaction-response');
    expect(res.body.entry).toHaveLength(12);
    for (const e of res.body.entry) {
      expect(e.response.status).toBe('201 Created');
      expect(e.response.location).toMatch(/^[A-Z][A-Za-z]+\/[0-9a-f-]{36}\/_history\/1$/);
      expect(e.response.etag).toBe('W/"1"');
    }
    const patientId = res.body.entry[0].resource.id;
    const encounter = (await fhir('GET', `${base}/Encounter?patient=Patient/${patientId}`, undefined, as('service'))).body.entry[0].resource;
    expect(encounter.participant[0].individual.reference).toBe(`Practitioner/${doc1}`);
    const condition = (await fhir('GET', `${base}/Condition?patient=Patient/${patientId}`, undefined, as('service'))).body.entry[0].resource;
    expect(condition.encounter.reference).toBe(`Encounter/${encounter.id}`);
    const everything = await fhir('GET', `${base}/Patient/${patientId}/$everything`, undefined, as('service'));
    const types = everything.body.entry.map((e: any) => `${e.resource.resourceType}:${e.search.mode}`).sort();
    // PDex §pdex-127: each answer also carries this payer's transmitter Provenance and its Organization.
    expect(types).toEqual(['Condition:match', 'Encounter:match', 'ExplanationOfBenefit:match', 'Organization:include', 'Patient:match', 'Practitioner:include', 'Provenance:include']);
    const transmitter = everything.body.entry.find((e: any) => e.resource.resourceType === 'Provenance').resource;
    expect(transmitter.agent[0].who.reference).toBe('Organization/this-payer');
  });

  it('a transaction is all or nothing: one bad entry, or an unresolvable reference, and nothing is written', async () => {
    const before = await count('Patient');
    const bad = syntheaBundle(2, 'b');
    (bad.entry[7] as any).resource.status = 'not-a-status';
    const res = await fhir('POST', base, bad, as('service'));
    expect(res.status).toBe(400);
    expect(res.body.resourceType).toBe('OperationOutcome');
    expect(await count('Patient')).toBe(before);
    const dangling = syntheaBundle(1, 'c');
    (dangling.entry[1] as any).resource.participant[0].individual.reference = `Practitioner?identifier=${NPI}|nobody`;
    expect((await fhir('POST', base, dangling, as('service'))).status).toBe(412);
    const unknown = syntheaBundle(1, 'd');
    (unknown.entry[2] as any).resource.subject.reference = 'urn:uuid:not-in-the-bundle';
    expect((await fhir('POST', base, unknown, as('service'))).status).toBe(400);
    expect(await count('Patient')).toBe(before);
    expect(await count('Encounter')).toBe(3);
  });

  it('a batch answers each entry on its own', async () => {
    const res = await fhir('POST', base, {
      resourceType: 'Bundle',
      type: 'batch',
      entry: [
        { resource: { resourceType: 'Patient', name: [{ family: 'Batched' }] }, request: { method: 'POST', url: 'Patient' } },
        { resource: { resourceType: 'Patient', gender: 'nonsense' }, request: { method: 'POST', url: 'Patient' } },
        { request: { method: 'GET', url: 'Patient?family=batched' } },
        { request: { method: 'GET', url: 'Patient/does-not-exist' } },
        { request: { method: 'DELETE', url: 'Nope/1' } },
      ],
    }, as('service'));
    expect(res.status).toBe(200);
    expect(res.body.type).toBe('batch-response');
    expect(res.body.entry.map((e: any) => e.response.status.slice(0, 3))).toEqual(['201', '400', '200', '404', '400']);
    expect(res.body.entry[2].resource.entry.map((e: any) => e.resource.name[0].family)).toEqual(['Batched']);
    expect(res.body.entry[1].response.outcome.resourceType).toBe('OperationOutcome');
  });

  it('conditional create, update and delete on REST: none, one and several matches', async () => {
    const patient = { resourceType: 'Patient', identifier: [{ system: 'urn:mrn', value: 'C-1' }], name: [{ family: 'Conditional' }] };
    const create = () => fhir('POST', `${base}/Patient`, patient, { ...as('service'), 'if-none-exist': 'identifier=urn:mrn|C-1' });
    const one = await create();
    expect(one.status).toBe(201);
    const two = await create();
    expect(two.status).toBe(200);
    expect(two.body.id).toBe(one.body.id);
    expect(await count('Patient', '&identifier=urn:mrn|C-1')).toBe(1);
    const updated = await fhir('PUT', `${base}/Patient?identifier=urn:mrn|C-1`, { ...patient, gender: 'female' }, as('service'));
    expect({ status: updated.status, id: updated.body.id, gender: updated.body.gender }).toEqual({ status: 200, id: one.body.id, gender: 'female' });
    const fresh = await fhir('PUT', `${base}/Patient?identifier=urn:mrn|C-2`, { ...patient, identifier: [{ system: 'urn:mrn', value: 'C-2' }] }, as('service'));
    expect(fresh.status).toBe(201);
    await fhir('POST', `${base}/Patient`, { ...patient, identifier: [{ system: 'urn:mrn', value: 'C-2' }] }, as('service'));
    expect((await fhir('PUT', `${base}/Patient?identifier=urn:mrn|C-2`, patient, as('service'))).status).toBe(412);
    expect((await fhir('DELETE', `${base}/Patient?identifier=urn:mrn|C-2`, undefined, as('service'))).status).toBe(412);
    expect((await fhir('DELETE', `${base}/Patient?identifier=urn:mrn|C-1`, undefined, as('service'))).status).toBe(200);
    expect((await fhir('GET', `${base}/Patient/${one.body.id}`, undefined, as('service'))).status).toBe(410);
    expect((await fhir('DELETE', `${base}/Patient?identifier=urn:mrn|C-1`, undefined, as('service'))).status).toBe(404);
    expect((await fhir('PUT', `${base}/Patient`, patient, as('service'))).status).toBe(400);
  });

  it('PATCH with a JSON Patch, honouring If-Match; a patch that breaks the resource is refused', async () => {
    const created = (await fhir('POST', `${base}/Patient`, { resourceType: 'Patient', name: [{ family: 'Patchy' }] }, as('service'))).body;
    const patch = (ops: unknown, headers: Record<string, string> = {}) => fetch(`${base}/Patient/${created.id}`, { method: 'PATCH', headers: { ...as('service'), 'content-type': 'application/json-patch+json', ...headers }, body: JSON.stringify(ops) });
    const ok = await patch([{ op: 'add', path: '/birthDate', value: '1990-05-05' }], { 'if-match': 'W/"1"' });
    expect(ok.status).toBe(200);
    expect(((await ok.json()) as any).birthDate).toBe('1990-05-05');
    expect((await patch([{ op: 'replace', path: '/birthDate', value: '1991-01-01' }], { 'if-match': 'W/"1"' })).status).toBe(412);
    expect((await patch([{ op: 'remove', path: '/nothing-here' }])).status).toBe(422);
    expect((await patch([{ op: 'add', path: '/gender', value: 'sometimes' }])).status).toBe(400);
    expect((await patch([{ op: 'replace', path: '/id', value: 'other' }])).status).toBe(400);
    expect((await patch({ op: 'add' })).status).toBe(400);
    expect((await fhir('GET', `${base}/Patient/${created.id}`, undefined, as('service'))).body).toMatchObject({ birthDate: '1990-05-05', meta: { versionId: '2' } });
  });

  it('partners write nothing through a Bundle and read only what they may see', async () => {
    const write = await fhir('POST', base, { resourceType: 'Bundle', type: 'transaction', entry: [{ resource: { resourceType: 'Patient' }, request: { method: 'POST', url: 'Patient' } }] }, as('partner'));
    expect(write.status).toBe(403);
    const someone = (await fhir('GET', `${base}/Patient?_count=1`, undefined, as('service'))).body.entry[0].resource.id;
    const read = await fhir('POST', base, { resourceType: 'Bundle', type: 'batch', entry: [{ request: { method: 'GET', url: `Patient/${someone}` } }, { request: { method: 'GET', url: 'Patient' } }] }, as('partner'));
    expect(read.body.entry[0].response.status).toBe('404');
    expect(read.body.entry[1].resource.entry ?? []).toEqual([]);
  });
});
