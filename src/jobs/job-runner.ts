import { randomUUID } from 'node:crypto';
import { Collection, Database, DuplicateKeyError, StoredDoc } from '../store/types';
import type { Logger } from '../logger';

export type JobState = 'queued' | 'running' | 'completed' | 'failed' | 'cancelled';

export interface JobDoc<D = Record<string, unknown>> extends StoredDoc {
  kind: string;
  state: JobState;
  data: D;
  attempts: number;
  leaseOwner?: string;
  leaseUntil: number;
  runAfter: number;
  createdAt: number;
  updatedAt: number;
  error?: string;
}

export interface JobContext<D> {
  job: JobDoc<D>;
  /** Aborted when the job is cancelled, its lease is lost, or the runner stops. */
  signal: AbortSignal;
  /** Persists progress (merged into `data`), so a restarted job resumes from here. */
  checkpoint(patch: Partial<D>): Promise<void>;
}

/** Waits, or stops early when the signal aborts (a job being stopped or cancelled); leaves no listener behind. */
export function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    if (signal.aborted) return reject(signal.reason);
    const onAbort = () => {
      clearTimeout(t);
      reject(signal.reason);
    };
    const t = setTimeout(() => {
      signal.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    signal.addEventListener('abort', onAbort, { once: true });
  });
}

/** What a handler may throw to end its job as failed (not retried). */
export class JobFailure extends Error {}

/** What a handler may throw to be run again after a delay (a transient fault), from its last checkpoint. */
export class RetryLater extends Error {
  constructor(readonly delayMs: number, message: string) {
    super(message);
  }
}

export type JobHandler<D = any> = (ctx: JobContext<D>) => Promise<void>;

export interface JobRunnerOptions {
  leaseMs: number;
  pollMs?: number;
  concurrency?: number;
  /** Runs of one job (claims, including ones whose process died, and retries) before it is marked failed. */
  maxAttempts?: number;
  logger: Logger;
}

const DEFAULT_MAX_ATTEMPTS = 25;
/** The runAfter of a parked job: it runs only once released. */
const PARKED = Number.MAX_SAFE_INTEGER;

/**
 * A durable job queue in the store. Jobs are claimed with a lease (an atomic conditional update),
 * so several processes sharing one database never run a job twice; a job whose process died is
 * picked up again when its lease runs out, and resumes from its last checkpoint.
 */
export class JobRunner {
  private readonly jobs: Collection<JobDoc>;
  private readonly owner = randomUUID();
  private readonly handlers = new Map<string, JobHandler>();
  private readonly giveUps = new Map<string, (job: JobDoc, reason: string) => Promise<void>>();
  private readonly running = new Map<string, AbortController>();
  private readonly waiters = new Map<string, Set<() => void>>();
  private inTick = false;
  private tickAgain = false;
  private timer?: NodeJS.Timeout;
  private stopped = true;
  private ticking?: Promise<void>;

  constructor(db: Database, private readonly opts: JobRunnerOptions) {
    this.jobs = db.collection<JobDoc>('jobs');
  }

  /** `onGiveUp` is told when a job of this kind is given up after too many attempts, to clean up after it. */
  register<D>(kind: string, handler: JobHandler<D>, onGiveUp?: (job: JobDoc<D>, reason: string) => Promise<void>): void {
    this.handlers.set(kind, handler as JobHandler);
    if (onGiveUp) this.giveUps.set(kind, onGiveUp as (job: JobDoc, reason: string) => Promise<void>);
  }

  /** Enqueues a job under a caller-chosen id; enqueueing the same id twice is harmless. */
  /** Queues a job; a `parked` one waits until `release` (another job decides when it may run). */
  async enqueue<D>(kind: string, id: string, data: D, opts: { parked?: boolean } = {}): Promise<void> {
    const now = Date.now();
    try {
      await this.jobs.insertOne({ _id: id, kind, state: 'queued', data: data as Record<string, unknown>, attempts: 0, leaseUntil: 0, runAfter: opts.parked ? PARKED : 0, createdAt: now, updatedAt: now });
    } catch (err) {
      if (!(err instanceof DuplicateKeyError)) throw err;
    }
    this.poke();
  }

  /** Lets a parked job run (setting the given fields of its data first); a job no longer parked is left as it is. */
  async release(id: string, data: Record<string, unknown> = {}): Promise<void> {
    const set: Record<string, unknown> = { runAfter: 0, updatedAt: Date.now() };
    for (const [k, v] of Object.entries(data)) set[`data.${k}`] = v;
    await this.jobs.updateOne({ _id: id, state: 'queued', runAfter: PARKED }, set);
    this.poke();
  }

  async get<D>(id: string): Promise<JobDoc<D> | null> {
    return (await this.jobs.findOne({ _id: id })) as JobDoc<D> | null;
  }

