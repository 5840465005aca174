import fs from 'node:fs';
import type { Resource } from 'fhir/r4';
import { compiledValidators, generatedFile, validateResource, warmUpValidator } from '../../src/fhir/validator';
import { generatePopulation } from '../../scripts/synthetic';

/** Records as a source may send them: the synthetic population, and each broken in the ways the schema refuses. */
function samples(): Record<string, unknown>[] {
  const { resources } = generatePopulation({ members: 3, seed: 7 });
  const broken = resources.slice(0, 40).flatMap((r) => {
    const x = r as unknown as Record<string, unknown>;
    return [
      { ...x, unknownElement: true },
      { ...x, id: 42 },
      { ...x, meta: { lastUpdated: 'yesterday' } },
      { ...x, text: { status: 'not-a-status', div: '<div/>' } },
      { ...x, extension: [{ valueString: 'no url' }] },
      Object.fromEntries(Object.entries(x).filter(([k]) => k !== 'status')),
    ];
  });
  return [...(resources as unknown as Record<string, unknown>[]), ...broken];
}

describe('the R4 schema validators', () => {
  it('are loaded from the module generated from the schema, and judge exactly as the schema as published, compiled afresh', () => {
    warmUpValidator();
    const file = generatedFile();
    expect(fs.existsSync(file)).toBe(true);
    const generated = require(file) as Record<string, (r: unknown) => boolean>;
    const fresh = compiledValidators();
    let refused = 0;
    for (const sample of samples()) {
      const type = sample.resourceType as string;
      const a = generated[type] as ((r: unknown) => boolean) & { errors?: unknown };
      const b = fresh(type) as ((r: unknown) => boolean) & { errors?: unknown };
      const verdict = a(sample);
      expect({ type, verdict, errors: a.errors ?? null }).toEqual({ type, verdict: b(sample), errors: b.errors ?? null });
      if (!verdict) refused++;
    }
    expect(refused).toBeGreaterThan(150);
  });

  it('refuse through validateResource what the schema refuses, and know only resource types', () => {
    const [patient] = generatePopulation({ members: 1 }).resources.filter((r) => r.resourceType === 'Patient');
    expect(validateResource(patient, 'Patient')).toBe(patient);
    expect(() => validateResource({ ...patient, nickname: 'x' } as Resource)).toThrow(/unknown element 'nickname'/);
    expect(() => validateResource({ resourceType: 'Observation', status: 'final', code: {}, valueQuantity: { value: 'x' } } as unknown as Resource)).toThrow(/Observation.valueQuantity.value: must be number/);
    // A data type is not a resource, whatever the schema defines under that name.
    expect(() => validateResource({ resourceType: 'HumanName' } as unknown as Resource)).toThrow(/Unknown resource type 'HumanName'/);
  });
});
