import { findMember } from '../../src/requester/member-lookup';
import { Readable } from 'node:stream';
import type { Resource, Task } from 'fhir/r4';
import { SqliteDatabase } from '../../src/store/sqlite/sqlite-database';
import { ResourceStore } from '../../src/store/resource-store';
import { SearchRegistry } from '../../src/fhir/search/registry';
import { RESOURCE_TYPES } from '../../src/fhir/resource-types';
import { TaskTracker, EXCHANGE_TAG } from '../../src/requester/task-tracker';
import { ImportJournal } from '../../src/requester/import-journal';
import { Importer } from '../../src/requester/importer';
import { RecordChecker } from '../../src/requester/record-checker';
import { ExchangeJobData, ExchangeJobHandler } from '../../src/requester/exchange-job';
import { parseRetryAfter, RemotePayer } from '../../src/requester/remote-payer-client';
import { SourcePayer } from '../../src/requester/source-payers';
import { localIdFor } from '../../src/requester/reference-rewriter';
import { JobContext, JobRunner, RetryLater } from '../../src/jobs/job-runner';
import { createLogger } from '../../src/logger';
import { tempDir } from '../helpers/server';

const logger = createLogger('error', true);
const ISSUER = 'https://source.example.com';
const payer: SourcePayer = { issuer: ISSUER, fhirBaseUrl: 'https://source.example.com/fhir', clientId: 'c', clientAuthenticationMode: 'CLIENT_SECRET_BASIC', clientSecret: 's', scopes: 'system/*.read' };
const cond = (id: string, text: string) => ({ resourceType: 'Condition', id, subject: { reference: 'Patient/m1' }, code: { text } });

/** A source payer that serves the given files and never fails. */
function fakeRemote(files: Record<string, unknown[]>): RemotePayer {
  return {
    payer,
    ownsUrl: (url) => url.startsWith(payer.fhirBaseUrl),
    mayDownload: (url) => url.startsWith(payer.fhirBaseUrl),
    memberMatch: async () => ({ memberId: 'm1' }),
    patientsByIdentifier: async () => ['m1'],
    kickoff: async () => ({ statusUrl: `${payer.fhirBaseUrl}/status`, route: 'GET Patient/{id}/$export' as const }),
    status: async () => ({ done: true, manifest: { transactionTime: '', request: '', requiresAccessToken: true, output: Object.entries(files).map(([name, rs]) => ({ type: (rs[0] as Resource).resourceType, url: `${payer.fhirBaseUrl}/${name}`, count: rs.length })) } }),
    download: async (url) => Readable.from(files[url.slice(payer.fhirBaseUrl.length + 1)].map((r) => `${JSON.stringify(r)}\n`)),
    cancel: async () => undefined,
  };
}

describe('an exchange that fails while importing its last file', () => {
  it('leaves none of its writes behind: created records vanish with their history, updated ones are back at their previous version, even when written twice', async () => {
    const db = new SqliteDatabase(undefined);
    const store = new ResourceStore(db, new SearchRegistry(RESOURCE_TYPES));
    const tracker = new TaskTracker(store);
    const journal = new ImportJournal(db, store, logger);
    // An earlier exchange left this record at version 1.
    const earlierId = localIdFor(ISSUER, 'Condition', 'c1');
    await store.update('Condition', earlierId, { ...cond(earlierId, 'as first received'), subject: { reference: 'Patient/local' } } as Resource);
    // The disk fails on the last file's batch.
    const realApply = store.applyWrites.bind(store);
    store.applyWrites = async (type, plans, alongside) => {
      if (type === 'Observation') throw new Error('disk full');
      return realApply(type, plans, alongside);
    };
    // Every file is checked on the record checker's worker, started beforehand.
    const checker = new RecordChecker(0);
    await checker.ready();
    const task: Task = { resourceType: 'Task', id: 't1', meta: { tag: [EXCHANGE_TAG] }, status: 'requested', intent: 'order', for: { reference: 'Patient/local' } };
    await tracker.create(task);
    const handler = new ExchangeJobHandler({
      store,
      tracker,
      importer: new Importer(store, journal, 1 << 20),
      checker,
      journal,
      remoteFor: () => fakeRemote({
        a: [cond('c1', 'changed at the source'), cond('c2', 'new')],
        // The source sends c2 again, changed, in a later file: the exchange writes it twice.
        a2: [cond('c2', 'new, then changed')],
        b: [{ resourceType: 'Observation', id: 'o1', status: 'final', code: { text: 'x' }, subject: { reference: 'Patient/m1' } }],
      }),
      payerFor: () => payer,
      workDir: tempDir('work-'),
      pollMinMs: 10,
      pollMaxMs: 10,
      timeoutMs: 60_000,
      maxAttempts: 3,
      limits: { maxFileBytes: 1 << 20, maxExchangeBytes: 1 << 22, idleTimeoutMs: 5000, maxManifestPages: 5, maxManifestFiles: 10, maxLineLength: 1 << 20 },
      blobs: db.blobs,
      requesterDisplay: 'us',
      releaseLock: async () => undefined,
      logger,
    });
    const data: ExchangeJobData = { taskId: 't1', issuer: ISSUER, localPatientId: 'local', memberMatch: { resourceType: 'Parameters' }, exportParams: {}, ownerReference: 'Organization/o', startedAt: Date.now() };
    const ctx: JobContext<ExchangeJobData> = {
      job: { _id: 't1', kind: 'p2p-exchange', state: 'running', data, attempts: 1, leaseUntil: 0, runAfter: 0, createdAt: 0, updatedAt: 0 },
      signal: new AbortController().signal,
      checkpoint: async (patch) => void Object.assign(data, patch),
    };
    await handler.run(ctx);

    const ended = (await store.read('Task', 't1')) as Task;
    expect(ended.status).toBe('failed');
    expect(ended.note?.at(-1)?.text).toMatch(/2 imported resource\(s\) removed/);
    const earlier = await store.read('Condition', earlierId);
    expect(earlier).toMatchObject({ meta: { versionId: '1' }, code: { text: 'as first received' } });
    expect((await store.historyOf('Condition', earlierId, { count: 10, offset: 0 })).total).toBe(1);
    const createdId = localIdFor(ISSUER, 'Condition', 'c2');
    expect(await store.readIfExists('Condition', createdId)).toBeUndefined();
    expect((await store.historyOf('Condition', createdId, { count: 10, offset: 0 })).total).toBe(0);
    expect(await store.count('Provenance', {})).toBe(0);
    expect(checker.checked).toEqual({ onWorker: 3, here: 0 });
    await checker.close();
    await db.close();
  });
});

