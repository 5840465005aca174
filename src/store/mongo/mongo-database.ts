import { AnyBulkWriteOperation, MongoBulkWriteError, MongoClient, MongoServerError, Db, Collection as MongoCollection, Document } from 'mongodb';
import { BatchConflict, BulkOp, Collection, Database, DuplicateKeyError, Filter, FindOptions, StoredDoc } from '../types';
import { BlobStore } from '../blobs/blob-store';
import { GridFsBlobStore } from '../blobs/gridfs-blob-store';

/** Production engine: the official MongoDB driver, one MongoDB collection per store collection. */
class MongoBackedCollection<T extends StoredDoc> implements Collection<T> {
  constructor(private readonly c: MongoCollection<Document>) {}

  async insertOne(doc: T): Promise<void> {
    try {
      await this.c.insertOne(doc as Document);
    } catch (err) {
      throw mapError(err);
    }
  }

  async findOne(filter: Filter): Promise<T | null> {
    return (await this.c.findOne(filter)) as T | null;
  }

  async findTextById(id: string, field: string): Promise<{ text: string; rest: Partial<T> } | null> {
    const doc = await this.c.findOne({ _id: id } as Filter);
    if (!doc) return null;
    const { [field]: value, ...rest } = doc;
    return { text: JSON.stringify(value) ?? 'null', rest: rest as Partial<T> };
  }

  async find(filter: Filter, options: FindOptions = {}): Promise<T[]> {
    let cursor = this.c.find(filter, options.fields ? { projection: Object.fromEntries(options.fields.map((f) => [f, 1])) } : {});
    if (options.sort) cursor = cursor.sort(options.sort);
    if (options.skip) cursor = cursor.skip(options.skip);
    if (options.limit) cursor = cursor.limit(options.limit);
    return (await cursor.toArray()) as unknown as T[];
  }

  async findTexts(filter: Filter, field: string, options: Omit<FindOptions, 'fields'> = {}): Promise<{ _id: string; text: string }[]> {
    // The driver hands documents over parsed: the field is serialised here (only it is fetched).
    const docs = await this.find(filter, { ...options, fields: [field] });
    return docs.map((d) => ({ _id: d._id, text: JSON.stringify(d[field]) ?? 'null' }));
  }

  async count(filter: Filter): Promise<number> {
    return this.c.countDocuments(filter);
  }

  async replaceOne(filter: Filter, doc: T, options: { upsert?: boolean } = {}): Promise<number> {
    try {
      const r = await this.c.replaceOne(filter, doc as Document, { upsert: !!options.upsert });
      return r.matchedCount + r.upsertedCount;
    } catch (err) {
      throw mapError(err);
    }
  }

  async updateOne(filter: Filter, set: Record<string, unknown>): Promise<number> {
    try {
      const r = await this.c.updateOne(filter, { $set: set });
      return r.matchedCount;
    } catch (err) {
      throw mapError(err);
    }
  }

  async deleteMany(filter: Filter): Promise<number> {
    return (await this.c.deleteMany(filter)).deletedCount;
  }

  async createIndex(fields: string[], options: { unique?: boolean } = {}): Promise<void> {
    const spec: Record<string, 1> = {};
    for (const f of fields) spec[f] = 1;
    await this.c.createIndex(spec, { unique: !!options.unique });
  }
}

function mapError(err: unknown): unknown {
  if (err instanceof MongoServerError && err.code === 11000) return new DuplicateKeyError(err.message);
  return err;
}

export class MongoDatabase implements Database {
  readonly engine = 'mongodb' as const;
  readonly blobs: BlobStore;
  private constructor(private readonly client: MongoClient, private readonly db: Db) {
    this.blobs = new GridFsBlobStore(db);
  }

  static async connect(uri: string, dbName?: string): Promise<MongoDatabase> {
    const client = new MongoClient(uri, { serverSelectionTimeoutMS: 10_000 });
    await client.connect();
    return new MongoDatabase(client, client.db(dbName));
  }

  collection<T extends StoredDoc = StoredDoc>(name: string): Collection<T> {
    return new MongoBackedCollection<T>(this.db.collection(name));
  }

  /** Every write in one multi-document transaction (a replica set is required); any write that does not apply aborts it. */
  async atomicWrite(ops: BulkOp[]): Promise<void> {
    const session = this.client.startSession();
    try {
      await session.withTransaction(async () => {
        for (const [i, op] of ops.entries()) {
          const c = this.db.collection(op.collection);
          let applied: boolean;
          try {
            if ('insert' in op) applied = !!(await c.insertOne(op.insert as Document, { session })).acknowledged;
            else if ('remove' in op) applied = (await c.deleteMany(op.remove, { session })).deletedCount > 0;
            else {
              const r = await c.replaceOne(op.filter, op.replace as Document, { session, upsert: !!op.upsert });
              applied = r.matchedCount + r.upsertedCount > 0;
            }
          } catch (err) {
            if (err instanceof MongoServerError && err.code === 11000) applied = false;
            else throw err;
          }
          if (!applied) throw new BatchConflict(i);
        }
      });
    } finally {
      await session.endSession();
    }
  }

  /**
   * One unordered bulk write per collection, in the order collections first appear; an op is
   * applied unless the server reports a write error for it (a replacement that matches nothing is
   * sent as an upsert, so a lost race shows as a duplicate key), or the op it depends on failed.
   */
  async bulkWrite(ops: BulkOp[]): Promise<boolean[]> {
    const applied: boolean[] = ops.map(() => false);
    const groups = new Map<string, number[]>();
    ops.forEach((op, i) => groups.set(op.collection, [...(groups.get(op.collection) ?? []), i]));
    for (const [name, indexes] of groups) {
      const ready = indexes.filter((i) => ops[i].after === undefined || applied[ops[i].after as number]);
      if (ready.length === 0) continue;
      const writes: AnyBulkWriteOperation<Document>[] = ready.map((i) => {
        const op = ops[i];
        if ('insert' in op) return { insertOne: { document: op.insert as Document } };
        if ('remove' in op) return { deleteMany: { filter: op.remove } };
        const upsert = op.upsert || !('_id' in op.filter && Object.keys(op.filter).length === 1) ? true : false;
        return { replaceOne: { filter: op.filter, replacement: op.replace as Document, upsert } };
      });
      const failed = new Set<number>();
      try {
        await this.db.collection(name).bulkWrite(writes, { ordered: false });
      } catch (err) {
        if (!(err instanceof MongoBulkWriteError)) throw err;
        const errors = Array.isArray(err.writeErrors) ? err.writeErrors : [err.writeErrors];
        for (const e of errors) {
          if (e.code !== 11000) throw err;
          failed.add(e.index);
        }
      }
      ready.forEach((i, k) => (applied[i] = !failed.has(k)));
    }
    return applied;
  }

  async close(): Promise<void> {
    await this.client.close();
  }
}
