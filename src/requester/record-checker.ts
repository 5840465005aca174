import { Readable } from 'node:stream';
import type { Worker } from 'node:worker_threads';
import type { Resource } from 'fhir/r4';
import { Downloaded, LineCheck, sourceErrorOf, validateReceived, writeChecked } from './downloader';
import { preparedLine } from './local-form';
import { IdMapping } from './reference-rewriter';
import { ExchangeFailed, ImportRefused, LimitReached } from './exchange-errors';
import { NdjsonError } from './ndjson';
import { buildSearchIndex, DEFAULT_INDEX_LIMITS, IndexLimitExceeded, IndexLimits } from '../fhir/search/index-values';
import { SearchRegistry } from '../fhir/search/registry';
import { RESOURCE_TYPES } from '../fhir/resource-types';
import { startWorkerModule } from '../worker-thread';

/** What to do with one downloaded file's records. */
export interface CheckJob {
  /** Where the file goes as received, and (output files) where its records go in their local form. */
  file: string;
  prepared?: string;
  label: string;
  /** `output`: records of `expectedType`, put in their local form; `error`: OperationOutcomes, whose diagnostics are kept. */
  kind: 'output' | 'error';
  expectedType: string;
  maxLineLength: number;
  mapping: IdMapping;
  identifierSystem: string;
  /** The search-index limits each record's local form must keep (the store's); set by the checker. */
  indexLimits?: IndexLimits;
}

export interface Checked extends Downloaded {
  /** An error file's diagnostics (the first 100). */
  sourceErrors: string[];
}

let registry: SearchRegistry | undefined;

/**
 * The check of each record of a job: valid FHIR R4 of the file's type, then its local form (output,
 * within the store's search-index limits: the import would refuse it after writing others) or its
 * diagnostics kept (error).
 */
function recordCheck(job: CheckJob, sourceErrors: string[]): LineCheck {
  return (resource, line) => {
    validateReceived(resource, job.expectedType, job.label, line);
    if (job.kind === 'error') {
      if (sourceErrors.length < 100) sourceErrors.push(sourceErrorOf(resource));
      return;
    }
    try {
      buildSearchIndex((registry ??= new SearchRegistry(RESOURCE_TYPES)), resource, job.indexLimits ?? DEFAULT_INDEX_LIMITS);
    } catch (err) {
      if (err instanceof IndexLimitExceeded) throw new ImportRefused(`${job.label}: line ${line}: ${err.message}`);
      throw err;
    }
    return preparedLine(resource as unknown as Resource, job.mapping, job.identifierSystem);
  };
}

/** Errors the worker reports by name, made again here so they are judged as they would be on this thread. */
const KNOWN_ERRORS: Record<string, new (message: string) => Error> = { NdjsonError, ExchangeFailed, ImportRefused, LimitReached };

/** Chunks of a download sent to the worker and not yet taken in by it, at most. */
const IN_FLIGHT = 8;

interface Job {
  /** The worker checking it. */
  thread: Worker;
  inFlight: number;
  wake?: () => void;
  settled?: { ok: true; value: Checked } | { ok: false; error: Error };
  /** Called once the check is settled. */
  finish: () => void;
  /** Stops reading the bytes (the worker refused the file, or stopped). */
  stopInput: () => void;
}

/** A worker with no check to do for this long is stopped: it takes about 80 MB. */
const IDLE_MS = 60_000;
/**
 * Records in large files that make starting the worker worth it. For 10,000 (three files of 3,300)
 * it saved nothing measurable (the import, on this thread, sets the pace), even since its start
 * costs 0.35 s of CPU instead of 1.3 s (the schema's validators loaded, not compiled); for 50,000
 * it saved about 15%.
 */
const WORTH_STARTING = 20_000;

