import { RunningServer } from '../../src/main';
import { fhir, startTestServer } from '../helpers/server';

describe('FHIR REST over HTTP', () => {
  let server: RunningServer;
  let base: string;

  beforeAll(async () => {
    server = await startTestServer();
    base = server.baseUrl;
  });
  afterAll(async () => server.stop());

  it('serves a CapabilityStatement that lists the types, interactions and search parameters served', async () => {
    const res = await fhir('GET', `${base}/metadata`);
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toMatch(/^application\/fhir\+json/);
    const rest = res.body.rest[0];
    const eob = rest.resource.find((r: { type: string }) => r.type === 'ExplanationOfBenefit');
    expect(eob.interaction.map((i: { code: string }) => i.code)).toEqual(expect.arrayContaining(['read', 'vread', 'search-type', 'create', 'update', 'delete', 'history-instance']));
    expect(eob.searchParam.map((p: { name: string }) => p.name)).toEqual(expect.arrayContaining(['patient', 'identifier', 'created', '_lastUpdated']));
    for (const type of ['Patient', 'Coverage', 'Consent', 'Task', 'Provenance', 'Group', 'Encounter', 'Medication']) {
      expect(rest.resource.map((r: { type: string }) => r.type)).toContain(type);
    }
  });

  it('creates, reads, updates with If-Match, vreads, deletes and keeps history', async () => {
    const created = await fhir('POST', `${base}/Patient`, { resourceType: 'Patient', name: [{ family: 'Rivera', given: ['Ana'] }], birthDate: '1975-05-05' });
    expect(created.status).toBe(201);
    expect(created.headers.get('etag')).toBe('W/"1"');
    const id = created.body.id;
    expect(created.headers.get('location')).toBe(`${base}/Patient/${id}/_history/1`);

    const read = await fhir('GET', `${base}/Patient/${id}`);
    expect(read.status).toBe(200);
    expect(read.headers.get('etag')).toBe('W/"1"');
    expect(read.headers.get('content-type')).toMatch(/^application\/fhir\+json/);
    expect(read.body.name[0].family).toBe('Rivera');

    const updated = await fhir('PUT', `${base}/Patient/${id}`, { ...read.body, gender: 'female' }, { 'if-match': 'W/"1"' });
    expect(updated.status).toBe(200);
    expect(updated.body.meta.versionId).toBe('2');
    const stale = await fhir('PUT', `${base}/Patient/${id}`, { ...read.body, gender: 'male' }, { 'if-match': 'W/"1"' });
    expect(stale.status).toBe(412);
    expect(stale.body.resourceType).toBe('OperationOutcome');

    expect((await fhir('GET', `${base}/Patient/${id}/_history/1`)).body.gender).toBeUndefined();
    const history = await fhir('GET', `${base}/Patient/${id}/_history`);
    expect(history.body.type).toBe('history');
    expect(history.body.total).toBe(2);

    expect((await fhir('DELETE', `${base}/Patient/${id}`)).status).toBe(204);
    expect((await fhir('GET', `${base}/Patient/${id}`)).status).toBe(410);
    expect((await fhir('GET', `${base}/Patient/does-not-exist`)).status).toBe(404);
  });

  it('PUT creates with the client id when absent, and requires the ids to agree', async () => {
    const res = await fhir('PUT', `${base}/Organization/org-1`, { resourceType: 'Organization', id: 'org-1', name: 'Acme Health' });
    expect(res.status).toBe(201);
    const mismatch = await fhir('PUT', `${base}/Organization/org-2`, { resourceType: 'Organization', id: 'org-1', name: 'x' });
    expect(mismatch.status).toBe(400);
    expect((await fhir('GET', `${base}/Organization/org-2`)).status).toBe(404);
  });

  it('rejects malformed and invalid bodies with an OperationOutcome and writes nothing', async () => {
    const before = (await fhir('GET', `${base}/Coverage?_summary=count`)).body.total;
    const malformed = await fhir('POST', `${base}/Coverage`, '{"resourceType": "Coverage",');
    expect(malformed.status).toBe(400);
    expect(malformed.body.resourceType).toBe('OperationOutcome');
    const wrongType = await fhir('POST', `${base}/Coverage`, { resourceType: 'Patient' });
    expect(wrongType.status).toBe(400);
    const badSchema = await fhir('POST', `${base}/Coverage`, { resourceType: 'Coverage', status: 'active', beneficiary: { reference: 'Patient/1' }, payor: [{ reference: 'Organization/1' }], bogus: true });
    expect(badSchema.status).toBe(400);
    expect(badSchema.body.issue[0].diagnostics).toMatch(/bogus/);
    const plainJson = await fhir('POST', `${base}/Coverage`, { resourceType: 'Coverage', status: 'active', beneficiary: { reference: 'Patient/1' }, payor: [{ reference: 'Organization/1' }] }, { 'content-type': 'application/json' });
    expect(plainJson.status).toBe(201);
    expect((await fhir('GET', `${base}/Coverage?_summary=count`)).body.total).toBe(before + 1);
    const huge = await fhir('POST', `${base}/Coverage`, { resourceType: 'Coverage', text: { status: 'generated', div: 'x'.repeat(11 * 1024 * 1024) } });
    expect(huge.status).toBe(413);
    expect(huge.body.resourceType).toBe('OperationOutcome');
  });

  it('searches with standard parameters, paging, sorting, totals, and reports unknown parameters', async () => {
    for (let i = 0; i < 5; i++) {
      await fhir('PUT', `${base}/ExplanationOfBenefit/eob-${i}`, {
        resourceType: 'ExplanationOfBenefit', id: `eob-${i}`, status: 'active', use: 'claim', created: `2024-0${i + 1}-10`,
        type: { coding: [{ system: 'http://terminology.hl7.org/CodeSystem/claim-type', code: 'professional' }] },
        patient: { reference: 'Patient/member-1' }, insurer: { reference: 'Organization/org-1' }, provider: { reference: 'Organization/org-1' },
        outcome: 'complete', insurance: [{ focal: true, coverage: { reference: 'Coverage/c1' } }],
        identifier: [{ system: 'urn:claims', value: `CLM-${i}` }],
      });
    }
    const page1 = await fhir('GET', `${base}/ExplanationOfBenefit?patient=member-1&_count=2&_sort=-created`);
    expect(page1.status).toBe(200);
    expect(page1.body.total).toBe(5);
    expect(page1.body.entry.map((e: { resource: { id: string } }) => e.resource.id)).toEqual(['eob-4', 'eob-3']);
    const next = page1.body.link.find((l: { relation: string }) => l.relation === 'next').url;
    const page2 = await fhir('GET', next);
    expect(page2.body.entry.map((e: { resource: { id: string } }) => e.resource.id)).toEqual(['eob-2', 'eob-1']);

    const dated = await fhir('GET', `${base}/ExplanationOfBenefit?created=ge2024-03-01&created=lt2024-05`);
    expect(dated.body.entry.map((e: { resource: { id: string } }) => e.resource.id).sort()).toEqual(['eob-2', 'eob-3']);
    expect((await fhir('GET', `${base}/ExplanationOfBenefit?identifier=urn:claims|CLM-3`)).body.total).toBe(1);
    expect((await fhir('GET', `${base}/ExplanationOfBenefit?_id=eob-1,eob-2&_total=none`)).body.total).toBeUndefined();
    // A match is sent whole, as read; with _elements, only what was asked for, marked SUBSETTED.
    const read = await fhir('GET', `${base}/ExplanationOfBenefit/eob-1`);
    expect((await fhir('GET', `${base}/ExplanationOfBenefit?_id=eob-1`)).body.entry[0]).toEqual({ fullUrl: `${base}/ExplanationOfBenefit/eob-1`, resource: read.body, search: { mode: 'match' } });
    const subset = (await fhir('GET', `${base}/ExplanationOfBenefit?_id=eob-1&_elements=created`)).body.entry[0].resource;
    expect(Object.keys(subset).sort()).toEqual(['created', 'id', 'meta', 'resourceType']);
    expect(subset.meta.tag).toContainEqual({ system: 'http://terminology.hl7.org/CodeSystem/v3-ObservationValue', code: 'SUBSETTED' });

    const unknown = await fhir('GET', `${base}/ExplanationOfBenefit?patient=member-1&colour=blue`);
    expect(unknown.status).toBe(200);
    const oo = unknown.body.entry.find((e: { search: { mode: string } }) => e.search.mode === 'outcome');
    expect(oo.resource.issue[0].diagnostics).toMatch(/colour/);
    const strict = await fhir('GET', `${base}/ExplanationOfBenefit?colour=blue`, undefined, { prefer: 'handling=strict' });
    expect(strict.status).toBe(400);
    expect((await fhir('GET', `${base}/ExplanationOfBenefit?created=notadate`)).status).toBe(400);
  });

  it('answers unknown routes with an OperationOutcome', async () => {
    const res = await fhir('GET', `${base}/NotAType/1`);
    expect(res.status).toBe(404);
    expect(res.body.resourceType).toBe('OperationOutcome');
  });
});

describe('persistence', () => {
  it('keeps a created Patient across a restart of the server', async () => {
    const first = await startTestServer();
    const created = await fhir('POST', `${first.baseUrl}/Patient`, { resourceType: 'Patient', name: [{ family: 'Persistent' }] });
    await first.stop();
    const second = await startTestServer({ dataDir: first.config.dataDir });
    try {
      const read = await fhir('GET', `${second.baseUrl}/Patient/${created.body.id}`);
      expect(read.status).toBe(200);
      expect(read.body.name[0].family).toBe('Persistent');
    } finally {
      await second.stop();
    }
  });
});
