import { Database } from './types';
import { SqliteDatabase } from './sqlite/sqlite-database';
import { MongoDatabase } from './mongo/mongo-database';

/** MongoDB when a URI is given, the embedded engine under dataDir otherwise (or in memory if dataDir is undefined). */
export async function openDatabase(opts: { mongodbUri?: string; mongodbDb?: string; dataDir?: string }): Promise<Database> {
  if (opts.mongodbUri) return MongoDatabase.connect(opts.mongodbUri, opts.mongodbDb);
  return new SqliteDatabase(opts.dataDir);
}
