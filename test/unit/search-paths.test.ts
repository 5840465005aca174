import { evalFhirPath } from '@medplum/core';
import type { Resource } from 'fhir/r4';
import { SearchRegistry } from '../../src/fhir/search/registry';
import { evaluatePath, PathStep } from '../../src/fhir/search/fhirpath-lite';
import { parseSearch } from '../../src/fhir/search/query';
import { RESOURCE_TYPES } from '../../src/fhir/resource-types';
import { SqliteDatabase } from '../../src/store/sqlite/sqlite-database';
import { ResourceStore } from '../../src/store/resource-store';
import { generatePopulation } from '../../scripts/synthetic';

/**
 * Every served search parameter matches its data: derived from the official SearchParameter set (as
 * the registry serves it), never from a hand-written list.
 */
const registry = new SearchRegistry(RESOURCE_TYPES);

/** A value of each datatype a choice may take, with the search value that must find it, by parameter type. */
const SAMPLES: Record<string, Record<string, { value: unknown; search: string }>> = {
  date: {
    DateTime: { value: '2024-03-01', search: '2024-03-01' },
    Instant: { value: '2024-03-01T10:00:00Z', search: 'ge2024-03-01' },
    Period: { value: { start: '2024-03-01', end: '2024-03-01' }, search: '2024-03-01' },
    Timing: { value: { event: ['2024-03-01'] }, search: '2024-03-01' },
  },
  reference: { Reference: { value: { reference: 'Patient/sample' }, search: 'Patient/sample' } },
  token: {
    CodeableConcept: { value: { coding: [{ system: 'http://example.org/cs', code: 'c1' }] }, search: 'http://example.org/cs|c1' },
    Coding: { value: { system: 'http://example.org/cs', code: 'c1' }, search: 'http://example.org/cs|c1' },
  },
  quantity: { Quantity: { value: { value: 5, unit: 'mg' }, search: '5' } },
  string: { String: { value: 'Sample', search: 'sample' } },
};

/** The parameters whose paths go through a choice element, with the path up to it. */
function choiceParams(): { type: string; code: string; paramType: string; steps: PathStep[]; at: number }[] {
  const out = [];
  for (const type of RESOURCE_TYPES) {
    for (const def of registry.params(type).values()) {
      for (const steps of def.paths) {
        const at = steps.findIndex((s) => s.kind === 'field' && s.choices);
        if (at >= 0) out.push({ type, code: def.code, paramType: def.type, steps, at });
      }
    }
  }
  return out;
}

describe('search parameters on choice elements', () => {
  const params = choiceParams();

  it('are found by the official set: Observation.effective, Procedure.performed and the rest', () => {
    expect(params.map((p) => `${p.type}?${p.code}`).sort()).toEqual(
      expect.arrayContaining(['CarePlan?activity-date', 'Consent?source-reference', 'DiagnosticReport?date', 'Immunization?date', 'Observation?date', 'Procedure?date', 'ServiceRequest?occurrence']),
    );
  });

  it('find a resource that carries the element in any of its searchable types', async () => {
    const db = new SqliteDatabase(undefined);
    const store = new ResourceStore(db, registry);
    let checked = 0;
    for (const p of params) {
      const field = p.steps[p.at] as { name: string; choices: string[] };
      const samples = Object.entries(SAMPLES[p.paramType] ?? {}).filter(([t]) => field.choices.includes(t));
      expect({ param: `${p.type}?${p.code}`, searchable: samples.length > 0 }).toEqual({ param: `${p.type}?${p.code}`, searchable: true });
      for (const [choice, sample] of samples) {
        // The resource holds the element at its path (backbone elements as single objects).
        const resource: Record<string, unknown> = { resourceType: p.type, id: `${p.code}-${choice}`.toLowerCase() };
        let at = resource;
        for (const step of p.steps.slice(0, p.at)) {
          if (step.kind !== 'field') throw new Error(`unexpected step before a choice in ${p.type}?${p.code}`);
          at = (at[step.name] = {}) as Record<string, unknown>;
        }
        at[`${field.name}${choice}`] = sample.value;
        await store.update(p.type, resource.id as string, resource as unknown as Resource);
        const query = parseSearch(registry, p.type, { [p.code]: sample.search }, { strict: true, defaultCount: 100, maxCount: 100 });
        const found = (await store.search(p.type, query.filter)).map((r) => r.id);
        expect({ param: `${p.type}?${p.code}`, choice, found: found.includes(resource.id as string) }).toEqual({ param: `${p.type}?${p.code}`, choice, found: true });
        checked++;
      }
    }
    expect(checked).toBeGreaterThanOrEqual(params.length);
    await db.close();
  });
});

describe('the search-path evaluator', () => {
  it('gives what @medplum/core FHIRPath gives, for every served parameter, on sample resources', () => {
    const { resources } = generatePopulation({ members: 12, seed: 7 });
    const extra = [
      { resourceType: 'Observation', id: 'o', status: 'final', code: { text: 'x' }, effectivePeriod: { start: '2024-01-01' }, subject: { reference: 'Patient/p' }, valueQuantity: { value: 3 } },
      { resourceType: 'Procedure', id: 'p', status: 'completed', subject: { reference: 'Patient/p' }, performedDateTime: '2024-01-01' },
      { resourceType: 'Patient', id: 'p', telecom: [{ system: 'email', value: 'a@b.c' }, { system: 'phone', value: '555' }], name: [{ family: 'F', given: ['G'] }] },
    ];
    const canonical = (values: unknown[]) => [...new Set(values.map((v) => JSON.stringify(v)))].sort();
    let compared = 0;
    const differences: string[] = [];
    for (const resource of [...resources, ...extra] as Record<string, unknown>[]) {
      for (const def of registry.params(resource.resourceType as string).values()) {
        const ours = canonical(def.paths.flatMap((p) => evaluatePath(resource, p)));
        let theirs: string[];
        try {
          // Medplum reads `Resource.id` only of a resource typed Resource: name the type itself.
          theirs = canonical(evalFhirPath(def.expression.replace(/(^|[|(]\s*)(Domain)?Resource\./g, `$1${resource.resourceType}.`), resource));
        } catch {
          continue; // an expression Medplum's evaluator does not take
        }
        // Medplum's `x as T` does not check the type of the choice present (Condition.onset as Age
        // yields onsetDateTime); FHIRPath's does. Where the resource holds no x of type T, ours is the spec's answer.
        const casts = [...def.expression.matchAll(/\.(\w+)(?: as |\.as\()(\w+)\)/g)];
        if (ours.length === 0 && casts.length && casts.every(([, el, t]) => !(`${el}${t[0].toUpperCase()}${t.slice(1)}` in resource))) continue;
        compared++;
        if (JSON.stringify(ours) !== JSON.stringify(theirs)) differences.push(`${resource.resourceType}?${def.code}: ours ${ours.join(',')} theirs ${theirs.join(',')}`);
      }
    }
    expect(differences).toEqual([]);
    expect(compared).toBeGreaterThan(500);
  });
});
