import { randomUUID } from 'node:crypto';
import { Collection, Database, StoredDoc } from '../store/types';
import { FhirError } from '../fhir/outcome';
import type { Logger } from '../logger';

interface FailureDoc extends StoredDoc {
  clientId: string;
  at: number;
  /** How many failed matches this record stands for (one, or a bulk match's count). */
  n?: number;
}

export interface MatchThrottleOptions {
  /** Failed matches a client may have within the window before it must wait. */
  maxFailures: number;
  windowMs: number;
  /** Where the failures are counted (each throttle its own). */
  collection?: string;
}

/**
 * HRex: servers SHALL prevent brute-force matching. Failed matches are recorded per client in the
 * store (so every process sharing it counts them together); past `maxFailures` within the window,
 * the client gets 429 with Retry-After until its oldest failure leaves the window.
 */
export class MatchThrottle {
  private readonly failures: Collection<FailureDoc>;
  private indexed?: Promise<void>;

  constructor(db: Database, private readonly opts: MatchThrottleOptions, private readonly logger: Logger, private readonly now: () => number = Date.now) {
    this.failures = db.collection<FailureDoc>(opts.collection ?? 'member_match_failures');
  }

  private async ready(): Promise<Collection<FailureDoc>> {
    this.indexed ??= this.failures.createIndex(['clientId', 'at']);
    await this.indexed;
    return this.failures;
  }

  /** Failed matches the client may still have now (0: it must wait), and when its oldest counted one leaves the window. */
  async remaining(clientId: string): Promise<{ left: number; retryAfterSeconds: number }> {
    const failures = await this.ready();
    const since = this.now() - this.opts.windowMs;
    const recent = await failures.find({ clientId, at: { $gt: since } }, { sort: { at: 1 } });
    const used = recent.reduce((sum, f) => sum + (f.n ?? 1), 0);
    const oldest = recent[0]?.at ?? this.now();
    return { left: Math.max(0, this.opts.maxFailures - used), retryAfterSeconds: Math.max(1, Math.ceil((oldest + this.opts.windowMs - this.now()) / 1000)) };
  }

  /** Throws 429 when the client has used up its failed matches for now. */
  async check(clientId: string): Promise<void> {
    const { left, retryAfterSeconds } = await this.remaining(clientId);
    if (left > 0) return;
    this.logger.warn('member-match throttled', { client: clientId, retryAfterSeconds });
    throw new FhirError(429, 'throttled', `Too many failed matches; try again in ${retryAfterSeconds} s`, undefined, { 'Retry-After': String(retryAfterSeconds) });
  }

  async failed(clientId: string, count = 1): Promise<void> {
    if (count <= 0) return;
    const failures = await this.ready();
    await failures.insertOne({ _id: randomUUID(), clientId, at: this.now(), ...(count > 1 ? { n: count } : {}) });
    await failures.deleteMany({ clientId, at: { $lte: this.now() - this.opts.windowMs } });
  }
}
