import fs from 'node:fs';
import path from 'node:path';
import type { Resource } from 'fhir/r4';
import { SqliteDatabase } from '../../src/store/sqlite/sqlite-database';
import { ResourceStore } from '../../src/store/resource-store';
import { SearchRegistry } from '../../src/fhir/search/registry';
import { RESOURCE_TYPES } from '../../src/fhir/resource-types';
import { ImportJournal } from '../../src/requester/import-journal';
import { Importer } from '../../src/requester/importer';
import { preparedLine } from '../../src/requester/local-form';
import { createLogger } from '../../src/logger';
import { tempDir } from '../helpers/server';

const mapping = { sourcePatientId: 'm1', localPatientId: 'local', sourceBase: 'https://source.example.com/fhir', issuer: 'https://source.example.com' };

describe('the import of records of megabytes', () => {
  it('writes them in batches bounded in bytes, all of them stored', async () => {
    const dir = tempDir('import-batches-');
    const db = new SqliteDatabase(undefined);
    try {
      const store = new ResourceStore(db, new SearchRegistry(RESOURCE_TYPES));
      const journal = new ImportJournal(db, store, createLogger('error', true));
      const importer = new Importer(store, journal, 6 << 20);
      // Six records of 3 MB each (a source's 5 MB lines are as many bytes in fewer records).
      const records = Array.from({ length: 6 }, (_, i) => ({ resourceType: 'Condition', id: `c${i}`, subject: { reference: 'Patient/m1' }, code: { text: `c${i}` }, note: [{ text: `${i}`.repeat(3 << 20) }] }));
      const file = path.join(dir, 'conditions.local');
      fs.writeFileSync(file, records.map((r) => preparedLine(r as Resource, mapping, 'https://source.example.com/resource-id')).join('\n') + '\n');
      const batches: number[] = [];
      const plan = store.planWrites.bind(store);
      store.planWrites = async (type, resources, hashes) => {
        batches.push(resources.length);
        return plan(type, resources, hashes);
      };
      const result = await importer.importPrepared(file, 'Condition', { taskId: 't1', deadline: Date.now() + 120_000 });
      expect(result).toMatchObject({ count: 6, written: 6 });
      // 8 MB a batch at most: never the thousand records of a batch of small ones.
      expect(batches).toEqual([3, 3]);
      expect(await store.count('Condition', {})).toBe(6);
    } finally {
      await db.close();
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
