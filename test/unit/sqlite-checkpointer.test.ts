import fs from 'node:fs';
import path from 'node:path';
import { SqliteDatabase } from '../../src/store/sqlite/sqlite-database';
import { tempDir } from '../helpers/server';

describe('the embedded engine checkpoints its WAL on another thread', () => {
  it('copies committed pages into the database file soon after the commits, long before the writer would', async () => {
    const dir = tempDir('ckpt-');
    const db = new SqliteDatabase(dir);
    try {
      const docs = db.collection('things');
      const file = path.join(dir, 'store.sqlite');
      const before = fs.statSync(file).size;
      // About 4 MB in 40 commits: a twentieth of what makes the writer checkpoint by itself.
      for (let i = 0; i < 40; i++) await db.bulkWrite(Array.from({ length: 100 }, (_, j) => ({ collection: 'things', insert: { _id: `${i}-${j}`, text: 'x'.repeat(1000) } })));
      expect(fs.statSync(`${file}-wal`).size).toBeGreaterThan(4_000_000);
      const deadline = Date.now() + 10_000;
      while (fs.statSync(file).size < before + 4_000_000 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
      expect(fs.statSync(file).size).toBeGreaterThan(before + 4_000_000);
      // The reader sees every document, and the file closes cleanly with the worker.
      expect(await docs.count({})).toBe(4000);
    } finally {
      await db.close();
    }
    const again = new SqliteDatabase(dir);
    expect(await again.collection('things').count({})).toBe(4000);
    await again.close();
  });
});
