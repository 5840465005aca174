import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import type { AddressInfo } from 'node:net';
import { RunningServer } from '../../src/main';
import { generateClientKeys } from '../../src/auth/keys';
import { SyntheticMember } from '../../scripts/synthetic';
import { fhir } from '../helpers/server';
import { FakeSource, ndjson, startFakeSource } from '../helpers/fake-source';
import { createLocalPatient, invokeBody, startRequester, waitForTask } from '../helpers/payers';

/**
 * The requesting side against a source payer that lies about types, sizes, URLs and members. Each
 * case asserts the Task's reason, that nothing was stored, that nothing was written outside
 * DATA_DIR, and that the server keeps serving.
 */
const member = { patientId: 'm1', memberId: 'MEM-1', family: 'Hostile', given: 'Hal', birthDate: '1970-01-01', gender: 'male' } as SyntheticMember;
const condition = (id: string, extra: Record<string, unknown> = {}) => ({ resourceType: 'Condition', id, subject: { reference: 'Patient/m1' }, code: { text: `condition ${id}` }, ...extra });

function listFiles(dir: string): string[] {
  if (!fs.existsSync(dir)) return [];
  return fs.readdirSync(dir, { withFileTypes: true }).flatMap((e) => (e.isDirectory() ? listFiles(path.join(dir, e.name)) : [path.join(dir, e.name)]));
}

