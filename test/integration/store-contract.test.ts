import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { randomUUID } from 'node:crypto';
import type { Resource } from 'fhir/r4';
import { Database, DuplicateKeyError } from '../../src/store/types';
import { SqliteDatabase } from '../../src/store/sqlite/sqlite-database';
import { MongoDatabase } from '../../src/store/mongo/mongo-database';
import { ResourceStore } from '../../src/store/resource-store';
import { SearchRegistry } from '../../src/fhir/search/registry';
import { RESOURCE_TYPES } from '../../src/fhir/resource-types';
import { parseSearch } from '../../src/fhir/search/query';
import { FhirError } from '../../src/fhir/outcome';
import { tempDir } from '../helpers/server';

const registry = new SearchRegistry(RESOURCE_TYPES);
const search = (store: ResourceStore, type: string, query: Record<string, string | string[]>) =>
  store.search(type, parseSearch(registry, type, query, { strict: true, defaultCount: 100, maxCount: 100 }).filter);

interface Engine {
  name: string;
  open(): Promise<Database>;
  reopen?: (db: Database) => Promise<Database>;
  /** Another connection to the same store, as a second process would have. */
  share?: (db: Database) => Database;
}

const engines: Engine[] = [];
const embeddedDirs = new Map<Database, string>();
engines.push({
  name: 'embedded (SQLite)',
  async open() {
    const dir = tempDir('store-');
    const db = new SqliteDatabase(dir);
    embeddedDirs.set(db, dir);
    return db;
  },
  share: (db) => new SqliteDatabase(embeddedDirs.get(db) as string),
  async reopen(db) {
    const dir = embeddedDirs.get(db) as string;
    await db.close();
    const again = new SqliteDatabase(dir);
    embeddedDirs.set(again, dir);
    return again;
  },
});

const mongoUri = process.env.TEST_MONGODB_URI;
if (mongoUri) {
  engines.push({ name: 'MongoDB', open: () => MongoDatabase.connect(mongoUri, `test_${randomUUID().slice(0, 8)}`) });
} else {
  // eslint-disable-next-line no-console
  console.log(`Store contract suite: MongoDB leg skipped: ${process.env.TEST_MONGO_SKIP_REASON}`);
  describe('store contract on MongoDB', () => {
    it.skip(`skipped: ${process.env.TEST_MONGO_SKIP_REASON}`, () => undefined);
  });
}

