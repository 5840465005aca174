import { RunningServer } from '../../src/main';
import { generateClientKeys } from '../../src/auth/keys';
import { localIdFor } from '../../src/requester/reference-rewriter';
import { IGNORED } from '../../src/requester/deletions';
import { SyntheticMember } from '../../scripts/synthetic';
import { fhir } from '../helpers/server';
import { InfernoLikeSource, startInfernoLikeSource } from '../helpers/inferno-like-source';
import { FakeSource, ndjson, startFakeSource } from '../helpers/fake-source';
import { createLocalPatient, invokeBody, SOURCE_ISSUER, startRequester, waitForTask } from '../helpers/payers';

/**
 * How the single-member exchange starts the export and what it asks for: the kick-off routes tried
 * in order (the last one is all Inferno's PDex client mock serves), no `_type` unless the operator
 * chose, types the source sends that cannot be stored reported on the Task, and a manifest's
 * `deleted` entries removing the member's earlier imported records and nothing else.
 */
const outputOf = (task: any, text: string) => task.output.filter((o: any) => o.type.text === text);
const notes = (task: any) => (task.note ?? []).map((n: any) => n.text).join('\n');

describe("Inferno's PDex client mock: GET Patient/$export is its only kick-off", () => {
  let fake: InfernoLikeSource;
  let requester: RunningServer;
  const member = { family: 'Inferno', given: 'Ina', birthDate: '1987-02-20', gender: 'female', memberId: '99999' } as SyntheticMember;

  beforeAll(async () => {
    fake = await startInfernoLikeSource();
    fake.clientMock = true;
    const { privateJwk } = await generateClientKeys();
    requester = await startRequester({ tokenUrl: '', fhirBaseUrl: fake.base, client: { clientId: 'us', privateJwk }, payer: { fileOrigins: [fake.storage.origin] } }, { pollMinMs: 20, pollMaxMs: 300 });
  });
  afterAll(async () => {
    await requester.stop();
    await fake.close();
  });

  async function exchange() {
    fake.requests.length = 0;
    const local = await createLocalPatient(requester, member);
    const res = await fhir('POST', `${requester.baseUrl}/Patient/$sdh.s2s.invoke-export`, invokeBody(local, member));
    expect(res.status).toBe(200);
    return { local, task: await waitForTask(requester, res.body.id, undefined, 20000) };
  }

  it('tries Patient/{id}/$export, then POST Patient/$export, then GET Patient/$export naming the member; completes and says which route worked', async () => {
    const { local, task } = await exchange();
    expect({ status: task.status, reason: task.statusReason?.text }).toEqual({ status: 'completed', reason: undefined });
    const kickoffs = fake.requests.filter((r) => /\$export(\?|$)/.test(r.line)).map((r) => r.line);
    expect(kickoffs).toEqual(['GET /r4/Patient/pat015/$export', 'POST /r4/Patient/$export', `GET /r4/Patient/$export?patient=${encodeURIComponent('Patient/pat015')}`]);
    expect(outputOf(task, 'export-route').map((o: any) => o.valueString)).toEqual(['GET Patient/$export']);
    expect(notes(task)).toContain('Export started at the source payer (GET Patient/$export)');
    const conditions = (await fhir('GET', `${requester.baseUrl}/Condition?patient=Patient/${local}`)).body.entry ?? [];
    expect(conditions).toHaveLength(3);
  });

  it("fails safely when the export it gets holds someone else's records: nothing is kept, the Task says why", async () => {
    fake.others = true;
    try {
      const { local, task } = await exchange();
      expect(task.status).toBe('failed');
      expect(task.statusReason.text).toMatch(/Patient other than the matched member|patient other than the member/);
      expect(task.statusReason.text).not.toMatch(/Stranger|pat999|1950/);
      // Nothing of this exchange stayed: not the member's records, not the stranger's.
      expect((await fhir('GET', `${requester.baseUrl}/Condition?patient=Patient/${local}`)).body.entry ?? []).toEqual([]);
      expect((await fhir('GET', `${requester.baseUrl}/Condition/${localIdFor(SOURCE_ISSUER, 'Condition', 'cond-999')}`)).status).toBe(404);
      expect(((await fhir('GET', `${requester.baseUrl}/Patient?family=Stranger`)).body.entry ?? []).length).toBe(0);
    } finally {
      fake.others = false;
    }
  });
});

