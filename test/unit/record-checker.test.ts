import fs from 'node:fs';
import path from 'node:path';
import { Readable } from 'node:stream';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { CheckJob, RecordChecker } from '../../src/requester/record-checker';
import { limited } from '../../src/requester/downloader';
import { ExchangeFailed, ImportRefused, LimitReached } from '../../src/requester/exchange-errors';
import { NdjsonError } from '../../src/requester/ndjson';
import { classify } from '../../src/requester/exchange-errors';
import { parsePreparedLine } from '../../src/requester/local-form';
import { contentHash } from '../../src/store/resource-store';
import { tempDir } from '../helpers/server';

const mapping = { sourcePatientId: 'm1', localPatientId: 'local', sourceBase: 'https://source.example.com/fhir', issuer: 'https://source.example.com' };
const cond = (id: string, patient = 'Patient/m1') => ({ resourceType: 'Condition', id, subject: { reference: patient }, code: { text: `condition ${id}` } });
const ndjson = (records: unknown[]) => records.map((r) => (typeof r === 'string' ? r : JSON.stringify(r))).join('\n') + '\n';
/** The bytes in small chunks, as a network would deliver them. */
const bytes = (text: string, size = 100) => Readable.from(Array.from({ length: Math.ceil(text.length / size) }, (_, i) => Buffer.from(text.slice(i * size, (i + 1) * size))));
const limits = { maxFileBytes: 1 << 20, remainingBytes: 1 << 22, idleTimeoutMs: 5000, deadline: Date.now() + 60_000, maxLineLength: 1 << 16 };