describe.each(engines)('store contract on $name', (engine) => {
  let db: Database;
  let store: ResourceStore;

  beforeEach(async () => {
    db = await engine.open();
    store = new ResourceStore(db, registry);
  });
  afterEach(async () => {
    await db.close();
  });

  it('creates with a server id and version 1, and reads it back', async () => {
    const created = await store.create({ resourceType: 'Patient', id: 'ignored', name: [{ family: 'Smith' }] } as Resource);
    expect(created.id).toMatch(/^[0-9a-f-]{36}$/);
    expect(created.meta?.versionId).toBe('1');
    const read = await store.read('Patient', created.id as string);
    expect(read).toEqual(created);
    // As text, to be sent as it is: the same resource, with its version and time.
    const text = await store.readText('Patient', created.id as string);
    expect(JSON.parse(text.text)).toEqual(created);
    expect(text.versionId).toBe('1');
    expect(text.lastUpdated.toISOString()).toBe(created.meta?.lastUpdated);
  });

  it('updates bump the version, keep history, and honour If-Match', async () => {
    const first = await store.update('Patient', 'p1', { resourceType: 'Patient', id: 'p1', gender: 'male' } as Resource);
    expect(first.created).toBe(true);
    const second = await store.update('Patient', 'p1', { resourceType: 'Patient', id: 'p1', gender: 'female' } as Resource, '1');
    expect(second.created).toBe(false);
    expect(second.resource.meta?.versionId).toBe('2');
    await expect(store.update('Patient', 'p1', { resourceType: 'Patient', id: 'p1' } as Resource, '1')).rejects.toMatchObject({ status: 412 });
    expect((await store.vread('Patient', 'p1', '1')) as { gender?: string }).toMatchObject({ gender: 'male' });
    const history = await store.historyOf('Patient', 'p1', { count: 10, offset: 0 });
    expect(history.entries.map((e) => e.versionId)).toEqual(['2', '1']);
  });

  it('deletes: 410 on read, deletion in history, and re-creation continues the versions', async () => {
    await store.update('Patient', 'gone', { resourceType: 'Patient', id: 'gone' } as Resource);
    expect(await store.delete('Patient', 'gone')).toBe('2');
    await expect(store.read('Patient', 'gone')).rejects.toMatchObject({ status: 410 });
    await expect(store.read('Patient', 'never')).rejects.toMatchObject({ status: 404 });
    await expect(store.readText('Patient', 'gone')).rejects.toMatchObject({ status: 410 });
    await expect(store.readText('Patient', 'never')).rejects.toMatchObject({ status: 404 });
    const again = await store.update('Patient', 'gone', { resourceType: 'Patient', id: 'gone' } as Resource);
    expect(again.resource.meta?.versionId).toBe('3');
  });

  it('never lets two concurrent updates of one version both win', async () => {
    await store.update('Patient', 'race', { resourceType: 'Patient', id: 'race' } as Resource);
    const results = await Promise.allSettled(
      Array.from({ length: 8 }, (_, i) => store.update('Patient', 'race', { resourceType: 'Patient', id: 'race', birthDate: `200${i}` } as Resource, '1')),
    );
    expect(results.filter((r) => r.status === 'fulfilled')).toHaveLength(1);
    expect(results.filter((r) => r.status === 'rejected').every((r) => (r as PromiseRejectedResult).reason instanceof FhirError)).toBe(true);
    // Without If-Match every writer lands, each on its own version.
    await Promise.all(Array.from({ length: 5 }, () => store.update('Patient', 'race', { resourceType: 'Patient', id: 'race' } as Resource)));
    const history = await store.historyOf('Patient', 'race', { count: 50, offset: 0 });
    expect(history.entries.map((e) => Number(e.versionId)).sort((a, b) => a - b)).toEqual([1, 2, 3, 4, 5, 6, 7]);
  });

  it('searches tokens, strings, references and dates with the same filters', async () => {
    await store.update('Patient', 'a', { resourceType: 'Patient', id: 'a', name: [{ family: 'Müller', given: ['Anna'] }], birthDate: '1980-02-15', identifier: [{ system: 'urn:mb', value: 'M1' }] } as Resource);
    await store.update('Patient', 'b', { resourceType: 'Patient', id: 'b', name: [{ family: 'Miller' }], birthDate: '1991-07-01', gender: 'male' } as Resource);
    await store.update('ExplanationOfBenefit', 'e1', { resourceType: 'ExplanationOfBenefit', id: 'e1', patient: { reference: 'Patient/a' }, created: '2024-03-01' } as Resource);
    const ids = (rs: Resource[]) => rs.map((r) => r.id).sort();
    expect(ids(await search(store, 'Patient', { name: 'muller' }))).toEqual(['a']);
    expect(ids(await search(store, 'Patient', { family: 'M' }))).toEqual(['a', 'b']);
    expect(ids(await search(store, 'Patient', { identifier: 'urn:mb|M1' }))).toEqual(['a']);
    expect(ids(await search(store, 'Patient', { identifier: 'M1' }))).toEqual(['a']);
    expect(ids(await search(store, 'Patient', { identifier: 'urn:other|M1' }))).toEqual([]);
    expect(ids(await search(store, 'Patient', { birthdate: 'ge1990' }))).toEqual(['b']);
    expect(ids(await search(store, 'Patient', { birthdate: ['ge1980-01', 'lt1980-03'] }))).toEqual(['a']);
    expect(ids(await search(store, 'Patient', { gender: 'male,female' }))).toEqual(['b']);
    expect(ids(await search(store, 'Patient', { 'gender:missing': 'true' }))).toEqual(['a']);
    expect(ids(await search(store, 'ExplanationOfBenefit', { patient: 'Patient/a' }))).toEqual(['e1']);
    expect(ids(await search(store, 'ExplanationOfBenefit', { patient: 'a' }))).toEqual(['e1']);
    expect(ids(await search(store, 'ExplanationOfBenefit', { patient: 'b' }))).toEqual([]);
  });

  it('answers a search page as stored text: the same resources, in the same order and page, as the parsed search', async () => {
    // Text a serialiser could get wrong: escapes, non-ASCII, a lone surrogate, numbers of every form.
    const odd = 'quote " back \\ tab \t nul \u0000 line \u2028 é 日本 \ud83d\ude00 lone \ud800';
    for (const [i, family] of ['Zed', odd, 'Adams', 'Miller'].entries()) {
      await store.update('Observation', `o${i}`, { resourceType: 'Observation', id: `o${i}`, status: 'final', code: { text: family }, subject: { reference: 'Patient/p' }, valueQuantity: { value: [0.1, 1e21, -0, 12345678901234][i] }, extension: [{ url: 'urn:x', valueDecimal: 1.50 }] } as Resource);
    }
    await store.update('Observation', 'other', { resourceType: 'Observation', id: 'other', status: 'final', code: { text: 'x' }, subject: { reference: 'Patient/q' } } as Resource);
    const filter = parseSearch(registry, 'Observation', { subject: 'Patient/p' }, { strict: true, defaultCount: 100, maxCount: 100 }).filter;
    for (const opts of [{}, { sort: { _id: -1 as const }, skip: 1, limit: 2 }]) {
      const parsed = await store.search('Observation', filter, opts);
      const texts = await store.searchTexts('Observation', filter, opts);
      expect(texts.map((t) => t.id)).toEqual(parsed.map((r) => r.id));
      expect(texts.map((t) => JSON.parse(t.text))).toEqual(parsed);
    }
    expect((await store.searchTexts('Observation', filter)).map((t) => t.id).sort()).toEqual(['o0', 'o1', 'o2', 'o3']);
  });

  it('reads $nin on an array field as "none of its elements is listed" (the access filter relies on it)', async () => {
    const labelled = (id: string, codes: string[]) => ({ resourceType: 'Condition', id, subject: { reference: 'Patient/p' }, ...(codes.length ? { meta: { security: codes.map((code) => ({ system: 'http://terminology.hl7.org/CodeSystem/v3-ActCode', code })) } } : {}) }) as Resource;
    await store.update('Condition', 'none', labelled('none', []));
    await store.update('Condition', 'psy', labelled('psy', ['PSY']));
    await store.update('Condition', 'mixed', labelled('mixed', ['PSY', 'TBOO']));
    await store.update('Condition', 'other', labelled('other', ['TBOO']));
    const found = await store.search('Condition', { 's._security': { $nin: ['http://terminology.hl7.org/CodeSystem/v3-ActCode|PSY'] } });
    expect(found.map((r) => r.id).sort()).toEqual(['none', 'other']);
    // The same conditions on a page of known ids (how a stream re-checks each page) select the same.
    const page = { _id: { $in: ['none', 'psy', 'mixed', 'other', 'absent'] } };
    const pinned = await store.search('Condition', { $and: [{ 's._security': { $nin: ['http://terminology.hl7.org/CodeSystem/v3-ActCode|PSY'] } }, page] });
    expect(pinned.map((r) => r.id).sort()).toEqual(['none', 'other']);
    const mine = await store.search('Condition', { $and: [{ 's.patient': 'Patient/p' }, { $or: [{ 's._security': 'http://terminology.hl7.org/CodeSystem/v3-ActCode|TBOO' }, { 's._security': { $exists: false } }] }, page] });
    expect(mine.map((r) => r.id).sort()).toEqual(['mixed', 'none', 'other']);
  });

  it('writes asked for at once are each applied or refused on their own (the embedded engine commits them together)', async () => {
    const c = db.collection('things');
    await c.insertOne({ _id: 'taken', n: 0 });
    const results = await Promise.allSettled([
      c.insertOne({ _id: 'x1', n: 1 }),
      c.insertOne({ _id: 'taken', n: 99 }),
      c.updateOne({ _id: 'taken' }, { n: 2 }),
      db.atomicWrite([{ collection: 'things', insert: { _id: 'x2', n: 1 } }, { collection: 'things', insert: { _id: 'x1', n: 5 } }]),
      c.insertOne({ _id: 'x3', n: 3 }),
    ]);
    expect(results.map((r) => r.status)).toEqual(['fulfilled', 'rejected', 'fulfilled', 'rejected', 'fulfilled']);
    expect((results[1] as PromiseRejectedResult).reason).toBeInstanceOf(DuplicateKeyError);
    // The refused atomic write left nothing, not even its first insert; the others stand.
    expect((await c.find({}, { sort: { _id: 1 } })).map((d) => [d._id, d.n])).toEqual([['taken', 2], ['x1', 1], ['x3', 3]]);
  });

  it('applies a batch of writes in order: inserts refused on a taken id, replacements only where the filter matches, dependants only after their write', async () => {
    const c = db.collection('things');
    await c.insertOne({ _id: 'a', n: 1 });
    const applied = await db.bulkWrite([
      { collection: 'things', insert: { _id: 'a', n: 2 } },
      { collection: 'log', after: 0, insert: { _id: 'a-2' } },
      { collection: 'things', insert: { _id: 'b', n: 1 } },
      { collection: 'log', after: 2, insert: { _id: 'b-1' } },
      { collection: 'things', replace: { _id: 'a', n: 3 }, filter: { _id: 'a', n: 1 } },
    ]);
    expect(applied).toEqual([false, false, true, true, true]);
    expect((await c.find({}, { sort: { _id: 1 } })).map((d) => [d._id, d.n])).toEqual([['a', 3], ['b', 1]]);
    expect((await db.collection('log').find({})).map((d) => d._id)).toEqual(['b-1']);
    expect(await c.find({ _id: 'a' }, { fields: ['n'] })).toEqual([{ _id: 'a', n: 3 }]);
  });

  it('batch writes of resources: unchanged content is not written again, changes get a version and history, a lost race is written on its own', async () => {
    const cond = (id: string, text: string) => ({ resourceType: 'Condition', id, subject: { reference: 'Patient/p' }, code: { text } }) as Resource;
    const first = await store.planWrites('Condition', [cond('c1', 'a'), cond('c2', 'b')]);
    expect(first.map((p) => [p.id, p.changed, p.version, p.before])).toEqual([['c1', true, 1, { current: null, floor: 0 }], ['c2', true, 1, { current: null, floor: 0 }]]);
    await store.applyWrites('Condition', first);
    expect((await search(store, 'Condition', { patient: 'Patient/p' })).map((r) => r.id).sort()).toEqual(['c1', 'c2']);
    const again = await store.planWrites('Condition', [cond('c1', 'a'), cond('c2', 'changed')]);
    expect(again.map((p) => [p.id, p.changed, p.version])).toEqual([['c1', false, 2], ['c2', true, 2]]);
    // Someone writes c2 between the plan and the write: it is written after theirs.
    await store.update('Condition', 'c2', cond('c2', 'theirs'));
    const versions = await store.applyWrites('Condition', again);
    expect([...versions]).toEqual([['c2', 3]]);
    expect((await store.read('Condition', 'c1')).meta?.versionId).toBe('1');
    expect(await store.read('Condition', 'c2')).toMatchObject({ meta: { versionId: '3' }, code: { text: 'changed' } });
    expect((await store.historyOf('Condition', 'c2', { count: 10, offset: 0 })).entries.map((e) => e.versionId)).toEqual(['3', '2', '1']);
    // After a delete, a new write continues the versions.
    await store.delete('Condition', 'c1');
    const revived = await store.planWrites('Condition', [cond('c1', 'a')]);
    expect(revived[0]).toMatchObject({ changed: true, version: 3, before: { current: null, floor: 2 } });
  });

  it('keeps large objects beside the documents: written as a stream, read back, removed by folder', async () => {
    const write = async (key: string, text: string) => {
      const { stream, finished } = db.blobs.create(key, 'application/fhir+ndjson');
      stream.end(text);
      await finished;
    };
    const read = async (key: string) => {
      const blob = await db.blobs.open(key);
      if (!blob) return undefined;
      const chunks: Buffer[] = [];
      for await (const c of blob.stream) chunks.push(c as Buffer);
      return { size: blob.size, text: Buffer.concat(chunks).toString() };
    };
    const big = 'x'.repeat(3 * 1024 * 1024);
    await write('exports/job-1/Patient.ndjson', big);
    await write('exports/job-1/Condition.ndjson', 'one\n');
    await write('exports/job-2/Patient.ndjson', 'two\n');
    await write('exports/job-2/Patient.ndjson', 'two again\n');
    expect(await read('exports/job-1/Patient.ndjson')).toEqual({ size: big.length, text: big });
    expect((await read('exports/job-2/Patient.ndjson'))?.text).toBe('two again\n');
    await db.blobs.removeAll('exports/job-1/');
    expect(await read('exports/job-1/Patient.ndjson')).toBeUndefined();
    expect(await read('exports/job-1/Condition.ndjson')).toBeUndefined();
    expect((await read('exports/job-2/Patient.ndjson'))?.text).toBe('two again\n');
    expect(() => db.blobs.create('../../etc/passwd', 'text/plain')).toThrow(/invalid blob key/);

    // A local file kept as a blob: stored as it is, the file left in place, an older blob replaced;
    // removing the blob leaves the file.
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'blob-file-'));
    try {
      const file = path.join(dir, 'received.ndjson');
      fs.writeFileSync(file, 'as received\n');
      await db.blobs.store('archive/task-1/00000.ndjson', 'application/fhir+ndjson', file);
      await db.blobs.store('archive/task-1/00000.ndjson', 'application/fhir+ndjson', file);
      expect(await read('archive/task-1/00000.ndjson')).toEqual({ size: 12, text: 'as received\n' });
      await db.blobs.removeAll('archive/task-1/');
      expect(await read('archive/task-1/00000.ndjson')).toBeUndefined();
      expect(fs.readFileSync(file, 'utf8')).toBe('as received\n');
      await expect(db.blobs.store('../x', 'text/plain', file)).rejects.toThrow(/invalid blob key/);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it('takes $in lists of any length (a partner may hold tens of thousands of members)', async () => {
    await store.update('Condition', 'k1', { resourceType: 'Condition', id: 'k1', subject: { reference: 'Patient/member-7' } } as Resource);
    await store.update('Condition', 'k2', { resourceType: 'Condition', id: 'k2', subject: { reference: 'Patient/member-39999' } } as Resource);
    const many = Array.from({ length: 40_000 }, (_, i) => `Patient/member-${i}`);
    expect((await store.search('Condition', { 's.patient': { $in: many } })).map((r) => r.id).sort()).toEqual(['k1', 'k2']);
    expect((await store.search('Condition', { _id: { $in: Array.from({ length: 40_000 }, (_, i) => `k${i}`) } })).map((r) => r.id).sort()).toEqual(['k1', 'k2']);
    expect((await store.search('Condition', { 's.patient': { $nin: many.slice(0, 10_000) } })).map((r) => r.id)).toEqual(['k2']);
  });

  it('streams a large result in pages', async () => {
    for (let i = 0; i < 23; i++) await store.update('Observation', `o${String(i).padStart(2, '0')}`, { resourceType: 'Observation', id: `o${String(i).padStart(2, '0')}`, status: 'final', code: { text: 'x' } } as Resource);
    const seen: string[] = [];
    for await (const r of store.stream('Observation', {}, 5)) seen.push(r.id as string);
    expect(seen).toHaveLength(23);
    expect(new Set(seen).size).toBe(23);
    // With a filter: each page is checked again when read, so a resource that stopped matching meanwhile is left out.
    const finals: string[] = [];
    for await (const r of store.stream('Observation', { 's.status': 'final' }, 5)) {
      if (finals.length === 0) await store.update('Observation', 'o20', { resourceType: 'Observation', id: 'o20', status: 'cancelled', code: { text: 'x' } } as Resource);
      finals.push(r.id as string);
    }
    expect(finals).toEqual(seen.filter((id) => id !== 'o20').sort());
  });

  if (engine.share) {
    it('shows a read every change committed before it, by this process or another sharing the store', async () => {
      const other = (engine.share as (db: Database) => Database)(db);
      try {
        const elsewhere = new ResourceStore(other, registry);
        const created = await store.create({ resourceType: 'Patient', name: [{ family: 'Shared' }] } as Resource);
        const id = created.id as string;
        expect((await store.read('Patient', id)).meta?.versionId).toBe('1');
        expect((await store.read('Patient', id)).meta?.versionId).toBe('1');
        expect((await store.readText('Patient', id)).versionId).toBe('1');
        await elsewhere.update('Patient', id, { resourceType: 'Patient', id, name: [{ family: 'Changed' }] } as Resource);
        expect(await store.read('Patient', id)).toMatchObject({ meta: { versionId: '2' }, name: [{ family: 'Changed' }] });
        const text = await store.readText('Patient', id);
        expect(text.versionId).toBe('2');
        expect(JSON.parse(text.text)).toMatchObject({ meta: { versionId: '2' }, name: [{ family: 'Changed' }] });
        await store.update('Patient', id, { resourceType: 'Patient', id, name: [{ family: 'Mine' }] } as Resource);
        expect((await elsewhere.read('Patient', id)).meta?.versionId).toBe('3');
        expect((await store.read('Patient', id)).meta?.versionId).toBe('3');
        await elsewhere.delete('Patient', id);
        await expect(store.read('Patient', id)).rejects.toMatchObject({ status: 410 });
        await expect(store.readText('Patient', id)).rejects.toMatchObject({ status: 410 });
        // What a reader is handed is its own copy.
        const copy = await elsewhere.read('Patient', (await elsewhere.create({ resourceType: 'Patient', name: [{ family: 'Copy' }] } as Resource)).id as string);
        (copy as { name: { family: string }[] }).name[0].family = 'Tampered';
        expect((await elsewhere.read('Patient', copy.id as string)) as unknown).toMatchObject({ name: [{ family: 'Copy' }] });
      } finally {
        await other.close();
      }
    });
  }

  if (engine.reopen) {
    it('keeps its data across a restart', async () => {
      const created = await store.create({ resourceType: 'Patient', name: [{ family: 'Durable' }] } as Resource);
      db = await (engine.reopen as (db: Database) => Promise<Database>)(db);
      store = new ResourceStore(db, registry);
      expect(await store.read('Patient', created.id as string)).toEqual(created);
      expect((await search(store, 'Patient', { family: 'durable' })).map((r) => r.id)).toEqual([created.id]);
    });
  }
});