  async update(id: string, set: Record<string, unknown>): Promise<void> {
    await this.jobs.updateOne({ _id: id }, { ...set, updatedAt: Date.now() });
  }

  /** Marks a job cancelled; a process running it notices at its next heartbeat or checkpoint. */
  async cancel(id: string): Promise<boolean> {
    const matched = await this.jobs.updateOne({ _id: id, state: { $in: ['queued', 'running'] } }, { state: 'cancelled', updatedAt: Date.now() });
    this.running.get(id)?.abort(new JobCancelled());
    return matched > 0;
  }

  async remove(id: string): Promise<void> {
    await this.jobs.deleteMany({ _id: id });
  }

  async find(filter: Record<string, unknown>): Promise<JobDoc[]> {
    return this.jobs.find(filter);
  }

  /** The indexes the runner's queries use: due jobs by state and time, sweeps by kind. */
  async ensureIndexes(): Promise<void> {
    await this.jobs.createIndex(['state', 'runAfter']);
    await this.jobs.createIndex(['kind', 'state']);
  }

  start(): void {
    if (!this.stopped) return;
    this.stopped = false;
    this.schedule(0);
  }

  async stop(): Promise<void> {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
    for (const c of this.running.values()) c.abort(new RunnerStopped());
    await this.ticking;
    // Let handlers observe the abort and unwind before the database closes.
    const deadline = Date.now() + 5000;
    while (this.running.size > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
  }

  /** Looks for work now rather than at the next poll (once the tick under way, if any, is done: ticks never overlap). */
  poke(): void {
    if (this.stopped) return;
    if (this.inTick) this.tickAgain = true;
    else this.schedule(0);
  }

  /** Nothing escapes the loop: a failed tick is logged and the next one comes later. One tick at a time, so the concurrency holds. */
  private schedule(ms: number) {
    if (this.timer) clearTimeout(this.timer);
    this.timer = setTimeout(() => {
      if (this.inTick) {
        this.tickAgain = true;
        return;
      }
      let next = this.opts.pollMs ?? 500;
      this.inTick = true;
      this.tickAgain = false;
      this.ticking = this.tick()
        .catch((err) => {
          next = Math.max(next, 5000);
          this.opts.logger.error('job runner tick failed; backing off', { error: (err as Error).message });
        })
        .finally(() => {
          this.inTick = false;
          if (!this.stopped) this.schedule(this.tickAgain ? 0 : next);
        });
    }, ms);
    this.timer.unref?.();
  }

  private async tick(): Promise<void> {
    const capacity = (this.opts.concurrency ?? 4) - this.running.size;
    if (capacity <= 0 || this.stopped) return;
    const now = Date.now();
    const candidates = await this.jobs.find(
      { state: { $in: ['queued', 'running'] }, leaseUntil: { $lt: now }, runAfter: { $lte: now }, kind: { $in: [...this.handlers.keys()] } },
      { sort: { createdAt: 1 }, limit: capacity },
    );
    for (const job of candidates) {
      if (this.running.has(job._id)) continue;
      if (job.attempts >= (this.opts.maxAttempts ?? DEFAULT_MAX_ATTEMPTS)) {
        // A job that keeps failing, or keeps taking its process down, is given up rather than retried forever.
        await this.giveUp(job, `gave up after ${job.attempts} attempts${job.error ? `; last error: ${job.error}` : ''}`, { leaseUntil: job.leaseUntil, state: { $in: ['queued', 'running'] } });
        continue;
      }
      const claimed = await this.jobs.updateOne(
        { _id: job._id, leaseUntil: job.leaseUntil, state: { $in: ['queued', 'running'] } },
        { state: 'running', leaseOwner: this.owner, leaseUntil: now + this.opts.leaseMs, attempts: job.attempts + 1, updatedAt: now },
      );
      if (claimed === 0) continue; // another process got it
      void this.run({ ...job, state: 'running', leaseOwner: this.owner, leaseUntil: now + this.opts.leaseMs, attempts: job.attempts + 1 }).catch((err) =>
        this.opts.logger.error('job bookkeeping failed', { job: job._id, kind: job.kind, error: (err as Error).message }),
      );
    }
  }

  private async run(job: JobDoc): Promise<void> {
    const handler = this.handlers.get(job.kind) as JobHandler;
    const controller = new AbortController();
    this.running.set(job._id, controller);
    const heartbeat = setInterval(() => void this.heartbeat(job._id, controller), Math.max(200, this.opts.leaseMs / 3));
    const ctx: JobContext<Record<string, unknown>> = {
      job,
      signal: controller.signal,
      checkpoint: async (patch) => {
        Object.assign(job.data, patch);
        const set: Record<string, unknown> = { updatedAt: Date.now() };
        for (const [k, v] of Object.entries(patch)) set[`data.${k}`] = v;
        const matched = await this.jobs.updateOne({ _id: job._id, leaseOwner: this.owner, state: 'running' }, set);
        if (matched === 0) {
          const current = await this.jobs.findOne({ _id: job._id });
          controller.abort(current?.state === 'cancelled' ? new JobCancelled() : new LeaseLost());
          throw controller.signal.reason;
        }
      },
    };
    try {
      await handler(ctx);
      await this.finish(job._id, 'completed');
    } catch (err) {
      const reason = controller.signal.aborted ? controller.signal.reason : err;
      if (reason instanceof RunnerStopped) {
        // A graceful stop hands the job back at once: the next process (or this one restarted) takes it without waiting out the lease.
        await this.jobs.updateOne({ _id: job._id, leaseOwner: this.owner, state: 'running' }, { leaseUntil: 0, updatedAt: Date.now() }).catch(() => undefined);
      } else if (reason instanceof LeaseLost) {
        // Left for whichever process claims it next.
      } else if (reason instanceof JobCancelled) {
        // Already marked cancelled.
      } else if (reason instanceof RetryLater && job.attempts >= (this.opts.maxAttempts ?? DEFAULT_MAX_ATTEMPTS)) {
        await this.giveUp(job, `gave up after ${job.attempts} attempts; last error: ${reason.message}`, { leaseOwner: this.owner, state: 'running' });
      } else if (reason instanceof RetryLater) {
        await this.jobs.updateOne(
          { _id: job._id, leaseOwner: this.owner, state: 'running' },
          { state: 'queued', runAfter: Date.now() + reason.delayMs, leaseUntil: 0, error: reason.message, updatedAt: Date.now() },
        );
        this.schedule(reason.delayMs);
      } else {
        this.opts.logger.warn('job failed', { job: job._id, kind: job.kind, error: (err as Error)?.message });
        await this.finish(job._id, 'failed', String((err as Error)?.message ?? err));
      }
    } finally {
      clearInterval(heartbeat);
      this.running.delete(job._id);
      for (const wake of this.waiters.get(job._id) ?? []) wake();
      this.waiters.delete(job._id);
      // A slot is free: take the next job now rather than at the next poll.
      this.poke();
    }
  }

  /**
   * Resolves when this process finishes running the job (or gives it back), or after `ms`, whichever
   * comes first; a job run by another process is only seen at the timeout. For status requests that
   * may wait a moment rather than send a client away for a whole Retry-After.
   */
  settled(id: string, ms: number): Promise<void> {
    return new Promise<void>((resolve) => {
      const set = this.waiters.get(id) ?? new Set<() => void>();
      const wake = () => {
        clearTimeout(timer);
        set.delete(wake);
        resolve();
      };
      const timer = setTimeout(wake, ms);
      set.add(wake);
      this.waiters.set(id, set);
    });
  }

  /** Marks a job failed for good (if it is still as `where` says) and tells its kind's clean-up. */
  private async giveUp(job: JobDoc, reason: string, where: Record<string, unknown>): Promise<void> {
    const ended = await this.jobs.updateOne({ _id: job._id, ...where }, { state: 'failed', error: reason, leaseUntil: 0, updatedAt: Date.now() });
    this.opts.logger.warn('job given up', { job: job._id, kind: job.kind, attempts: job.attempts });
    const onGiveUp = this.giveUps.get(job.kind);
    if (ended && onGiveUp) await onGiveUp(job, reason).catch((err) => this.opts.logger.error('cleaning up a given-up job failed', { job: job._id, error: (err as Error).message }));
  }

  private async finish(id: string, state: JobState, error?: string) {
    await this.jobs.updateOne({ _id: id, leaseOwner: this.owner, state: 'running' }, { state, error, leaseUntil: 0, updatedAt: Date.now() });
  }

  private async heartbeat(id: string, controller: AbortController) {
    try {
      const matched = await this.jobs.updateOne({ _id: id, leaseOwner: this.owner, state: 'running' }, { leaseUntil: Date.now() + this.opts.leaseMs });
      if (matched === 0 && !controller.signal.aborted) {
        const current = await this.jobs.findOne({ _id: id });
        controller.abort(current?.state === 'cancelled' ? new JobCancelled() : new LeaseLost());
      }
    } catch {
      // a missed heartbeat is retried at the next interval
    }
  }
}

export class JobCancelled extends Error {
  constructor() {
    super('job cancelled');
  }
}
class LeaseLost extends Error {
  constructor() {
    super('job lease lost');
  }
}
class RunnerStopped extends Error {
  constructor() {
    super('job runner stopped');
  }
}