describe('the record checker', () => {
  const onWorker = new RecordChecker(0);
  const here = new RecordChecker(Infinity);
  const dir = tempDir('checker-');
  let n = 0;
  const job = (kind: 'output' | 'error' = 'output', expectedType = 'Condition'): CheckJob => {
    n++;
    return { file: path.join(dir, `${n}.ndjson`), prepared: kind === 'output' ? path.join(dir, `${n}.local`) : undefined, label: 'the Condition file', kind, expectedType, maxLineLength: 1 << 16, mapping, identifierSystem: 'https://source.example.com/resource-id' };
  };
  afterAll(() => onWorker.close());
  // Until its worker is ready, a checker checks on this thread.
  beforeEach(() => onWorker.ready());

  it('gives the same files, counts and hash on its worker as on this thread', async () => {
    const text = ndjson(Array.from({ length: 300 }, (_, i) => cond(`c${i}`)));
    const [a, b] = [job(), job()];
    const viaWorker = await onWorker.check(limited(bytes(text), 'the Condition file', limits), a, 300);
    const viaHere = await here.check(limited(bytes(text), 'the Condition file', limits), b, 300);
    expect(onWorker.checked).toEqual({ onWorker: 1, here: 0 });
    expect(here.checked).toEqual({ onWorker: 0, here: 1 });
    expect(viaWorker).toEqual(viaHere);
    expect(viaWorker).toMatchObject({ count: 300, size: Buffer.byteLength(text), sourceErrors: [] });
    expect(fs.readFileSync(a.file, 'utf8')).toBe(text);
    expect(fs.readFileSync(a.prepared as string, 'utf8')).toBe(fs.readFileSync(b.prepared as string, 'utf8'));
    const first = fs.readFileSync(a.prepared as string, 'utf8').split('\n')[0];
    expect(first).toMatch(/^Condition\/p2p-[0-9a-f]+\t/);
    const { reference, hash, resource } = parsePreparedLine(first);
    expect(reference).toBe(`Condition/${resource.id}`);
    expect((resource as { subject?: unknown }).subject).toEqual({ reference: 'Patient/local' });
    // The hash made on the worker is the store's: an unchanged record is recognised as such.
    expect(hash).toBe(contentHash(resource));
    // A line prepared before hashes were added still reads.
    const old = `${reference}\t${JSON.stringify(resource)}`;
    expect(parsePreparedLine(old)).toEqual({ reference, resource });
  });

  it.each([
    ['a record about a patient who is not the member', [cond('c1'), cond('c2', 'https://requester.example.com/fhir/Patient/victim')], ImportRefused, /refers to a patient other than the member/],
    ['a line that is not JSON', [cond('c1'), '{"resourceType": "Condition", "id": "c2"'], NdjsonError, /line 2 is not valid JSON/],
    ['a record that is not valid R4', [cond('c1'), { ...cond('c2'), onsetDateTime: 'yesterday' }], ExchangeFailed, /line 2 is not valid FHIR R4/],
  ])('refuses %s on its worker as it would here, by the same kind of error', async (_what, records, Kind, message) => {
    const text = ndjson(records);
    const viaWorker = onWorker.check(limited(bytes(text), 'the Condition file', limits), job());
    await expect(viaWorker).rejects.toBeInstanceOf(Kind);
    await expect(viaWorker).rejects.toThrow(message);
    const viaHere = here.check(limited(bytes(text), 'the Condition file', limits), job());
    await expect(viaHere).rejects.toBeInstanceOf(Kind);
    expect(classify(await viaWorker.catch((e) => e))).toEqual(classify(await viaHere.catch((e) => e)));
  });

  it('stops at a limit the bytes reach, and checks the next file as usual', async () => {
    const text = ndjson(Array.from({ length: 50 }, (_, i) => cond(`c${i}`)));
    const tooBig = onWorker.check(limited(bytes(text), 'the Condition file', { ...limits, maxFileBytes: 1000 }), job());
    await expect(tooBig).rejects.toBeInstanceOf(LimitReached);
    await expect(tooBig).rejects.toThrow(/larger than the limit of 1000 bytes/);
    await expect(onWorker.check(limited(bytes(text), 'the Condition file', limits), job())).resolves.toMatchObject({ count: 50 });
  });

  it('fails a check under way if its worker stops; a new worker serves the next', async () => {
    const endless = new Readable({ read() {} });
    endless.push(ndjson([cond('c1')]));
    const underWay = onWorker.check(limited(endless, 'the Condition file', limits), job());
    await new Promise((r) => setTimeout(r, 200));
    await onWorker.close();
    await expect(underWay).rejects.toThrow(/record checker stopped/);
    expect(classify(await underWay.catch((e) => e))).toMatchObject({ kind: 'failed', reason: 'internal error' });
    await onWorker.ready();
    const before = onWorker.checked.onWorker;
    await expect(onWorker.check(limited(bytes(ndjson([cond('c1')])), 'the Condition file', limits), job())).resolves.toMatchObject({ count: 1 });
    expect(onWorker.checked.onWorker).toBe(before + 1);
  });

  it('sends no check to a worker that is stopping (its idle stop, or the server closing)', async () => {
    const stopping = onWorker.close();
    const next = onWorker.check(limited(bytes(ndjson([cond('c1')])), 'the Condition file', limits), job());
    await stopping;
    await expect(next).resolves.toMatchObject({ count: 1 });
  });

  it('checks on this thread while its worker compiles the schema, and on the worker once it is ready', async () => {
    const fresh = new RecordChecker(0);
    try {
      fresh.warmUp([25_000]);
      const text = ndjson([cond('c1'), cond('c2')]);
      await expect(fresh.check(limited(bytes(text), 'the Condition file', limits), job(), 5000)).resolves.toMatchObject({ count: 2 });
      expect(fresh.checked).toEqual({ onWorker: 0, here: 1 });
      await fresh.ready();
      await expect(fresh.check(limited(bytes(text), 'the Condition file', limits), job(), 5000)).resolves.toMatchObject({ count: 2 });
      expect(fresh.checked).toEqual({ onWorker: 1, here: 1 });
    } finally {
      await fresh.close();
    }
  });

  it('starts no worker for an exchange whose files are small, or hold too few records in all', async () => {
    const small = new RecordChecker(1000);
    small.warmUp([10, 999]);
    small.warmUp([3300, 3300, 3300]);
    await small.check(limited(bytes(ndjson([cond('c1')])), 'the Condition file', limits), job(), 1);
    await small.check(limited(bytes(ndjson([cond('c2')])), 'the Condition file', limits), job(), 3300);
    expect(small.checked).toEqual({ onWorker: 0, here: 2 });
    expect((small as unknown as { worker?: unknown }).worker).toBeUndefined();
  });

  it("keeps an error file's diagnostics", async () => {
    const outcome = (d: string) => ({ resourceType: 'OperationOutcome', issue: [{ severity: 'error', code: 'processing', diagnostics: d }] });
    const got = await onWorker.check(limited(bytes(ndjson([outcome('first'), outcome('second')])), 'the error file', limits), job('error', 'OperationOutcome'));
    expect(got).toMatchObject({ count: 2, sourceErrors: ['first', 'second'] });
  });

  describe('records of megabytes', () => {
    const big = { maxFileBytes: 64 << 20, remainingBytes: 64 << 20, idleTimeoutMs: 5000, deadline: Date.now() + 120_000, maxLineLength: 6 << 20 };
    const bigJob = (): CheckJob => ({ ...job(), maxLineLength: 6 << 20 });
    const huge = (id: string) => ({ ...cond(id), note: [{ text: 'n'.repeat(5 << 20) }] });

    it('checks a file of 5 MB lines on the worker although the manifest announced it small, and this thread keeps its turns short', async () => {
      const checker = new RecordChecker(1000);
      try {
        const text = ndjson([cond('c1'), huge('c2'), huge('c3')]);
        const delay = monitorEventLoopDelay({ resolution: 10 });
        delay.enable();
        const started = process.hrtime.bigint();
        const j = bigJob();
        const got = await checker.check(limited(bytes(text, 64 * 1024), 'the Condition file', big), j, 3);
        const took = Number(process.hrtime.bigint() - started) / 1e6;
        delay.disable();
        expect(got).toMatchObject({ count: 3, size: Buffer.byteLength(text) });
        expect(checker.checked).toEqual({ onWorker: 1, here: 0 });
        // Parsing, validating and rewriting 10 MB of records took place on the worker, not in one turn here.
        expect(delay.max / 1e6).toBeLessThan(took / 2);
        const lines = fs.readFileSync(j.prepared as string, 'utf8').trim().split('\n');
        expect(lines).toHaveLength(3);
        expect((parsePreparedLine(lines[2]).resource as { note?: { text: string }[] }).note?.[0].text).toHaveLength(5 << 20);
      } finally {
        await checker.close();
      }
    });

    it('keeps checking a small file here, and the same file of a few large lines (announced small or not) on the worker', async () => {
      const checker = new RecordChecker(1000, 256 * 1024);
      try {
        await checker.check(limited(bytes(ndjson([cond('c1'), cond('c2')])), 'the Condition file', big), bigJob(), 2);
        expect(checker.checked).toEqual({ onWorker: 0, here: 1 });
        await checker.check(limited(bytes(ndjson([cond('c1'), { ...cond('c2'), note: [{ text: 'n'.repeat(300 * 1024) }] }]), 64 * 1024), 'the Condition file', big), bigJob());
        expect(checker.checked).toEqual({ onWorker: 1, here: 1 });
      } finally {
        await checker.close();
      }
    });

    it('refuses a record over the search-index limits, on the worker as here, before anything is imported', async () => {
      const coded = { ...cond('c2'), code: { coding: Array.from({ length: 12_000 }, (_, i) => ({ system: 'http://loinc.org', code: `${i}-0` })) } };
      const text = ndjson([cond('c1'), coded]);
      const viaWorker = onWorker.check(limited(bytes(text, 64 * 1024), 'the Condition file', big), bigJob());
      await expect(viaWorker).rejects.toBeInstanceOf(ImportRefused);
      await expect(viaWorker).rejects.toThrow(/line 2: Condition has more than 10000 values for the search parameter 'code'/);
      const hereOnly = new RecordChecker(Infinity, Infinity);
      await expect(hereOnly.check(limited(bytes(text, 64 * 1024), 'the Condition file', big), bigJob())).rejects.toThrow(/more than 10000 values for the search parameter 'code'/);
      expect(hereOnly.checked).toEqual({ onWorker: 0, here: 1 });
    });
  });
});
