import type { Database as Db } from 'better-sqlite3';

interface Pending {
  fn: () => unknown;
  resolve: (value: unknown) => void;
  reject: (error: unknown) => void;
}

/**
 * Group commit for the embedded engine: the writes asked for in one turn of the event loop run in
 * one SQLite transaction, each in its own savepoint (a write that fails is undone alone and fails
 * alone), and each caller's promise settles once that transaction is committed. Under concurrent
 * load (many exchanges, many clients) this turns hundreds of commits a second into a few, while a
 * write is still acknowledged only once it is durable.
 */
export class GroupCommit {
  private queue: Pending[] = [];
  private scheduled = false;
  /** Changes with every transaction this process ends: what was read before may have changed. */
  generation = 0;

  /** `committed` is told of each transaction committed. */
  constructor(private readonly db: Db, private readonly committed: () => void = () => undefined) {}

  run<R>(fn: () => R): Promise<R> {
    return new Promise<R>((resolve, reject) => {
      this.queue.push({ fn, resolve: resolve as (v: unknown) => void, reject });
      if (!this.scheduled) {
        this.scheduled = true;
        setImmediate(() => this.flush());
      }
    });
  }

  /** Commits what is queued now (before the database closes). */
  flush(): void {
    this.scheduled = false;
    if (this.queue.length === 0) return;
    const batch = this.queue;
    this.queue = [];
    const results: ({ ok: true; value: unknown } | { ok: false; error: unknown })[] = [];
    this.generation++;
    try {
      this.db
        .transaction(() => {
          for (const item of batch) {
            try {
              // A transaction function called inside another runs as a savepoint.
              results.push({ ok: true, value: this.db.transaction(item.fn)() });
            } catch (error) {
              results.push({ ok: false, error });
            }
          }
        })
        .immediate();
    } catch (error) {
      for (const item of batch) item.reject(error);
      return;
    }
    this.committed();
    batch.forEach((item, i) => {
      const r = results[i];
      if (r.ok) item.resolve(r.value);
      else item.reject(r.error);
    });
  }
}
