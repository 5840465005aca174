import path from 'node:path';
import fs from 'node:fs';
import Datastore from '@seald-io/nedb';
import { Collection, Database, DuplicateKeyError, Filter, FindOptions, StoredDoc } from '../types';

/**
 * Embedded engine: one NeDB datafile per collection under DATA_DIR (or purely in memory
 * when no directory is given). NeDB runs MongoDB-style filters and serialises operations
 * per datastore, which makes a conditional update atomic within this process.
 */
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
    return (await ds.findOneAsync(filter)) as T | null;
  }

  async find(filter: Filter, options: FindOptions = {}): Promise<T[]> {
    const ds = await this.ds();
    let cursor = ds.findAsync(filter);
    if (options.sort) cursor = cursor.sort(options.sort);
    if (options.skip) cursor = cursor.skip(options.skip);
    if (options.limit) cursor = cursor.limit(options.limit);
    return (await cursor) as T[];
  }

  async count(filter: Filter): Promise<number> {
    const ds = await this.ds();
    return ds.countAsync(filter);
  }

  async replaceOne(filter: Filter, doc: T, options: { upsert?: boolean } = {}): Promise<number> {
    const ds = await this.ds();
    try {
      const { numAffected } = await ds.updateAsync(filter, doc, { upsert: !!options.upsert, multi: false });
      return numAffected;
    } catch (err) {
      throw mapError(err);
    }
  }

  async updateOne(filter: Filter, set: Record<string, unknown>): Promise<number> {
    const ds = await this.ds();
    try {
      const { numAffected } = await ds.updateAsync(filter, { $set: set }, { multi: false });
      return numAffected;
    } catch (err) {
      throw mapError(err);
    }
  }

  async deleteMany(filter: Filter): Promise<number> {
    const ds = await this.ds();
    return ds.removeAsync(filter, { multi: true });
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