describe('a source with only some types, that lists deleted records', () => {
  let fake: FakeSource;
  let requester: RunningServer;
  const A = { family: 'Deleter', given: 'Ada', birthDate: '1980-03-03', gender: 'female', memberId: 'MEM-A' } as SyntheticMember;
  const B = { family: 'Deleter', given: 'Bea', birthDate: '1981-04-04', gender: 'female', memberId: 'MEM-B' } as SyntheticMember;
  /** The source's types: a `_type` naming any other is a 400, as SMART's bulk-data-server answers. */
  const HAS = new Set(['Patient', 'Condition', 'Observation', 'Practitioner', 'BodyStructure', 'Basic']);
  let kickoffQueries: string[] = [];
  let member = 'm1';
  let manifest: () => Record<string, unknown>;

  const cond = (id: string, patient: string) => ({ resourceType: 'Condition', id, subject: { reference: `Patient/${patient}` }, code: { text: id } });
  const del = (...urls: string[]) => ({ resourceType: 'Bundle', type: 'transaction', entry: urls.map((url) => ({ request: { method: 'DELETE', url } })) });

  beforeAll(async () => {
    fake = await startFakeSource();
    fake.memberMatch = (res) => {
      res.writeHead(200, { 'content-type': 'application/fhir+json' });
      res.end(JSON.stringify({ resourceType: 'Parameters', parameter: [{ name: 'MemberId', valueReference: { reference: `Patient/${member}` } }] }));
    };
    fake.raw = (p, req, res) => {
      const m = p.match(/^\/fhir\/Patient\/(m1|m2)\/\$export$/);
      if (!m) return false;
      const url = new URL(req.url ?? '/', fake.origin);
      kickoffQueries.push(url.search);
      const unknown = (url.searchParams.get('_type') ?? '').split(',').filter((t) => t && !HAS.has(t));
      if (unknown.length) {
        res.writeHead(400, { 'content-type': 'application/fhir+json' });
        res.end(JSON.stringify({ resourceType: 'OperationOutcome', issue: [{ severity: 'error', code: 'invalid', diagnostics: `The requested resource type "${unknown[0]}" is not available on this server` }] }));
        return true;
      }
      res.writeHead(202, { 'content-location': `${fake.base}/status?of=Patient/${m[1]}` });
      res.end();
      return true;
    };
    fake.manifest = () => manifest();
    const { privateJwk } = await generateClientKeys();
    requester = await startRequester({ tokenUrl: '', fhirBaseUrl: fake.base, client: { clientId: 'us', privateJwk } }, { pollMinMs: 20, pollMaxMs: 200 });
  });
  afterAll(async () => {
    await requester.stop();
    await fake.close();
  });

  /** Serves `files` (type → records) and `deleted` (Bundles) for the next export. */
  function serve(files: Record<string, { records: unknown[]; count?: boolean }>, deleted: unknown[][] = []) {
    fake.files = {};
    for (const [type, f] of Object.entries(files)) fake.files[type] = ndjson(f.records);
    deleted.forEach((bundles, i) => (fake.files[`deleted-${i}`] = ndjson(bundles)));
    manifest = () => ({
      transactionTime: new Date().toISOString(),
      request: `${fake.base}/Patient/${member}/$export`,
      requiresAccessToken: true,
      output: Object.entries(files).map(([type, f]) => ({ type, url: `${fake.base}/files/${type}`, ...(f.count === false ? {} : { count: f.records.length }) })),
      deleted: deleted.map((_, i) => ({ type: 'Bundle', url: `${fake.base}/files/deleted-${i}` })),
      error: [],
    });
  }

  async function exchange(local: string, who: SyntheticMember, sourceId: string) {
    member = sourceId;
    kickoffQueries = [];
    const res = await fhir('POST', `${requester.baseUrl}/Patient/$sdh.s2s.invoke-export`, invokeBody(local, who));
    expect(res.status).toBe(200);
    return waitForTask(requester, res.body.id, undefined, 20000);
  }

  const read = (type: string, sourceId: string) => fhir('GET', `${requester.baseUrl}/${type}/${localIdFor(SOURCE_ISSUER, type, sourceId)}`);

  it('sends no _type, imports what it can store, and names the types it cannot store with their counts', async () => {
    const localA = await createLocalPatient(requester, A);
    serve({
      Condition: { records: [cond('c1', 'm1'), cond('c2', 'm1')] },
      Observation: { records: [{ resourceType: 'Observation', id: 'o1', status: 'final', code: { text: 'o1' }, subject: { reference: 'Patient/m1' } }] },
      BodyStructure: { records: [{ resourceType: 'BodyStructure', id: 'b1', patient: { reference: 'Patient/m1' } }, { resourceType: 'BodyStructure', id: 'b2', patient: { reference: 'Patient/m1' } }] },
      Basic: { records: [{ resourceType: 'Basic', id: 'x1', code: { text: 'x' } }], count: false },
    });
    const task = await exchange(localA, A, 'm1');
    expect({ status: task.status, reason: task.statusReason?.text }).toEqual({ status: 'completed', reason: undefined });
    expect(kickoffQueries).toEqual(['']);
    expect(outputOf(task, 'count:Condition')[0].valueInteger).toBe(2);
    expect(outputOf(task, 'skipped:BodyStructure')[0].valueInteger).toBe(2);
    expect(outputOf(task, 'skipped:Basic')).toHaveLength(1);
    expect(notes(task)).toContain('the source sent types this server cannot store, not imported: BodyStructure (2 resource(s)), Basic (1 file(s), count not given)');
  });

  it("removes the member's earlier imported record a deleted entry names, and leaves alone every record that is not the member's own import", async () => {
    const localA = (await fhir('GET', `${requester.baseUrl}/Patient?given=Ada`)).body.entry[0].resource.id;
    // Member B's record, imported from the same source.
    const localB = await createLocalPatient(requester, B);
    serve({ Condition: { records: [cond('cB', 'm2')] }, Practitioner: { records: [{ resourceType: 'Practitioner', id: 'pr1', name: [{ family: 'Shared' }] }] } });
    expect((await exchange(localB, B, 'm2')).status).toBe('completed');
    // A local record of member A under the very id an import of Condition/forged would get, written by a client here.
    const forgedId = localIdFor(SOURCE_ISSUER, 'Condition', 'forged');
    expect((await fhir('PUT', `${requester.baseUrl}/Condition/${forgedId}`, { resourceType: 'Condition', id: forgedId, subject: { reference: `Patient/${localA}` }, code: { text: 'local' } })).status).toBe(201);

    serve({ Condition: { records: [cond('c2', 'm1')] } }, [
      [del('Condition/c1', 'Condition/cB', 'Practitioner/pr1', 'Patient/m1', `${fake.base}/Observation/o1`), del('Condition/c2', 'Condition/forged', 'http://elsewhere.example/fhir/Observation/o1', 'Condition/never-sent')],
      [{ resourceType: 'Bundle', type: 'transaction', entry: [{ request: { method: 'GET', url: 'Condition/c2' } }] }],
    ]);
    const task = await exchange(localA, A, 'm1');
    expect({ status: task.status, reason: task.statusReason?.text }).toEqual({ status: 'completed', reason: undefined });
    // Removed: A's Condition c1 and A's Observation o1 (named by an absolute URL at the source).
    expect((await read('Condition', 'c1')).status).toBe(410);
    expect((await read('Observation', 'o1')).status).toBe(410);
    // Left alone: what this export sent again, B's record, a record of no member, the local Patient, the local record, anything elsewhere.
    expect((await read('Condition', 'c2')).status).toBe(200);
    expect((await read('Condition', 'cB')).status).toBe(200);
    expect((await read('Practitioner', 'pr1')).status).toBe(200);
    expect((await fhir('GET', `${requester.baseUrl}/Patient/${localA}`)).status).toBe(200);
    expect((await fhir('GET', `${requester.baseUrl}/Condition/${forgedId}`)).body.code.text).toBe('local');
    expect(outputOf(task, 'deleted:Condition')[0].valueInteger).toBe(1);
    expect(outputOf(task, 'deleted:Observation')[0].valueInteger).toBe(1);
    const ignored = outputOf(task, 'deleted-ignored').map((o: any) => o.valueString).sort();
    expect(ignored).toEqual(
      [`2 ${IGNORED.otherMember}`, `1 ${IGNORED.patient}`, `1 ${IGNORED.resent}`, `1 ${IGNORED.otherOrigin}`, `1 ${IGNORED.notTypeId}`, `1 ${IGNORED.missing}`, `1 ${IGNORED.notDelete}`].sort(),
    );
    expect(notes(task)).toContain("The source listed deleted records: 2 of the member's imported record(s) removed");
  });

  it("a deleted file over the per-file limit fails the exchange, and the deletions it had applied are undone", async () => {
    const small = await startRequester({ tokenUrl: '', fhirBaseUrl: fake.base, client: { clientId: 'us', privateJwk: (await generateClientKeys()).privateJwk } }, { pollMinMs: 20, pollMaxMs: 200, exchangeMaxFileBytes: 4096 });
    try {
      const local = await createLocalPatient(small, A);
      serve({ Condition: { records: [cond('k1', 'm1'), cond('k2', 'm1')] } });
      member = 'm1';
      const first = (await fhir('POST', `${small.baseUrl}/Patient/$sdh.s2s.invoke-export`, invokeBody(local, A))).body.id;
      expect((await waitForTask(small, first, undefined, 20000)).status).toBe('completed');
      // The file's first Bundle (deleting k1) arrives and is applied before the rest goes over the limit.
      const big = Array.from({ length: 200 }, (_, i) => `Condition/filler-${i}`);
      serve({ Condition: { records: [cond('k2', 'm1')] } }, [[del('Condition/k1')]]);
      let firstApplied = false;
      fake.file = (name, res) => {
        if (name !== 'deleted-0') return false;
        res.writeHead(200, { 'content-type': 'application/fhir+ndjson' });
        res.write(ndjson([del('Condition/k1')]));
        const poll = setInterval(async () => {
          if ((await fhir('GET', `${small.baseUrl}/Condition/${localIdFor(SOURCE_ISSUER, 'Condition', 'k1')}`)).status !== 410) return;
          clearInterval(poll);
          firstApplied = true;
          res.end(ndjson([del(...big)]));
        }, 50);
        return true;
      };
      const second = (await fhir('POST', `${small.baseUrl}/Patient/$sdh.s2s.invoke-export`, invokeBody(local, A))).body.id;
      const task = await waitForTask(small, second, undefined, 20000);
      expect(firstApplied).toBe(true);
      expect(task.status).toBe('failed');
      expect(task.statusReason.text).toMatch(/larger than the limit of 4096 bytes per file/);
      // The deletion already applied was undone with the rest of the exchange.
      const k1 = await fhir('GET', `${small.baseUrl}/Condition/${localIdFor(SOURCE_ISSUER, 'Condition', 'k1')}`);
      expect(k1.status).toBe(200);
      expect(k1.body.code.text).toBe('k1');
    } finally {
      fake.file = undefined;
      await small.stop();
    }
  });
});

