import path from 'node:path';
import fs from 'node:fs';
import Datastore from '@seald-io/nedb';
import { Collection, Database, DuplicateKeyError, Filter, FindOptions, StoredDoc } from '../types';

/**
 * Embedded engine: one NeDB datafile per collection under DATA_DIR (or purely in memory
 * when no directory is given). NeDB runs MongoDB-style filters and serialises operations
 * per datastore, which makes a conditional update atomic within this process.
 */
/**
 * NeDB reads `{field: {$nin: [...]}}` on an array field as "some element is not listed", where
 * MongoDB (and the store's contract) means "no element is listed": say it NeDB's way.
 */
export function toNedbFilter(filter: unknown): unknown {
  if (Array.isArray(filter)) return filter.map(toNedbFilter);
  if (!filter || typeof filter !== 'object') return filter;
  const out: Record<string, unknown> = {};
  const nots: unknown[] = [];
  for (const [k, v] of Object.entries(filter)) {
    if (k.startsWith('$')) out[k] = toNedbFilter(v);
    else if (v && typeof v === 'object' && !Array.isArray(v) && '$nin' in v) {
      const { $nin, ...rest } = v as Record<string, unknown>;
      nots.push({ $not: { [k]: { $in: $nin } } });
      if (Object.keys(rest).length) out[k] = rest;
    } else out[k] = v;
  }
  if (nots.length === 0) return out;
  return Object.keys(out).length ? { $and: [out, ...nots] } : nots.length === 1 ? nots[0] : { $and: nots };
}

class NedbCollection<T extends StoredDoc> implements Collection<T> {
  private ready: Promise<Datastore<T>>;

  constructor(filename: string | undefined, compactMs: number) {
    const ds = new Datastore<T>(filename ? { filename } : { inMemoryOnly: true });
    this.ready = ds.loadDatabaseAsync().then(() => {
      if (filename && compactMs > 0) ds.setAutocompactionInterval(compactMs);
      return ds;
    });
  }

  private async ds(): Promise<Datastore<T>> {
    return this.ready;
  }

  async insertOne(doc: T): Promise<void> {
    const ds = await this.ds();
    try {
      await ds.insertAsync(doc);
    } catch (err) {
      throw mapError(err);
    }
  }

  async findOne(filter: Filter): Promise<T | null> {
    const ds = await this.ds();
    return (await ds.findOneAsync(toNedbFilter(filter) as Filter)) as T | null;
  }

  async find(filter: Filter, options: FindOptions = {}): Promise<T[]> {
    const ds = await this.ds();
    let cursor = ds.findAsync(toNedbFilter(filter) as Filter);
    if (options.sort) cursor = cursor.sort(options.sort);
    if (options.skip) cursor = cursor.skip(options.skip);
    if (options.limit) cursor = cursor.limit(options.limit);
    return (await cursor) as T[];
  }

  async count(filter: Filter): Promise<number> {
    const ds = await this.ds();
    return ds.countAsync(toNedbFilter(filter) as Filter);
  }

  async replaceOne(filter: Filter, doc: T, options: { upsert?: boolean } = {}): Promise<number> {
    const ds = await this.ds();
    try {
      const { numAffected } = await ds.updateAsync(toNedbFilter(filter) as Filter, doc, { upsert: !!options.upsert, multi: false });
      return numAffected;
    } catch (err) {
      throw mapError(err);
    }
  }

  async updateOne(filter: Filter, set: Record<string, unknown>): Promise<number> {
    const ds = await this.ds();
    try {
      const { numAffected } = await ds.updateAsync(toNedbFilter(filter) as Filter, { $set: set }, { multi: false });
      return numAffected;
    } catch (err) {
      throw mapError(err);
    }
  }

  async deleteMany(filter: Filter): Promise<number> {
    const ds = await this.ds();
    return ds.removeAsync(toNedbFilter(filter) as Filter, { multi: true });
  }

  async createIndex(fields: string[], options: { unique?: boolean } = {}): Promise<void> {
    const ds = await this.ds();
    // NeDB indexes one field, or several as a compound key; both speed up equality look-ups.
    await ds.ensureIndexAsync({ fieldName: fields.length === 1 ? fields[0] : fields, unique: !!options.unique });
  }

  async stop(): Promise<void> {
    const ds = await this.ds();
    ds.stopAutocompaction();
  }
}

function mapError(err: unknown): unknown {
  if (err && typeof err === 'object' && (err as { errorType?: string }).errorType === 'uniqueViolated') {
    return new DuplicateKeyError((err as Error).message);
  }
  return err;
}

export class NedbDatabase implements Database {
  readonly engine = 'embedded' as const;
  private collections = new Map<string, NedbCollection<StoredDoc>>();

  /** @param dataDir a directory for the datafiles, or undefined to keep everything in memory */
  constructor(private readonly dataDir: string | undefined, private readonly compactMs = 10 * 60_000) {
    if (dataDir) fs.mkdirSync(dataDir, { recursive: true });
  }

  collection<T extends StoredDoc = StoredDoc>(name: string): Collection<T> {
    if (!/^[A-Za-z0-9_.-]+$/.test(name)) throw new Error(`invalid collection name ${name}`);
    let c = this.collections.get(name);
    if (!c) {
      c = new NedbCollection<StoredDoc>(this.dataDir ? path.join(this.dataDir, `${name}.db`) : undefined, this.compactMs);
      this.collections.set(name, c);
    }
    return c as unknown as Collection<T>;
  }

  async close(): Promise<void> {
    await Promise.all([...this.collections.values()].map((c) => c.stop()));
    this.collections.clear();
  }
}
