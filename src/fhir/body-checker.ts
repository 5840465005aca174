import type { Worker } from 'node:worker_threads';
import { FhirError } from './outcome';
import type { IndexLimits } from './search/index-values';
import { startWorkerModule } from '../worker-thread';

/** A worker with nothing to check for this long is stopped. */
const IDLE_MS = 60_000;

/** What the worker answers for one body. */
export type BodyVerdict =
  | { id: number; ok: true }
  | { id: number; ok: false; kind: 'parse'; message: string }
  | { id: number; ok: false; kind: 'fhir'; status: number; code: string; message: string; expression?: string[] };

/** The error body-parser gives for JSON it cannot parse (the error handler's 400 "not valid JSON"). */
export function parseFailed(message: string): Error {
  return Object.assign(new Error(message), { type: 'entity.parse.failed', status: 400, statusCode: 400, expose: true });
}

interface Pending {
  resolve: () => void;
  reject: (err: Error) => void;
}

/**
 * Checks large request bodies on a worker thread before this thread parses them: that the text is
 * JSON, reaches no prototype, nests no deeper than the limit, and (a resource, or a Bundle's
 * entries) stays within the search-index limits. Those checks cost this thread seconds for a
 * hostile 4 MB body (a Patient of 200,000 names) and every other request waited; refused on the
 * worker, such a body costs this thread nothing. One worker (2 cores), started on the first large
 * body and stopped after a minute without one; bodies queue on it in order.
 */
export class BodyChecker {
  private worker?: Worker;
  private readonly pending = new Map<number, Pending>();
  private next = 1;
  private idle?: NodeJS.Timeout;
  /** Bodies checked on the worker so far. */
  checked = 0;

  constructor(private readonly limits: IndexLimits) {}

  /** Resolves when `bytes` (UTF-8 JSON) passed the checks; rejects with the error to answer. The bytes are handed to the worker. */
  check(bytes: Buffer): Promise<void> {
    const worker = this.start();
    const id = this.next++;
    this.checked++;
    // A copy the worker owns (the request's buffer may be a slice of a shared pool).
    const copy = new Uint8Array(bytes.byteLength);
    copy.set(bytes);
    return new Promise<void>((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      worker.ref();
      worker.postMessage({ id, bytes: copy, limits: this.limits }, [copy.buffer]);
    });
  }

  private start(): Worker {
    if (this.idle) clearTimeout(this.idle);
    this.idle = undefined;
    if (this.worker) return this.worker;
    const worker = startWorkerModule(__filename, 'body-checker-worker');
    worker.on('message', (m: BodyVerdict) => this.settle(m));
    const stopped = (error: Error) => {
      if (this.worker === worker) this.worker = undefined;
      const waiting = [...this.pending.values()];
      this.pending.clear();
      for (const p of waiting) p.reject(error);
    };
    worker.on('error', (err) => stopped(err instanceof Error ? err : new Error(String(err))));
    worker.on('exit', (code) => stopped(new Error(`the body checker stopped (exit code ${code})`)));
    this.worker = worker;
    return worker;
  }

  private settle(m: BodyVerdict) {
    const p = this.pending.get(m.id);
    if (!p) return;
    this.pending.delete(m.id);
    if (m.ok) p.resolve();
    else if (m.kind === 'parse') p.reject(parseFailed(m.message));
    else p.reject(new FhirError(m.status, m.code as never, m.message, m.expression));
    if (this.pending.size === 0 && this.worker) {
      this.worker.unref();
      this.idle = setTimeout(() => void this.close(), IDLE_MS);
      this.idle.unref();
    }
  }

  async close(): Promise<void> {
    if (this.idle) clearTimeout(this.idle);
    this.idle = undefined;
    const worker = this.worker;
    this.worker = undefined;
    await worker?.terminate();
  }
}