describe('a source that declares its operations by canonical only', () => {
  let fake: FakeSource;
  let requester: RunningServer;
  const members = [
    { family: 'Canon', given: 'Cal', birthDate: '1970-01-01', gender: 'male', memberId: 'MEM-C1' },
    { family: 'Canon', given: 'Cat', birthDate: '1971-01-01', gender: 'female', memberId: 'MEM-C2' },
  ] as SyntheticMember[];

  beforeAll(async () => {
    fake = await startFakeSource();
    // Its own names for the IG's operations: only the definitions say what they are.
    fake.capabilityStatement = {
      resourceType: 'CapabilityStatement',
      status: 'active',
      kind: 'instance',
      fhirVersion: '4.0.1',
      format: ['json'],
      rest: [{ mode: 'server', resource: [{ type: 'Group', operation: [{ name: 'match-many', definition: 'http://hl7.org/fhir/us/davinci-pdex/OperationDefinition/BulkMemberMatch|2.1.0' }] }] }],
    };
    const { privateJwk } = await generateClientKeys();
    requester = await startRequester({ tokenUrl: '', fhirBaseUrl: fake.base, client: { clientId: 'us', privateJwk } }, { pollMinMs: 20, pollMaxMs: 200 });
  });
  afterAll(async () => {
    await requester.stop();
    await fake.close();
  });

  it('is asked for $bulk-member-match, which it declared by canonical alone', async () => {
    const locals = [];
    for (const m of members) locals.push(await createLocalPatient(requester, m));
    fake.log = [];
    const res = await fhir('POST', `${requester.baseUrl}/Group/$sdh.s2s.invoke-bulk-export`, {
      resourceType: 'Parameters',
      parameter: [
        { name: 'sourceIssuerUrl', valueString: SOURCE_ISSUER },
        ...members.map((m, i) => ({ name: 'member', part: (invokeBody(locals[i], m).parameter as any[]).filter((p) => p.name === 'localPatient' || p.name === 'memberMatch') })),
      ],
    });
    expect(res.status).toBe(200);
    await waitForTask(requester, res.body.id, (t) => t.status === 'completed', 20000);
    expect(fake.log).toContain('GET /fhir/metadata');
    expect(fake.log).toContain('POST /fhir/Group/$bulk-member-match');
    // $davinci-data-export was not declared: no group export was asked for.
    expect(fake.log.filter((l) => l.includes('$davinci-data-export'))).toEqual([]);
  });
});
