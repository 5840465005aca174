import { warmUpValidator } from '../../src/fhir/validator';

/**
 * Finds a MongoDB for the MongoDB leg of the store contract suite: MONGODB_URI if set, else
 * mongodb-memory-server when MONGO_MEMORY_SERVER=1 (`npm run test:mongo`). Where none can be had,
 * the leg is skipped and says why (TEST_MONGO_SKIP_REASON).
 */
export default async function globalSetup(): Promise<void> {
  // The R4 validators are generated once here (a clean checkout has none yet), not by every test worker at once.
  warmUpValidator();
  if (process.env.MONGODB_URI) {
    process.env.TEST_MONGODB_URI = process.env.MONGODB_URI;
    return;
  }
  if (process.env.MONGO_MEMORY_SERVER !== '1') {
    process.env.TEST_MONGO_SKIP_REASON = 'no MONGODB_URI is set (run `npm run test:mongo` where mongod can be downloaded, or set MONGODB_URI)';
    return;
  }
  try {
    const { MongoMemoryReplSet } = await import('mongodb-memory-server');
    const replSet = await MongoMemoryReplSet.create({ replSet: { count: 1 } });
    (globalThis as Record<string, unknown>).__MONGO_REPLSET__ = replSet;
    process.env.TEST_MONGODB_URI = replSet.getUri();
  } catch (err) {
    process.env.TEST_MONGO_SKIP_REASON = `mongodb-memory-server could not start mongod: ${(err as Error).message.split('\n')[0]}`;
  }
}
