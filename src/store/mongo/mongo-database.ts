import { MongoClient, MongoServerError, Db, Collection as MongoCollection, Document } from 'mongodb';
import { Collection, Database, DuplicateKeyError, Filter, FindOptions, StoredDoc } from '../types';

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

  async find(filter: Filter, options: FindOptions = {}): Promise<T[]> {
    let cursor = this.c.find(filter);
    if (options.sort) cursor = cursor.sort(options.sort);
    if (options.skip) cursor = cursor.skip(options.skip);
    if (options.limit) cursor = cursor.limit(options.limit);
    return (await cursor.toArray()) as unknown as T[];
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
  private constructor(private readonly client: MongoClient, private readonly db: Db) {}

  static async connect(uri: string, dbName?: string): Promise<MongoDatabase> {
    const client = new MongoClient(uri, { serverSelectionTimeoutMS: 10_000 });
    await client.connect();
    return new MongoDatabase(client, client.db(dbName));
  }

  collection<T extends StoredDoc = StoredDoc>(name: string): Collection<T> {
    return new MongoBackedCollection<T>(this.db.collection(name));
  }

  async close(): Promise<void> {
    await this.client.close();
  }
}
