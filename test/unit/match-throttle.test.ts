import { SqliteDatabase } from '../../src/store/sqlite/sqlite-database';
import { MatchThrottle } from '../../src/responder/match-throttle';
import { createLogger } from '../../src/logger';

describe("a client's allowance of failed matches", () => {
  let db: SqliteDatabase;
  beforeEach(() => {
    db = new SqliteDatabase(undefined);
  });
  afterEach(async () => {
    await db.close();
  });

  it('is never exceeded by reservations made at once, and what a reservation did not use goes back', async () => {
    const throttle = new MatchThrottle(db, { maxFailures: 5, windowMs: 60_000 }, createLogger('error', true));
    const slots = await Promise.all(Array.from({ length: 20 }, () => throttle.reserve('prober', 1)));
    const granted = slots.reduce((n, s) => n + s.granted, 0);
    expect(granted).toBeGreaterThan(0);
    expect(granted).toBeLessThanOrEqual(5);
    expect((await throttle.remaining('prober')).left).toBe(5 - granted);
    // Matches that succeeded give their share back; failed ones keep it.
    await Promise.all(slots.map((s, i) => s.settle(i % 2)));
    const used = slots.filter((s, i) => s.granted > 0 && i % 2 === 1).length;
    expect((await throttle.remaining('prober')).left).toBe(5 - used);
    // Another client has its own allowance.
    expect((await throttle.reserve('honest', 3)).granted).toBe(3);
  });

  it('grants a block only as far as the allowance reaches, then nothing, with when to come back', async () => {
    const throttle = new MatchThrottle(db, { maxFailures: 7, windowMs: 60_000 }, createLogger('error', true));
    const first = await throttle.reserve('prober', 5);
    expect(first.granted).toBe(5);
    await first.settle(5);
    const second = await throttle.reserve('prober', 5);
    expect(second.granted).toBe(2);
    await second.settle(9); // never counted past what was granted
    const none = await throttle.reserve('prober', 1);
    expect(none.granted).toBe(0);
    expect(none.retryAfterSeconds).toBeGreaterThan(0);
    expect((await throttle.remaining('prober')).left).toBe(0);
  });
});