/**
 * Checks downloaded records on a worker thread: parsing, validating against the R4 schema and
 * making each record's local form take a quarter of an exchange's CPU, and on this thread they took
 * turns with the import of the previous file. The bytes still arrive here (with the download's
 * limits); the worker writes the file as received and its local form, and answers what it counted,
 * or the first refusal.
 * The worker costs memory (about 80 MB, most of it its own copy of the schema's validators) and
 * a third of a second of CPU to start, so it runs only while large files come: an exchange starts it (`warmUp`) when
 * its manifest announces enough records in them, it stops after a minute without work, and until
 * it is ready this thread checks. A file announced with fewer than `minRecords` records is always
 * checked here: for a few records the round trips cost more than the work (100 concurrent
 * exchanges of 60 resources ran 10% slower with every file on the worker).
 */
export class RecordChecker {
  private worker?: { thread: Worker; ready: boolean; whenReady: Promise<void> };
  private readonly jobs = new Map<number, Job>();
  private next = 1;
  private idle?: NodeJS.Timeout;
  /** Files checked so far, by where. */
  readonly checked = { onWorker: 0, here: 0 };

  /**
   * `minRecords`: files announced with fewer records are checked here, unless they are larger than
   * `largeBytes` (a file of a few huge lines is as costly as one of many); `indexLimits`: the store's.
   */
  constructor(private readonly minRecords = 1000, private readonly largeBytes = 256 * 1024, private readonly indexLimits: IndexLimits = DEFAULT_INDEX_LIMITS) {}

  /**
   * Starts the worker, if need be, so its validators are loaded by the time large files arrive: given
   * the record counts a manifest announces, only if its large files hold WORTH_STARTING records or
   * more, or one has no count.
   */
  warmUp(announced?: (number | undefined)[]): void {
    if (announced) {
      const large = announced.filter((n) => n === undefined || n >= this.minRecords);
      if (!large.includes(undefined) && large.reduce<number>((sum, n) => sum + (n as number), 0) < WORTH_STARTING) return;
    }
    this.start();
    this.idleLater();
  }

  /** Resolves once the worker is ready to check (or has stopped). */
  async ready(): Promise<void> {
    await this.start().whenReady;
  }

  /** The worker (started if need be), kept from its idle stop. */
  private start(): NonNullable<RecordChecker['worker']> {
    if (this.idle) clearTimeout(this.idle);
    this.idle = undefined;
    if (this.worker) return this.worker;
    const thread = startWorkerModule(__filename, 'record-checker-worker');
    let readied!: () => void;
    const worker = { thread, ready: false, whenReady: new Promise<void>((resolve) => (readied = resolve)) };
    thread.on('message', (m: WorkerMessage) => {
      if (m.op === 'ready') {
        worker.ready = true;
        readied();
      } else this.received(m);
    });
    const stopped = (error: Error) => {
      readied();
      if (this.worker === worker) this.worker = undefined;
      for (const [id, job] of this.jobs) if (job.thread === thread) this.settle(id, job, { ok: false, error });
    };
    thread.on('error', (err) => stopped(err instanceof Error ? err : new Error(String(err))));
    thread.on('exit', (code) => stopped(new Error(`the record checker stopped (exit code ${code})`)));
    this.worker = worker;
    return worker;
  }

  private received(m: Exclude<WorkerMessage, { op: 'ready' }>) {
    const job = this.jobs.get(m.id);
    if (!job) return;
    if (m.op === 'ack') {
      job.inFlight--;
      job.wake?.();
    } else if (m.op === 'done') this.settle(m.id, job, { ok: true, value: m.value });
    else {
      const Known = KNOWN_ERRORS[m.name];
      this.settle(m.id, job, { ok: false, error: Known ? new Known(m.message) : new Error(m.message) });
    }
  }

  private settle(id: number, job: Job, outcome: NonNullable<Job['settled']>) {
    this.jobs.delete(id);
    job.settled = outcome;
    job.wake?.();
    if (!outcome.ok) job.stopInput();
    job.finish();
  }