describe('Retry-After', () => {
  it('reads delta seconds, an HTTP date, and epoch seconds or milliseconds', () => {
    const now = Date.parse('2026-01-01T00:00:00Z');
    expect(parseRetryAfter('120', now)).toBe(120_000);
    expect(parseRetryAfter('Thu, 01 Jan 2026 00:00:30 GMT', now)).toBe(30_000);
    expect(parseRetryAfter(String(now / 1000 + 5), now)).toBe(5000);
    expect(parseRetryAfter(String(now + 7000), now)).toBe(7000);
    expect(parseRetryAfter('soon', now)).toBeUndefined();
  });
});

describe('the job runner contains every fault', () => {
  it('survives a failing query in its loop, and gives up a job that keeps failing, telling its kind', async () => {
    const db = new SqliteDatabase(undefined);
    const unhandled: unknown[] = [];
    const onUnhandled = (e: unknown) => unhandled.push(e);
    process.on('unhandledRejection', onUnhandled);
    const runner = new JobRunner(db, { leaseMs: 1000, pollMs: 20, maxAttempts: 3, logger });
    const jobs = db.collection('jobs');
    const realFind = jobs.find.bind(jobs);
    let failures = 1;
    (jobs as { find: typeof jobs.find }).find = async (...args) => {
      if (failures-- > 0) throw new Error('database unavailable');
      return realFind(...args);
    };
    const givenUp: string[] = [];
    let runs = 0;
    runner.register('flaky', async () => {
      runs++;
      throw new RetryLater(1, 'still failing');
    }, async (job, reason) => void givenUp.push(`${job._id}: ${reason}`));
    let ok = false;
    runner.register('fine', async () => {
      ok = true;
    });
    runner.start();
    await runner.enqueue('flaky', 'f1', {});
    await runner.enqueue('fine', 'g1', {});
    const deadline = Date.now() + 15000;
    while ((givenUp.length === 0 || !ok) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    await runner.stop();
    process.off('unhandledRejection', onUnhandled);
    expect(ok).toBe(true);
    expect(runs).toBe(3);
    expect(givenUp).toEqual([expect.stringMatching(/^f1: gave up after 3 attempts; last error: still failing/)]);
    expect((await runner.get('f1'))?.state).toBe('failed');
    expect(unhandled).toEqual([]);
    await db.close();
  });
});

describe('finding the member when $member-match answers MemberIdentifier only', () => {
  const remoteFinding = (found: Record<string, string[]>) => {
    const asked: string[] = [];
    const remote = { ...fakeRemote({}), patientsByIdentifier: async (token: string) => (asked.push(token), found[token] ?? []) };
    return { remote, asked };
  };
  it('tries system|value, then the bare value, and wants exactly one Patient', async () => {
    const one = remoteFinding({ '99999': ['p1'] });
    await expect(findMember(one.remote, { system: 'http://plan/member', value: '99999' })).resolves.toBe('p1');
    expect(one.asked).toEqual(['http://plan/member|99999', '99999']);
    const exact = remoteFinding({ 'http://plan/member|99999': ['p2'], '99999': ['p1', 'p2'] });
    await expect(findMember(exact.remote, { system: 'http://plan/member', value: '99999' })).resolves.toBe('p2');
    expect(exact.asked).toEqual(['http://plan/member|99999']);
    await expect(findMember(remoteFinding({ '99999': ['p1', 'p2'] }).remote, { value: '99999' })).rejects.toThrow(/finds 2 Patients/);
    await expect(findMember(remoteFinding({}).remote, { value: '99999' })).rejects.toThrow(/finds no Patient/);
  });
});
