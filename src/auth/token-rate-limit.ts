import { isIPv6 } from 'node:net';

export interface RefusalLimits {
  /** Refused token requests one address may make within a window; past it, 429 until the window ends. */
  maxRefusals: number;
  windowMs: number;
  /** Addresses tracked at once; past it, new ones share one bucket (memory stays bounded under a flood of addresses). */
  maxAddresses?: number;
}

interface Bucket {
  /** When this address's window ends (it starts at its first refusal). */
  until: number;
  refusals: number;
  /** Requests answered 429 in this window. */
  blocked: number;
}

/** The bucket of addresses seen while the table is full. */
const OVERFLOW = '*';

/**
 * The key an address is counted under: an IPv4 address (also in its IPv4-mapped IPv6 form) as it
 * is, an IPv6 address by its /64 (one host usually holds a whole /64, so counting single addresses
 * would not bound it).
 */
export function addressKey(address: string | undefined): string {
  if (!address) return 'unknown';
  const mapped = address.match(/^::ffff:(\d+\.\d+\.\d+\.\d+)$/i);
  if (mapped) return mapped[1];
  if (!isIPv6(address)) return address;
  const [head, tail = ''] = address.split('::');
  const left = head ? head.split(':') : [];
  const right = address.includes('::') ? (tail ? tail.split(':') : []) : [];
  const groups = address.includes('::') ? [...left, ...Array(Math.max(0, 8 - left.length - right.length)).fill('0'), ...right] : left;
  return `${groups.slice(0, 4).map((g) => (parseInt(g, 16) || 0).toString(16)).join(':')}::/64`;
}

/**
 * A fixed-window count of refused token requests per remote address, in this process's memory:
 * an address with `maxRefusals` refusals in its window (which starts at its first request) is
 * answered 429 with `Retry-After` until the window ends, before any credential is looked at, and
 * nothing is written for those requests but one summary (the caller is told which is the first).
 * A request takes a refusal from the allowance before it is tried and gives it back if it
 * succeeds, so requests sent all at once never get more than `maxRefusals` tried. The table holds
 * at most `maxAddresses` entries; expired ones are swept when it fills, and while it is still full
 * new addresses share one bucket.
 */
export class TokenRefusalLimiter {
  private readonly buckets = new Map<string, Bucket>();
  private readonly maxAddresses: number;

  constructor(readonly limits: RefusalLimits, private readonly now: () => number = Date.now) {
    this.maxAddresses = limits.maxAddresses ?? 10_000;
  }

  /**
   * Takes one refusal of `address`'s allowance for a request about to be tried: its key (to give it
   * back on success), or, when the allowance is spent, the seconds until the window ends and whether
   * this is the first request so refused in the window.
   */
  take(address: string | undefined): { key: string } | { blocked: { retryAfterSeconds: number; first: boolean; refusals: number } } {
    const key = this.keyOf(address);
    const bucket = this.live(key);
    if (!bucket) {
      this.buckets.set(key, { until: this.now() + this.limits.windowMs, refusals: 1, blocked: 0 });
      return { key };
    }
    if (bucket.refusals < this.limits.maxRefusals) {
      bucket.refusals++;
      return { key };
    }
    bucket.blocked++;
    return { blocked: { retryAfterSeconds: Math.max(1, Math.ceil((bucket.until - this.now()) / 1000)), first: bucket.blocked === 1, refusals: bucket.refusals } };
  }

  /** Gives back what `take` took: the request succeeded. */
  giveBack(key: string): void {
    const bucket = this.live(key);
    if (bucket && bucket.refusals > 0) bucket.refusals--;
  }

  /** Addresses tracked (for tests and metrics). */
  get size(): number {
    return this.buckets.size;
  }

  private live(key: string): Bucket | undefined {
    const bucket = this.buckets.get(key);
    if (bucket && bucket.until <= this.now()) {
      this.buckets.delete(key);
      return undefined;
    }
    return bucket;
  }

  private keyOf(address: string | undefined): string {
    const key = addressKey(address);
    if (this.buckets.has(key)) return key;
    if (this.buckets.size >= this.maxAddresses) {
      // Windows are of one length and a bucket is inserted when its window starts: the oldest come first.
      const now = this.now();
      for (const [k, b] of this.buckets) {
        if (b.until > now) break;
        this.buckets.delete(k);
      }
    }
    // While the table is full, an address it does not hold shares one bucket.
    return this.buckets.size < this.maxAddresses ? key : OVERFLOW;
  }
}
