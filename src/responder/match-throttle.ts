import { randomUUID } from 'node:crypto';
import { Collection, Database, StoredDoc } from '../store/types';
import { FhirError } from '../fhir/outcome';
import type { Logger } from '../logger';

interface FailureDoc extends StoredDoc {
  clientId: string;
  at: number;
}

export interface MatchThrottleOptions {
  /** Failed matches a client may have within the window before it must wait. */
  maxFailures: number;
  windowMs: number;
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
    this.failures = db.collection<FailureDoc>('member_match_failures');
  }

  private async ready(): Promise<Collection<FailureDoc>> {
    this.indexed ??= this.failures.createIndex(['clientId', 'at']);
    await this.indexed;
    return this.failures;
  }

  /** Throws 429 when the client has used up its failed matches for now. */
  async check(clientId: string): Promise<void> {
    const failures = await this.ready();
    const since = this.now() - this.opts.windowMs;
    const recent = await failures.find({ clientId, at: { $gt: since } }, { sort: { at: -1 }, limit: this.opts.maxFailures });
    if (recent.length < this.opts.maxFailures) return;
    const oldest = recent[recent.length - 1].at;
    const retryAfter = Math.max(1, Math.ceil((oldest + this.opts.windowMs - this.now()) / 1000));
    this.logger.warn('member-match throttled', { client: clientId, failures: recent.length, retryAfterSeconds: retryAfter });
    throw new FhirError(429, 'throttled', `Too many failed matches; try again in ${retryAfter} s`, undefined, { 'Retry-After': String(retryAfter) });
  }

  async failed(clientId: string): Promise<void> {
    const failures = await this.ready();
    await failures.insertOne({ _id: randomUUID(), clientId, at: this.now() });
    await failures.deleteMany({ clientId, at: { $lte: this.now() - this.opts.windowMs } });
  }
}