describe('a hostile source payer', () => {
  let fake: FakeSource;
  let requester: RunningServer;
  let local: string;
  const overrides = { pollMinMs: 20, pollMaxMs: 200, exchangeMaxFileBytes: 64 * 1024, downloadIdleTimeoutMs: 700, manifestMaxPages: 5 };

  beforeAll(async () => {
    fake = await startFakeSource();
    const { privateJwk } = await generateClientKeys();
    requester = await startRequester({ tokenUrl: '', fhirBaseUrl: fake.base, client: { clientId: 'us', privateJwk } }, overrides);
    local = await createLocalPatient(requester, member);
    // A patient of this server that no exchange may touch.
    await fhir('PUT', `${requester.baseUrl}/Patient/victim-local`, { resourceType: 'Patient', id: 'victim-local', name: [{ family: 'Victim' }] });
  });
  afterAll(async () => {
    await requester.stop();
    await fake.close();
  });
  beforeEach(() => {
    fake.files = {};
    fake.output = [];
    fake.manifest = undefined;
    fake.smartConfiguration = undefined;
    fake.memberMatch = undefined;
    fake.file = undefined;
  });

  async function exchange(): Promise<any> {
    const res = await fhir('POST', `${requester.baseUrl}/Patient/$sdh.s2s.invoke-export`, invokeBody(local, member, { issuer: 'https://source-payer.example.com' }));
    expect(res.status).toBe(200);
    return waitForTask(requester, res.body.id, undefined, 20000);
  }

  async function storedConditions(): Promise<number> {
    return (await fhir('GET', `${requester.baseUrl}/Condition?_summary=count`)).body.total;
  }

  async function expectFailedLeavingNothing(reason: RegExp) {
    const before = await storedConditions();
    const task = await exchange();
    expect({ status: task.status, reason: task.statusReason?.text }).toEqual({ status: 'failed', reason: expect.stringMatching(reason) });
    expect(await storedConditions()).toBe(before);
    expect((await fhir('GET', `${requester.baseUrl}/Condition?patient=victim-local`)).body.total).toBe(0);
    expect((await fhir('GET', `${requester.baseUrl}/metadata`)).status).toBe(200);
    return task;
  }

  it('names no file after the manifest: a traversal type fails the exchange and writes nothing outside DATA_DIR', async () => {
    const root = path.dirname(requester.config.dataDir);
    const before = new Set(listFiles(root).filter((f) => f.includes('pwned')));
    fake.output = [{ type: '../../../../../pwned', name: 'x' }, { type: 'Condition/../../x', name: 'y' }];
    fake.files = { x: ndjson([condition('c1')]), y: ndjson([condition('c2')]) };
    await expectFailedLeavingNothing(/not a FHIR resource type/);
    expect(listFiles(root).filter((f) => f.includes('pwned') && !before.has(f))).toEqual([]);
    expect(listFiles(path.join(requester.config.dataDir, 'exchanges'))).toEqual([]);
  });

  it('sends our credentials only to the source: a discovered token endpoint on another origin fails the exchange', async () => {
    const seen: string[] = [];
    const elsewhere = http.createServer((req, res) => {
      seen.push(`${req.method} ${req.url} ${req.headers.authorization ?? ''}`);
      res.end('{}');
    });
    await new Promise<void>((resolve) => elsewhere.listen(0, '127.0.0.1', resolve));
    // A requester that has not yet discovered this source's token endpoint.
    const { privateJwk } = await generateClientKeys();
    const fresh = await startRequester({ tokenUrl: '', fhirBaseUrl: fake.base, client: { clientId: 'us', privateJwk } }, overrides);
    try {
      fake.smartConfiguration = () => ({ token_endpoint: `http://127.0.0.1:${(elsewhere.address() as AddressInfo).port}/steal` });
      fake.log.length = 0;
      const patient = await createLocalPatient(fresh, member);
      const res = await fhir('POST', `${fresh.baseUrl}/Patient/$sdh.s2s.invoke-export`, invokeBody(patient, member, { issuer: 'https://source-payer.example.com' }));
      const task = await waitForTask(fresh, res.body.id);
      expect({ status: task.status, reason: task.statusReason?.text }).toEqual({ status: 'failed', reason: expect.stringMatching(/token_endpoint is on http:\/\/127\.0\.0\.1:\d+, not on the source payer's origin/) });
      expect(seen).toEqual([]);
      // The CapabilityStatement is read first (it chooses the exchange's path), without a token.
      expect(fake.log).toEqual(['GET /fhir/metadata', 'GET /fhir/.well-known/smart-configuration']);
      expect(fake.auth['/fhir/metadata']).toBeUndefined();
    } finally {
      await fresh.stop();
      elsewhere.close();
      elsewhere.closeAllConnections();
    }
  });

  it('bounds what it receives: a never-ending file, a trickling one, and manifests that page forever', async () => {
    fake.output = [{ type: 'Condition', name: 'endless' }];
    fake.file = (name, res) => {
      if (name !== 'endless') return false;
      res.writeHead(200, { 'content-type': 'application/fhir+ndjson' });
      const chunk = ndjson(Array.from({ length: 50 }, (_, i) => condition(`e${i}`)));
      const pump = () => {
        while (res.write(chunk));
        res.once('drain', pump);
      };
      res.on('close', () => res.removeAllListeners('drain'));
      pump();
      return true;
    };
    await expectFailedLeavingNothing(/larger than the limit of 65536 bytes per file/);

    fake.output = [{ type: 'Condition', name: 'trickle' }];
    fake.file = (name, res) => {
      res.writeHead(200, { 'content-type': 'application/fhir+ndjson' });
      res.write('{');
      const t = setInterval(() => res.write(' '), 2000);
      res.on('close', () => clearInterval(t));
      return true;
    };
    await expectFailedLeavingNothing(/sent nothing for/);

    fake.manifest = () => ({ transactionTime: 'x', request: 'x', requiresAccessToken: true, output: [], error: [], link: [{ relation: 'next', url: `${fake.base}/status` }] });
    await expectFailedLeavingNothing(/link back to a page already read/);
    let page = 0;
    fake.manifest = () => ({ transactionTime: 'x', request: 'x', requiresAccessToken: true, output: [], error: [], link: [{ relation: 'next', url: `${fake.base}/status?page=${++page}` }] });
    await expectFailedLeavingNothing(/more than 5 pages/);
  });

  it('checks every record before storing anything: invalid elements, prototype keys, another person, a local patient', async () => {
    const cases: [string, unknown[], RegExp][] = [
      ['invalid element', [condition('ok1'), condition('bad', { bogus: 1 })], /line 2 is not valid FHIR R4: .*bogus/],
      ['prototype key', [condition('ok1'), { ...condition('bad'), constructor: { prototype: { polluted: true } } }], /forbidden key 'constructor'/],
      ['a second Patient', [{ resourceType: 'Patient', id: 'm1' }, { resourceType: 'Patient', id: 'stranger', name: [{ family: 'Stranger' }] }], /a Patient other than the matched member/],
      ['a local patient by absolute URL', [condition('abs', { subject: { reference: `${requester.baseUrl}/Patient/victim-local` } })], /refers to a patient other than the member/],
      ['a local patient inside a contained resource', [condition('cont', { contained: [{ resourceType: 'Observation', id: 'o', status: 'final', code: { text: 'x' }, subject: { reference: `${requester.baseUrl}/Patient/victim-local` } }] })], /refers to a patient other than the member/],
    ];
    for (const [name, resources, reason] of cases) {
      const type = (resources[resources.length - 1] as { resourceType: string }).resourceType;
      fake.output = [{ type: 'Condition', name: 'good' }, { type, name: 'bad' }];
      fake.files = { good: ndjson([condition('fine')]), bad: ndjson(resources) };
      const task = await expectFailedLeavingNothing(reason);
      expect({ name, reason: task.statusReason.text }).toEqual({ name, reason: expect.stringMatching(reason) });
    }
    expect((await fhir('GET', `${requester.baseUrl}/Patient?name=Stranger`)).body.total).toBe(0);
    expect(({} as Record<string, unknown>).polluted).toBeUndefined();
  });

  describe("plants no record about anyone but the member (references judged before rewriting)", () => {
    const observation = (id: string, extra: Record<string, unknown> = {}) => ({ resourceType: 'Observation', id, status: 'final', code: { text: `observation ${id}` }, subject: { reference: 'Patient/m1' }, ...extra });
    const count = async (type: string, query = '') => (await fhir('GET', `${requester.baseUrl}/${type}?_summary=count${query}`)).body.total as number;
    let kept: { version: string; conditions: number };

    beforeAll(async () => {
      // The member already holds data from an earlier exchange: no hostile one may touch it.
      fake.output = [{ type: 'Condition', name: 'kept' }];
      fake.files = { kept: ndjson([condition('kept-1')]) };
      const task = await exchange();
      expect(task.status).toBe('completed');
      kept = { version: (await fhir('GET', `${requester.baseUrl}/Patient/${local}`)).body.meta.versionId, conditions: await count('Condition', `&patient=${local}`) };
      expect(kept.conditions).toBeGreaterThan(0);
    });

    const cases: [string, Record<string, unknown>, RegExp][] = [
      ['subject: another Patient of the source', { subject: { reference: 'Patient/stranger-7' } }, /an Observation from the source refers to a patient other than the member \(at Observation\.subject\)/],
      ['performer only: another Patient, the member named nowhere', { subject: undefined, performer: [{ reference: 'Patient/stranger-7' }] }, /refers to a patient other than the member \(at Observation\.performer\[0\]\)/],
      ['performer: another Patient, by identifier beside the reference', { performer: [{ reference: 'Patient/stranger-7', identifier: { value: 'MEM-2' } }] }, /refers to a patient other than the member \(at Observation\.performer\[0\]\)/],
      ['a relative Patient reference inside contained', { contained: [{ resourceType: 'Observation', id: 'c', status: 'final', code: { text: 'c' }, subject: { reference: 'Patient/stranger-7' } }] }, /patient other than the member \(at Observation\.contained\[0\]\.subject\)/],
      ['a contained Patient', { contained: [{ resourceType: 'Patient', id: 'p', name: [{ family: 'Stranger' }] }], focus: [{ reference: '#p' }] }, /contains a Patient/],
      ['subject.identifier naming another member', { subject: { identifier: { system: 'http://source-payer.example.com/member-id', value: 'MEM-2' } } }, /refers by identifier to a person other than the member/],
      ['a logical reference typed Patient', { performer: [{ type: 'Patient', identifier: { value: 'MEM-2' } }] }, /refers by identifier to a person other than the member/],
      ['a conditional reference', { subject: { reference: 'Patient?identifier=http://source-payer.example.com/member-id|MEM-2' } }, /by a conditional reference/],
      ['lower case patient/x', { subject: { reference: 'patient/m1' } }, /patient other than the member/],
      ['odd case PaTiEnT/x', { performer: [{ reference: 'PaTiEnT/stranger-7' }] }, /patient other than the member/],
      ['a _history form', { subject: { reference: 'Patient/stranger-7/_history/1' } }, /patient other than the member/],
      ['absolute, the source base', { subject: { reference: 'SOURCE/Patient/stranger-7' } }, /patient other than the member/],
      ['absolute, another base, the member id', { subject: { reference: 'https://elsewhere.example/fhir/Patient/m1' } }, /patient other than the member/],
      ["absolute, another local member's record", { subject: { reference: 'LOCAL/Patient/victim-local' } }, /patient other than the member/],
      ['absolute, a non-Patient record of this server', { hasMember: [{ reference: 'LOCAL/Observation/anything' }] }, /refers to a record of this server/],
      ['this server by another loopback name', { hasMember: [{ reference: 'LOCALHOST/Condition/anything' }] }, /refers to a record of this server/],
    ];

    it.each(cases)('fails the exchange and stores nothing: %s', async (_name, extra, reason) => {
      const fill = (v: unknown): unknown =>
        JSON.parse(JSON.stringify(v).replace(/SOURCE/g, fake.base).replace(/LOCALHOST/g, requester.baseUrl.replace('127.0.0.1', 'localhost')).replace(/LOCAL/g, requester.baseUrl));
      const before = { conditions: await count('Condition'), observations: await count('Observation'), victim: (await fhir('GET', `${requester.baseUrl}/Patient/victim-local`)).body.meta.versionId };
      fake.output = [{ type: 'Condition', name: 'good' }, { type: 'Observation', name: 'bad' }];
      fake.files = { good: ndjson([condition('planted-ok'), condition('kept-1', { code: { text: 'overwritten' } })]), bad: ndjson([observation('planted-ok'), fill(observation('planted', extra))]) };
      const task = await exchange();
      expect({ status: task.status, reason: task.statusReason?.text }).toEqual({ status: 'failed', reason: expect.stringMatching(reason) });
      expect(task.statusReason.text).not.toMatch(/victim|stranger|MEM-2|elsewhere/i);
      expect({ conditions: await count('Condition'), observations: await count('Observation') }).toEqual({ conditions: before.conditions, observations: before.observations });
      // The member's data is untouched: the earlier Condition keeps its text, the Patient its version.
      const mine = (await fhir('GET', `${requester.baseUrl}/Condition?patient=${local}&_count=50`)).body.entry.map((e: any) => e.resource.code.text);
      expect(mine).toEqual(['condition kept-1']);
      expect((await fhir('GET', `${requester.baseUrl}/Patient/${local}`)).body.meta.versionId).toBe(kept.version);
      // The other local patient is untouched and still has nothing.
      expect((await fhir('GET', `${requester.baseUrl}/Patient/victim-local`)).body.meta.versionId).toBe(before.victim);
      expect(await count('Observation', '&patient=victim-local')).toBe(0);
      expect(await count('Condition', '&patient=victim-local')).toBe(0);
      expect((await fhir('GET', `${requester.baseUrl}/metadata`)).status).toBe(200);
    });

    // Issue 26 point 5: the one case that changed. A plain reference to another source Patient where a
    // record only mentions a person (an Observation's performer, a dependent's Coverage.subscriber) no
    // longer fails the exchange: the record is stored without it, and the Task counts it.
    it('keeps a record that only mentions another person, without that reference, and says so on the Task naming no one', async () => {
      const before = await count('Observation', '&patient=victim-local');
      fake.output = [{ type: 'Observation', name: 'mention' }, { type: 'Coverage', name: 'cov' }];
      fake.files = {
        mention: ndjson([observation('performed-by-other', { performer: [{ reference: 'Patient/stranger-7', display: 'Stella Stranger' }, { reference: 'Practitioner/doc-1' }] })]),
        cov: ndjson([{ resourceType: 'Coverage', id: 'dep-cov', status: 'active', subscriberId: 'CARD-77', beneficiary: { reference: 'Patient/m1' }, subscriber: { reference: `${fake.base}/Patient/stranger-7` }, relationship: { coding: [{ system: 'http://terminology.hl7.org/CodeSystem/subscriber-relationship', code: 'child' }] }, payor: [{ display: 'Old Plan' }] }]),
      };
      const task = await exchange();
      expect(task.status).toBe('completed');
      expect(task.note.map((n: any) => n.text).join(' ')).toMatch(/2 record\(s\) referred to a person other than the member; those references were not kept/);
      expect(task.output.find((o: any) => o.type.text === 'references-not-kept')?.valueInteger).toBe(2);
      expect(JSON.stringify(task)).not.toMatch(/stranger|Stella/i);
      const stored = (await fhir('GET', `${requester.baseUrl}/Observation?patient=${local}&code:text=performed-by-other`)).body.entry.map((e: any) => e.resource).find((o: any) => o.code.text === 'observation performed-by-other');
      expect(stored.performer).toHaveLength(2);
      expect(stored.performer[0].reference).toBeUndefined();
      expect(stored.performer[1].reference).toMatch(/^Practitioner\//);
      const cov = (await fhir('GET', `${requester.baseUrl}/Coverage?beneficiary=Patient/${local}`)).body.entry.map((e: any) => e.resource);
      expect(cov).toHaveLength(1);
      expect(cov[0].subscriberId).toBe('CARD-77');
      expect(cov[0].subscriber?.reference).toBeUndefined();
      expect(JSON.stringify([stored, cov])).not.toMatch(/stranger|Stella/i);
      // No local patient gained anything, and none was made for the other person.
      expect(await count('Observation', '&patient=victim-local')).toBe(before);
      expect((await fhir('GET', `${requester.baseUrl}/Patient?name=Stranger`)).body.total).toBe(0);
    });

    it("fails when the source's Patient is another person (Victim, 1950-01-01, for Rivera, 1975-05-05), naming no demographics", async () => {
      const rivera = { patientId: 'm1', memberId: 'MEM-1', family: 'Rivera', given: 'Ana', birthDate: '1975-05-05', gender: 'female' } as SyntheticMember;
      const riveraLocal = await createLocalPatient(requester, rivera);
      const version = (await fhir('GET', `${requester.baseUrl}/Patient/${riveraLocal}`)).body.meta.versionId;
      const before = { conditions: await count('Condition'), observations: await count('Observation') };
      const run = async () => {
        const res = await fhir('POST', `${requester.baseUrl}/Patient/$sdh.s2s.invoke-export`, invokeBody(riveraLocal, rivera, { issuer: 'https://source-payer.example.com' }));
        expect(res.status).toBe(200);
        return waitForTask(requester, res.body.id, undefined, 20000);
      };
      // The source matches (MemberId Patient/m1) and exports another person's record.
      fake.output = [{ type: 'Condition', name: 'conds' }, { type: 'Patient', name: 'patient' }, { type: 'Observation', name: 'obs' }];
      fake.files = {
        conds: ndjson([condition('victim-c1')]),
        patient: ndjson([{ resourceType: 'Patient', id: 'm1', name: [{ family: 'Victim', given: ['Vic'] }], birthDate: '1950-01-01' }]),
        obs: ndjson([observation('victim-o1')]),
      };
      const task = await run();
      expect({ status: task.status, reason: task.statusReason?.text }).toEqual({ status: 'failed', reason: "the source's Patient does not agree with the submitted member demographics" });
      expect(JSON.stringify(task)).not.toMatch(/Victim|1950|Vic\b/);
      expect({ conditions: await count('Condition'), observations: await count('Observation') }).toEqual(before);
      expect(await count('Condition', `&patient=${riveraLocal}`)).toBe(0);
      const patient = (await fhir('GET', `${requester.baseUrl}/Patient/${riveraLocal}`)).body;
      expect({ version: patient.meta.versionId, family: patient.name[0].family, birthDate: patient.birthDate }).toEqual({ version, family: 'Rivera', birthDate: '1975-05-05' });
      // Only the family name agreeing is not enough either.
      fake.files.patient = ndjson([{ resourceType: 'Patient', id: 'm1', name: [{ family: 'Rivera' }], birthDate: '1950-01-01' }]);
      expect((await run()).statusReason?.text).toBe("the source's Patient does not agree with the submitted member demographics");
      expect(await count('Condition', `&patient=${riveraLocal}`)).toBe(0);

      // The right person, spelled otherwise (case, accent), is imported.
      fake.files.patient = ndjson([{ resourceType: 'Patient', id: 'm1', name: [{ family: 'RÍVERA', given: ['Ana'] }], birthDate: '1975-05-05' }]);
      const ok = await run();
      expect(ok.status).toBe('completed');
      expect(await count('Condition', `&patient=${riveraLocal}`)).toBe(1);
      expect(ok.note.map((n: any) => n.text).join(' ')).not.toMatch(/not compared/);
      // No Patient record at all: imported on the match alone, and the Task says the demographics were not compared.
      fake.output = [{ type: 'Condition', name: 'conds' }];
      const unchecked = await run();
      expect(unchecked.status).toBe('completed');
      expect(unchecked.note.map((n: any) => n.text).join(' ')).toMatch(/the source sent no Patient record, so the member's demographics were not compared/);
      expect((await fhir('GET', `${requester.baseUrl}/metadata`)).status).toBe(200);
    });
  });

  it('skips and reports types it does not store, sends no _type by default, and imports the rest', async () => {
    fake.output = [{ type: 'Claim', name: 'claims', count: 7 }, { type: 'Condition', name: 'conds', count: 2 }];
    fake.files = { claims: ndjson([{ resourceType: 'Claim', id: 'x' }]), conds: ndjson([condition('k1'), condition('k2')]) };
    const task = await exchange();
    expect(task.status).toBe('completed');
    const out = Object.fromEntries(task.output.map((o: any) => [o.type.text, o.valueInteger]));
    expect(out['skipped:Claim']).toBe(7);
    expect(out['count:Condition']).toBe(2);
    expect(fake.log).not.toContain('GET /fhir/files/claims');
    // No _type in the request: none is sent, the source sends all it has (issue 26), and what cannot be stored is named on the Task.
    expect(fake.exportQuery?.has('_type')).toBe(false);
    expect(task.note.map((n: any) => n.text).join('\n')).toContain('the source sent types this server cannot store, not imported: Claim (7 resource(s))');
  });

  it('sends $member-match once per attempt: the HTTP layer never re-sends a POST', async () => {
    let calls = 0;
    fake.memberMatch = (res) => {
      calls++;
      res.writeHead(503, { 'content-type': 'application/fhir+json', 'retry-after': '1' });
      res.end('{"resourceType":"OperationOutcome","issue":[]}');
    };
    const res = await fhir('POST', `${requester.baseUrl}/Patient/$sdh.s2s.invoke-export`, invokeBody(local, member, { issuer: 'https://source-payer.example.com' }));
    const waiting = await waitForTask(requester, res.body.id, (t) => /waiting for the source: HTTP 503, retrying/.test(t.businessStatus?.text ?? ''));
    expect(calls).toBe(1);
    expect(waiting.status).toBe('in-progress');
    const cancel = await fhir('PUT', `${requester.baseUrl}/Task/${waiting.id}`, { ...waiting, status: 'cancelled' }, { 'if-match': `W/"${waiting.meta.versionId}"` });
    expect(cancel.status).toBe(200);
    expect((await waitForTask(requester, waiting.id)).status).toBe('cancelled');
  });

  it('lets clients cancel an active exchange Task and nothing else', async () => {
    fake.output = [{ type: 'Condition', name: 'conds' }];
    fake.files = { conds: ndjson([condition('t1')]) };
    const done = await exchange();
    expect(done.status).toBe('completed');
    const url = `${requester.baseUrl}/Task/${done.id}`;
    expect((await fhir('PUT', url, { ...done, status: 'cancelled' })).status).toBe(409);
    expect((await fhir('DELETE', url)).status).toBe(409);
    fake.memberMatch = (res) => {
      res.writeHead(503, { 'retry-after': '1' });
      res.end();
    };
    const res = await fhir('POST', `${requester.baseUrl}/Patient/$sdh.s2s.invoke-export`, invokeBody(local, member, { issuer: 'https://source-payer.example.com' }));
    const running = await waitForTask(requester, res.body.id, (t) => t.status === 'in-progress');
    const runningUrl = `${requester.baseUrl}/Task/${running.id}`;
    expect((await fhir('PUT', runningUrl, { ...running, status: 'completed' })).status).toBe(422);
    expect((await fhir('PUT', runningUrl, { ...running, status: 'cancelled', for: { reference: 'Patient/victim-local' } })).status).toBe(422);
    expect((await fhir('PUT', runningUrl, { ...running, status: 'cancelled' }, { 'if-match': 'W/"1"' })).status).toBe(412);
    const latest = (await fhir('GET', runningUrl)).body;
    expect((await fhir('PUT', runningUrl, { ...latest, status: 'cancelled' }, { 'if-match': `W/"${latest.meta.versionId}"` })).status).toBe(200);
    expect((await waitForTask(requester, running.id)).status).toBe('cancelled');
  });

  it('restarts cleanly after hostile exchanges, and keeps serving', async () => {
    const { config, port } = requester;
    await requester.stop();
    const { privateJwk } = await generateClientKeys();
    requester = await startRequester({ tokenUrl: '', fhirBaseUrl: fake.base, client: { clientId: 'us', privateJwk } }, { ...overrides, dataDir: config.dataDir, port });
    await new Promise((r) => setTimeout(r, 1500));
    expect((await fhir('GET', `${requester.baseUrl}/metadata`)).status).toBe(200);
    expect((await fhir('GET', `${requester.baseUrl}/Patient/${local}`)).status).toBe(200);
  });
});
