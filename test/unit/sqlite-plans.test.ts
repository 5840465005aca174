import fs from 'node:fs';
import BetterSqlite3 from 'better-sqlite3';
import type { Resource } from 'fhir/r4';
import { SqliteDatabase } from '../../src/store/sqlite/sqlite-database';
import { ResourceStore } from '../../src/store/resource-store';
import { SearchRegistry } from '../../src/fhir/search/registry';
import { RESOURCE_TYPES } from '../../src/fhir/resource-types';
import { tempDir } from '../helpers/server';

/**
 * How SQLite runs the embedded engine's queries: each statement's plan is recorded as it first
 * runs (EXPLAIN QUERY PLAN, with its own parameters), so a test can say that no collection is read
 * whole where an index should serve.
 */
const plans = new Map<string, string[]>();
const prepare = BetterSqlite3.prototype.prepare;
beforeAll(() => {
  BetterSqlite3.prototype.prepare = function (this: BetterSqlite3.Database, sql: string) {
    const statement = prepare.call(this, sql);
    if (!/^\s*SELECT/i.test(sql)) return statement;
    const db = this;
    for (const method of ['get', 'all', 'iterate'] as const) {
      const run = statement[method] as (...args: unknown[]) => unknown;
      (statement as unknown as Record<string, unknown>)[method] = function (this: unknown, ...args: unknown[]) {
        if (!plans.has(sql)) plans.set(sql, (prepare.call(db, `EXPLAIN QUERY PLAN ${sql}`).all(...args) as { detail: string }[]).map((r) => r.detail));
        return run.apply(this, args);
      };
    }
    return statement;
  } as typeof prepare;
});
afterAll(() => {
  BetterSqlite3.prototype.prepare = prepare;
});
beforeEach(() => plans.clear());

/** The statements on a collection's table that read all of it. */
const wholeReads = (table: string) => [...plans].filter(([, plan]) => plan.some((d) => new RegExp(`^SCAN ${table}( |$)`).test(d) && !/USING (COVERING )?INDEX/.test(d))).map(([sql]) => sql);

const registry = new SearchRegistry(RESOURCE_TYPES);
const coverage = (i: number) => ({ resourceType: 'Coverage', status: 'active', subscriberId: `SUB-${i}`, identifier: [{ system: 'http://payer.example/member-id', value: `M-${i}` }], beneficiary: { reference: `Patient/p${i}` }, payor: [{ display: 'Payer' }] }) as Resource;

describe('the embedded engine reads through indexes', () => {
  it("serves a member match's look-up by identifier, by subscriberId, or both, from indexes", async () => {
    const db = new SqliteDatabase(undefined);
    try {
      const store = new ResourceStore(db, registry);
      for (let i = 0; i < 30; i++) await store.create(coverage(i));
      const found = async (keys: { identifierTokens: string[]; subscriberId?: string }) => (await store.coveragesFor(keys, 50)).map((c) => (c as { subscriberId: string }).subscriberId).sort();
      expect(await found({ identifierTokens: ['http://payer.example/member-id|M-3'] })).toEqual(['SUB-3']);
      expect(await found({ identifierTokens: [], subscriberId: 'SUB-7' })).toEqual(['SUB-7']);
      expect(await found({ identifierTokens: ['http://payer.example/member-id|M-3'], subscriberId: 'SUB-7' })).toEqual(['SUB-3', 'SUB-7']);
      expect(plans.size).toBeGreaterThan(0);
      expect(wholeReads('c_Coverage')).toEqual([]);
    } finally {
      await db.close();
    }
  });

  it('keeps using indexes on a collection that was small when the store last closed', async () => {
    const dir = tempDir();
    try {
      let db = new SqliteDatabase(dir);
      let store = new ResourceStore(db, registry);
      for (let i = 0; i < 3; i++) await store.create(coverage(i));
      await db.close();
      // A planner that trusted what it saw then would read the whole collection for each batch now.
      db = new SqliteDatabase(dir);
      store = new ResourceStore(db, registry);
      const batch = Array.from({ length: 20 }, (_, i) => ({ ...coverage(i), id: `c${i}` }) as Resource);
      await store.planWrites('Coverage', batch);
      expect(await store.coveragesFor({ identifierTokens: [], subscriberId: 'SUB-1' }, 50)).toHaveLength(1);
      expect(plans.size).toBeGreaterThan(0);
      expect(wholeReads('c_Coverage')).toEqual([]);
      await db.close();
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
