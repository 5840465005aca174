import type { Resource } from 'fhir/r4';
import { FilterCompiler } from '../../src/store/sqlite/filter-sql';
import { SqliteDatabase } from '../../src/store/sqlite/sqlite-database';
import { ResourceStore } from '../../src/store/resource-store';
import { SearchRegistry } from '../../src/fhir/search/registry';
import { RESOURCE_TYPES } from '../../src/fhir/resource-types';
import { parseSearch } from '../../src/fhir/search/query';

/** A search on several parameters is driven by its narrowest one, with the same results. */
describe('SQLite conjunctions', () => {
  const registry = new SearchRegistry(RESOURCE_TYPES);

  it('drives from the condition selecting the fewest rows and checks the others per candidate', () => {
    const layout = { table: 'c_Patient', wildcards: new Map([['s', 'c_Patient__s']]) };
    const sizes: Record<string, number> = { family: 80000, birthdate: 3 };
    /** The rows each parameter's condition was counted up to, at most. */
    const counted: Record<string, number> = {};
    const compiler = new FilterCompiler(layout, (_side, _where, params, cap) => {
      const param = params[0] as string;
      counted[param] = Math.max(counted[param] ?? 0, Math.min(sizes[param], cap));
      return Math.min(sizes[param], cap);
    });
    const sr = parseSearch(registry, 'Patient', { family: 'smith', birthdate: '1970-05-05' }, { strict: true, defaultCount: 10, maxCount: 10 });
    const { sql } = compiler.compile(sr.filter);
    expect(sql).toMatch(/^\(EXISTS \(SELECT 1 FROM "c_Patient__s" AS w WHERE w\.rid = "c_Patient"\.rid AND p = \? AND .*\) AND rid IN \(SELECT rid FROM "c_Patient__s" WHERE p = \? AND /);
    // The broad condition is counted only a little beyond the narrow one's 3 rows, not thousands.
    expect(counted).toEqual({ family: 16, birthdate: 3 });
    sizes.family = 1;
    expect(compiler.compile(sr.filter).sql).toMatch(/^\(rid IN .* AND EXISTS /);
    // Both broad: counted further until one is below the cap, and the narrower drives.
    sizes.family = 900;
    sizes.birthdate = 300;
    expect(compiler.compile(sr.filter).sql).toMatch(/^\(EXISTS .* AND rid IN /);
    sizes.birthdate = 90000;
    expect(compiler.compile(sr.filter).sql).toMatch(/^\(rid IN .* AND EXISTS /);
  });

  it('finds the same resources whichever condition drives', async () => {
    const db = new SqliteDatabase(undefined);
    const store = new ResourceStore(db, registry);
    const people = [['Smith', '1970-05-05'], ['Smith', '1980-01-01'], ['Jones', '1970-05-05'], ['Smithers', '1970-05-05']];
    for (const [i, [family, birthDate]] of people.entries()) await store.update('Patient', `p${i}`, { resourceType: 'Patient', id: `p${i}`, name: [{ family }], birthDate } as Resource);
    for (let i = 0; i < 30; i++) await store.update('Patient', `x${i}`, { resourceType: 'Patient', id: `x${i}`, name: [{ family: 'Smith' }], birthDate: '1990-01-01' } as Resource);
    const ids = async (q: Record<string, string>) => (await store.search('Patient', parseSearch(registry, 'Patient', q, { strict: true, defaultCount: 100, maxCount: 100 }).filter)).map((r) => r.id).sort();
    expect(await ids({ family: 'smith', birthdate: '1970-05-05' })).toEqual(['p0', 'p3']);
    expect(await ids({ family: 'jones', birthdate: '1970-05-05' })).toEqual(['p2']);
    expect(await ids({ family: 'smith', birthdate: 'ge1980' })).toEqual(['p1', ...Array.from({ length: 30 }, (_, i) => `x${i}`)].sort());
    await db.close();
  });
});
