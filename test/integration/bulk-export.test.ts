import { RunningServer } from '../../src/main';
import { SyntheticMember } from '../../scripts/synthetic';
import { fhir, startTestServer } from '../helpers/server';
import { seedPopulation } from '../helpers/seed';
import { download, downloadAll, exportAll, kickoff, poll } from '../helpers/bulk';
import { getToken, TestClient, writeClientsFile } from '../helpers/clients';

const ids = (rs: { id: string }[]) => rs.map((r) => r.id).sort();

describe('Bulk Data export', () => {
  let server: RunningServer;
  let members: SyntheticMember[];
  let base: string;

  beforeAll(async () => {
    server = await startTestServer();
    base = server.baseUrl;
    members = await seedPopulation(server, 6);
  });
  afterAll(async () => server.stop());

  it('exports one member (Patient/{id}/$export): the compartment plus referenced practitioners, organizations, locations, medications', async () => {
    const m = members[1];
    const { manifest } = await exportAll(`${base}/Patient/${m.patientId}/$export`);
    expect(manifest.requiresAccessToken).toBe(false);
    expect(manifest.request).toBe(`${base}/Patient/${m.patientId}/$export`);
    const data = await downloadAll(manifest);
    expect(ids(data.Patient)).toEqual([m.patientId]);
    for (const eob of data.ExplanationOfBenefit) expect(eob.patient.reference).toBe(`Patient/${m.patientId}`);
    expect(data.ExplanationOfBenefit.length).toBeGreaterThan(0);
    const entry = manifest.output.find((o: { type: string }) => o.type === 'ExplanationOfBenefit');
    expect(entry.count).toBe(data.ExplanationOfBenefit.length);
    // Every Practitioner/Organization/Location/Medication the member's data references is in the export.
    const refs = new Set<string>();
    JSON.stringify(data, (k, v) => (k === 'reference' && /^(Practitioner|Organization|Location|Medication)\//.test(v) ? refs.add(v) && v : v));
    const exported = new Set(['Practitioner', 'Organization', 'Location', 'Medication'].flatMap((t) => (data[t] ?? []).map((r: { id: string }) => `${t}/${r.id}`)));
    expect([...refs].filter((r) => !exported.has(r))).toEqual([]);
    const file = await download(entry.url);
    expect(file.contentType).toMatch(/^application\/fhir\+ndjson/);
  });

  it('exports at Patient, Group and system level, with _type and _since', async () => {
    const all = await downloadAll((await exportAll(`${base}/Patient/$export?_type=Patient,Coverage`)).manifest);
    expect(Object.keys(all).sort()).toEqual(['Coverage', 'Patient']);
    expect(all.Patient).toHaveLength(6);

    const posted = await exportAll(`${base}/Patient/$export`, {
      method: 'POST',
      body: { resourceType: 'Parameters', parameter: [{ name: 'patient', valueReference: { reference: `Patient/${members[2].patientId}` } }, { name: '_type', valueString: 'Patient' }] },
    });
    expect(ids((await downloadAll(posted.manifest)).Patient)).toEqual([members[2].patientId]);

    await fhir('PUT', `${base}/Group/cohort`, { resourceType: 'Group', id: 'cohort', type: 'person', actual: true, member: [{ entity: { reference: `Patient/${members[3].patientId}` } }, { entity: { reference: `Patient/${members[4].patientId}` } }] });
    const group = await downloadAll((await exportAll(`${base}/Group/cohort/$export?_type=Patient,Immunization`)).manifest);
    expect(ids(group.Patient)).toEqual([members[3].patientId, members[4].patientId].sort());
    expect(group.Immunization.every((i: { patient: { reference: string } }) => [members[3].patientId, members[4].patientId].includes(i.patient.reference.slice(8)))).toBe(true);

    const since = new Date().toISOString();
    await new Promise((r) => setTimeout(r, 5));
    await fhir('PUT', `${base}/Organization/late-org`, { resourceType: 'Organization', id: 'late-org', name: 'Late' });
    const sys = await downloadAll((await exportAll(`${base}/$export?_type=Organization&_since=${encodeURIComponent(since)}`)).manifest);
    expect(ids(sys.Organization)).toEqual(['late-org']);

    const filtered = await downloadAll((await exportAll(`${base}/Patient/$export?_type=Observation&_typeFilter=${encodeURIComponent('Observation?code=http://loinc.org|8867-4')}`)).manifest);
    expect(filtered.Observation.length).toBeGreaterThan(0);
  });

  it('rejects bad kick-offs with an OperationOutcome', async () => {
    const cases: [string, Parameters<typeof kickoff>[1], number][] = [
      [`${base}/Patient/$export`, { headers: { prefer: '' } }, 400],
      [`${base}/Patient/$export?_type=Spaceship`, {}, 400],
      [`${base}/Patient/$export?_outputFormat=text/csv`, {}, 400],
      [`${base}/Patient/$export?_since=yesterday`, {}, 400],
      [`${base}/Patient/$export?_elements=id`, {}, 400],
      [`${base}/Patient/$export?colour=blue`, {}, 400],
      [`${base}/Patient/nobody/$export`, {}, 404],
      [`${base}/Group/nogroup/$export`, {}, 404],
    ];
    for (const [url, opts, status] of cases) {
      const res = await kickoff(url, opts);
      expect({ url, status: res.status, type: res.body?.resourceType }).toEqual({ url, status, type: 'OperationOutcome' });
    }
    expect((await kickoff(`${base}/Patient/$export?_elements=id&_type=Patient`, { headers: { prefer: 'respond-async, handling=lenient' } })).status).toBe(202);
  });

  it('DELETE cancels the job and removes its files', async () => {
    const { statusUrl, manifest } = await exportAll(`${base}/Patient/$export?_type=Patient`);
    const del = await fetch(statusUrl, { method: 'DELETE' });
    expect(del.status).toBe(202);
    expect((await fetch(statusUrl)).status).toBe(404);
    expect((await download(manifest.output[0].url)).status).toBe(404);
  });
});

describe('Bulk Data export across a restart', () => {
  it('resumes a job that was running when the server stopped', async () => {
    const first = await startTestServer({ jobLeaseSeconds: 1 });
    await seedPopulation(first, 30);
    const k = await kickoff(`${first.baseUrl}/Patient/$export`);
    expect(k.status).toBe(202);
    await first.stop(); // the job is queued or mid-way; its lease runs out
    const second = await startTestServer({ dataDir: first.config.dataDir, port: first.port, jobLeaseSeconds: 1 });
    try {
      const done = await poll(k.location as string);
      expect(done.status).toBe(200);
      const data = await downloadAll(done.body);
      expect(data.Patient).toHaveLength(30);
    } finally {
      await second.stop();
    }
  });
});

describe('Bulk Data export with authorization', () => {
  let server: RunningServer;
  let clients: Record<string, TestClient>;

  beforeAll(async () => {
    const written = await writeClientsFile([
      { clientId: 'payer-a', scopes: 'system/*.read', role: 'service' },
      { clientId: 'payer-b', scopes: 'system/*.read', role: 'service' },
      { clientId: 'payer-narrow', scopes: 'system/Patient.read', role: 'service' },
    ]);
    clients = written.clients;
    server = await startTestServer({ authRequired: true, clientsFile: written.file });
    await seedPopulation(server, 2);
  });
  afterAll(async () => server.stop());

  it('serves files only to the token of the client that started the job', async () => {
    const tokenA = await getToken(server.tokenUrl, clients['payer-a']);
    const tokenB = await getToken(server.tokenUrl, clients['payer-b']);
    const { statusUrl, manifest } = await exportAll(`${server.baseUrl}/Patient/$export?_type=Patient`, { token: tokenA });
    expect(manifest.requiresAccessToken).toBe(true);
    const url = manifest.output[0].url;
    expect((await download(url, tokenA)).resources).toHaveLength(2);
    expect((await download(url)).status).toBe(401);
    expect((await download(url, tokenB)).status).toBe(403);
    expect((await fetch(statusUrl, { headers: { authorization: `Bearer ${tokenB}` } })).status).toBe(403);
  });

  it('refuses types the token may not read', async () => {
    const narrow = await getToken(server.tokenUrl, clients['payer-narrow'], 'system/Patient.read');
    expect((await kickoff(`${server.baseUrl}/Patient/$export?_type=Coverage`, { token: narrow })).status).toBe(403);
    const ok = await exportAll(`${server.baseUrl}/Patient/$export`, { token: narrow });
    expect(ok.manifest.output.map((o: { type: string }) => o.type)).toEqual(['Patient']);
  });
});
