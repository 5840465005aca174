import { randomUUID } from 'node:crypto';
import { Collection, Database, StoredDoc } from '../store/types';
import { FhirError } from '../fhir/outcome';
import type { Logger } from '../logger';

interface FailureDoc extends StoredDoc {
  clientId: string;
  at: number;
  /** How many failed matches this record stands for (one, or a bulk match's count). */
  n?: number;
  /** A reservation whose matches are still being tried (counted as failed until settled). */
  pending?: boolean;
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
    const { settled, pending, retryAfterSeconds } = await this.usage(clientId);
    return { left: Math.max(0, this.opts.maxFailures - settled - pending), retryAfterSeconds };
  }

  /** Failed matches counted within the window, and those reserved by matches under way; when the oldest leaves the window. */
  private async usage(clientId: string): Promise<{ settled: number; pending: number; retryAfterSeconds: number }> {
    const failures = await this.ready();
    const since = this.now() - this.opts.windowMs;
    const recent = await failures.find({ clientId, at: { $gt: since } }, { sort: { at: 1 } });
    let settled = 0;
    let pending = 0;
    for (const f of recent) {
      if (f.pending) pending += f.n ?? 1;
      else settled += f.n ?? 1;
    }
    const oldest = recent[0]?.at ?? this.now();
    return { settled, pending, retryAfterSeconds: Math.max(1, Math.ceil((oldest + this.opts.windowMs - this.now()) / 1000)) };
  }

  /** Throws 429 when the client has used up its failed matches for now. */
  async check(clientId: string): Promise<void> {
    const { left, retryAfterSeconds } = await this.remaining(clientId);
    if (left > 0) return;
    throw this.throttled(clientId, retryAfterSeconds);
  }

  /** The 429 a client past its allowance gets, logged with the client (never member data). */
  throttled(clientId: string, retryAfterSeconds: number): FhirError {
    this.logger.warn('member-match throttled', { client: clientId, retryAfterSeconds });
    return new FhirError(429, 'throttled', `Too many failed matches; try again in ${retryAfterSeconds} s`, undefined, { 'Retry-After': String(retryAfterSeconds) });
  }

  /**
   * Takes up to `want` failed matches of the client's allowance before the matches are tried, and
   * answers how many it got (0: none is left). A reservation counts as used until `settle` says how
   * much of it was (a process that dies keeps it counted). It is written, then the whole count read
   * back and the reservation cut to what fits, so concurrent reservations, in this process or
   * another sharing the store, never together exceed the allowance. When only reservations still
   * under way stand in the way (an honest client's burst of matches, most of which succeed and give
   * theirs back), it waits for them a little and tries again.
   */
  async reserve(clientId: string, want: number): Promise<Reservation> {
    const failures = await this.ready();
    const giveUpAt = Date.now() + RESERVE_PATIENCE_MS;
    for (let wait = 5; ; wait = Math.min(wait * 2, 200)) {
      const _id = randomUUID();
      await failures.insertOne({ _id, clientId, at: this.now(), n: want, pending: true });
      const { settled, pending, retryAfterSeconds } = await this.usage(clientId);
      // The count includes this reservation: it is cut by however much the total is over.
      const granted = Math.max(0, want - Math.max(0, settled + pending - this.opts.maxFailures));
      if (granted > 0) {
        if (granted < want) await failures.updateOne({ _id }, { n: granted });
        return { granted, retryAfterSeconds, settle: (used: number) => this.settle(clientId, _id, Math.min(used, granted)) };
      }
      await failures.deleteMany({ _id });
      if (settled >= this.opts.maxFailures || Date.now() >= giveUpAt) return { granted: 0, retryAfterSeconds, settle: async () => undefined };
      await new Promise((r) => setTimeout(r, wait * (0.5 + Math.random())));
    }
  }

  private async settle(clientId: string, _id: string, used: number): Promise<void> {
    const failures = await this.ready();
    if (used > 0) await failures.updateOne({ _id }, { n: used, pending: false });
    else await failures.deleteMany({ _id });
    await failures.deleteMany({ clientId, at: { $lte: this.now() - this.opts.windowMs } });
  }
}

/** How long a reservation waits for matches under way to settle before it is refused. */
const RESERVE_PATIENCE_MS = 2000;

/** Part of a client's allowance of failed matches, held while matches are tried. */
export interface Reservation {
  granted: number;
  /** When the client may try again, if nothing was granted. */
  retryAfterSeconds: number;
  /** How many of the reservation were used (failed matches); the rest goes back. */
  settle(used: number): Promise<void>;
}
