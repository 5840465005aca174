import type { Resource } from 'fhir/r4';
import { validateResource } from '../../src/fhir/validator';
import { buildTable } from '../../src/fhir/r4-rules';
import { FhirError } from '../../src/fhir/outcome';
import { generatePopulation } from '../../scripts/synthetic';
import fs from 'node:fs';
import path from 'node:path';
import { Readable } from 'node:stream';
import { validateReceived, writeChecked } from '../../src/requester/downloader';
import { ExchangeFailed } from '../../src/requester/exchange-errors';
import { asSent, BROKEN, observation, patient } from '../helpers/r4-broken';
import { tempDir } from '../helpers/server';

describe('the R4 rules the schema cannot express', () => {
  it.each(BROKEN)('refuse %s with a 400 naming the element, not its value', (_name, resource, where, what) => {
    let error: unknown;
    try {
      validateResource(resource);
    } catch (err) {
      error = err;
    }
    expect(error).toBeInstanceOf(FhirError);
    const e = error as FhirError;
    expect(e.status).toBe(400);
    expect(e.expression).toEqual([where]);
    expect(e.message).toMatch(what);
    expect(e.message).not.toMatch(/2021-0|Doe|1e400|9007/);
  });

  it('accept what R4 allows: leap days, leap seconds, offsets, primitive extensions beside values or placeholders, tabs and pairs of surrogates', () => {
    const ok: Record<string, unknown>[] = [
      patient({ birthDate: '2000-02-29', deceasedDateTime: '2020-12-31T23:59:60-14:00', multipleBirthInteger: -2147483648 }),
      patient({ birthDate: '1975', _birthDate: { id: 'b' } }),
      patient({ name: [{ given: ['Ann', 'Lee'], _given: [null, { extension: [{ url: 'http://e.example/x', valueString: 'y' }] }], text: 'tab\tnewline\ncr\r emoji \ud83d\ude00' }] }),
      patient({ contained: [{ resourceType: 'Organization', id: 'a', name: 'A' }, { resourceType: 'Organization', id: 'b', name: 'B' }], managingOrganization: { reference: '#a' } }),
      patient({ extension: [{ url: 'http://e.example/complex', extension: [{ url: 'part', valueDecimal: 1.5e300 }] }] }),
      observation({ valueQuantity: { value: 2.5 }, effectivePeriod: { start: '2021-01-01' } }),
    ];
    for (const r of ok) expect(validateResource(r)).toBe(r);
  });

  it('accept the synthetic population the exchange tests import', () => {
    const { resources } = generatePopulation({ members: 20, seed: 11 });
    for (const r of resources as Resource[]) expect(() => validateResource(JSON.parse(JSON.stringify(r)))).not.toThrow();
  });

  it('know every R4 type, choice and backbone element from the definitions', () => {
    const table = buildTable();
    expect(table.Patient.deceasedBoolean).toEqual(['boolean', 0, 'deceased']);
    expect(table.Patient.name).toEqual(['HumanName', 1]);
    expect(table.Patient.contact).toEqual(['Patient.contact', 1]);
    expect(table['Timing.repeat'].frequency).toEqual(['positiveInt', 0]);
    expect(table['Questionnaire.item'].item).toEqual(['Questionnaire.item', 1]);
    expect(table.Extension.url[0]).toBe('uri');
    expect(table.Condition.onsetAge).toEqual(['Age', 0, 'onset']);
    expect(Object.keys(table).length).toBeGreaterThan(500);
  });

  it('refuse the same records in a source\'s NDJSON file on import: the file fails at its line, the reason naming the element and no value', async () => {
    const dir = tempDir('r4-import-');
    try {
      for (const [name, resource, where] of BROKEN) {
        const type = resource.resourceType as string;
        const valid: Record<string, object> = {
          Patient: patient({ birthDate: '1970-01-01' }),
          Observation: observation({}),
          MedicationRequest: { resourceType: 'MedicationRequest', status: 'active', intent: 'order', subject: { reference: 'Patient/1' }, medicationCodeableConcept: { text: 'x' } },
          Bundle: { resourceType: 'Bundle', type: 'collection' },
        };
        const good = JSON.stringify({ ...valid[type], id: 'fine' });
        const text = `${good}\n${asSent({ ...resource, id: 'bad' })}\n`;
        const file = path.join(dir, 'out.ndjson');
        const written = writeChecked(Readable.from([text]), file, { label: `${type}.ndjson`, expectedType: type, maxLineLength: 1 << 20, check: (r, line) => validateReceived(r, type, `${type}.ndjson`, line) });
        const err = await written.then(() => undefined, (e: unknown) => e);
        expect({ name, refused: err instanceof ExchangeFailed }).toEqual({ name, refused: true });
        const message = (err as Error).message;
        expect(message).toContain(`${type}.ndjson line 2`);
        expect(message).toContain(where);
        expect(message).not.toMatch(/2021-0|Doe|1e400|9007/);
        // The record refused is not in the work file.
        expect(fs.readFileSync(file, 'utf8')).not.toContain('"bad"');
      }
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