  /**
   * Checks and writes one file's records as its bytes arrive (`announced`: the count the manifest
   * gives, if any). A fault of the bytes (a limit, the network) is thrown as it is; a refused record
   * as the worker judged it. Either way the files are closed when this settles.
   */
  async check(bytes: Readable, given: CheckJob, announced?: number): Promise<Checked> {
    const job = { ...given, indexLimits: this.indexLimits };
    if (this.worker?.ready && !(announced !== undefined && announced < this.minRecords)) return this.onWorker(bytes, job);
    // A file announced small, or none ready: checked here only if it is small in bytes. Its first
    // `largeBytes` are held until it ends (checked here) or goes over (checked on the worker,
    // started for it): a record of megabytes never holds this thread.
    const it = (bytes as AsyncIterable<Buffer>)[Symbol.asyncIterator]();
    const head: Buffer[] = [];
    let size = 0;
    let ended = false;
    try {
      while (size <= this.largeBytes) {
        const r = await it.next();
        if (r.done) {
          ended = true;
          break;
        }
        head.push(r.value);
        size += r.value.length;
      }
    } catch (err) {
      bytes.destroy();
      throw err;
    }
    const rest = Readable.from(
      (async function* () {
        yield* head;
        if (!ended) for (let r = await it.next(); !r.done; r = await it.next()) yield r.value;
      })(),
      { objectMode: false },
    );
    rest.once('close', () => bytes.destroy());
    if (ended) return this.checkHere(rest, job);
    await this.ready();
    if (!this.worker?.ready) return this.checkHere(rest, job);
    return this.onWorker(rest, job);
  }

  /** Checks one file on the worker (ready), the bytes passed on as they arrive. */
  private async onWorker(bytes: Readable, job: CheckJob): Promise<Checked> {
    const worker = this.start().thread;
    this.checked.onWorker++;
    const id = this.next++;
    let finish!: () => void;
    const done = new Promise<void>((resolve) => (finish = resolve));
    const state: Job = { thread: worker, inFlight: 0, finish, stopInput: () => bytes.destroy() };
    this.jobs.set(id, state);
    worker.ref(); // a check under way keeps the process up
    worker.postMessage({ op: 'begin', id, job });
    let fault: unknown;
    try {
      for await (const chunk of bytes as AsyncIterable<Buffer>) {
        while (state.inFlight >= IN_FLIGHT && !state.settled) await new Promise<void>((r) => (state.wake = r));
        if (state.settled) break; // refused: nothing more is read
        state.inFlight++;
        worker.postMessage({ op: 'data', id, chunk });
      }
      worker.postMessage({ op: 'end', id });
    } catch (err) {
      // Reading stops on a fault of the bytes, or because the worker settled the check first.
      if (!state.settled) {
        fault = err;
        worker.postMessage({ op: 'abort', id });
      }
    } finally {
      bytes.destroy();
    }
    await done;
    this.idleLater();
    if (fault) throw fault;
    const outcome = state.settled as NonNullable<Job['settled']>;
    if (!outcome.ok) throw outcome.error;
    return outcome.value;
  }

  private checkHere(bytes: Readable, job: CheckJob): Promise<Checked> {
    this.checked.here++;
    return checkRecords(bytes, job);
  }

  /** No check under way: the worker stops unless another comes within IDLE_MS. */
  private idleLater() {
    if (this.jobs.size > 0 || !this.worker) return;
    this.worker.thread.unref();
    if (this.idle) clearTimeout(this.idle);
    this.idle = setTimeout(() => void this.close(), IDLE_MS);
    this.idle.unref();
  }

  /** Stops the worker; a check under way fails, and a check from now on does not go to it. */
  async close(): Promise<void> {
    if (this.idle) clearTimeout(this.idle);
    this.idle = undefined;
    const worker = this.worker;
    this.worker = undefined;
    await worker?.thread.terminate();
  }
}

/** Checks and writes one file's records on the calling thread (the worker's, or this one for a small file). */
export async function checkRecords(bytes: Readable, job: CheckJob): Promise<Checked> {
  const sourceErrors: string[] = [];
  const got = await writeChecked(bytes, job.file, { label: job.label, expectedType: job.expectedType, maxLineLength: job.maxLineLength, check: recordCheck(job, sourceErrors), derived: job.prepared });
  return { ...got, sourceErrors };
}

export type WorkerMessage = { op: 'ready' } | { id: number; op: 'ack' } | { id: number; op: 'done'; value: Checked } | { id: number; op: 'error'; name: string; message: string };
