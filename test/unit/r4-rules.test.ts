import type { Resource } from 'fhir/r4';
import { validateResource } from '../../src/fhir/validator';
import { buildTable } from '../../src/fhir/r4-rules';
import { FhirError } from '../../src/fhir/outcome';
import { generatePopulation } from '../../scripts/synthetic';

const patient = (x: Record<string, unknown>) => ({ resourceType: 'Patient', ...x });
const observation = (x: Record<string, unknown>) => ({ resourceType: 'Observation', status: 'final', code: { text: 'x' }, ...x });
const ext = (x: Record<string, unknown>) => patient({ extension: [x] });

/** Each a resource the R4 schema accepts and R4 refuses, the element the refusal must name, and what it must say. */
export const BROKEN: [string, Record<string, unknown>, string, RegExp][] = [
  ['an impossible date', patient({ birthDate: '2021-02-31' }), 'Patient.birthDate', /day does not exist/],
  ['29 February of a year that is not leap', patient({ birthDate: '1900-02-29' }), 'Patient.birthDate', /day does not exist/],
  ['an impossible dateTime', observation({ effectiveDateTime: '2021-04-31T10:00:00Z' }), 'Observation.effectiveDateTime', /day does not exist/],
  ['an impossible instant', observation({ issued: '2021-06-31T10:00:00+01:00' }), 'Observation.issued', /day does not exist/],
  ['an integer that is not whole', patient({ multipleBirthInteger: 2.5 }), 'Patient.multipleBirthInteger', /whole number/],
  ['an integer beyond 2^53', patient({ multipleBirthInteger: JSON.parse('9007199254740993') }), 'Patient.multipleBirthInteger', /out of range/],
  ['an integer beyond 32 bits', patient({ multipleBirthInteger: 2147483648 }), 'Patient.multipleBirthInteger', /out of range/],
  ['a positiveInt of 0', { resourceType: 'MedicationRequest', status: 'active', intent: 'order', subject: { reference: 'Patient/1' }, medicationCodeableConcept: { text: 'x' }, dosageInstruction: [{ timing: { repeat: { frequency: 0 } } }] }, 'MedicationRequest.dosageInstruction[0].timing.repeat.frequency', /out of range for positiveInt/],
  ['a decimal JSON makes Infinity', observation({ valueQuantity: { value: JSON.parse('1e400') } }), 'Observation.valueQuantity.value', /finite/],
  ['two types of one choice', patient({ deceasedBoolean: true, deceasedDateTime: '2020-01-01' }), 'Patient.deceased[x]', /one type/],
  ['an empty element', patient({ name: [{}] }), 'Patient.name[0]', /ele-1/],
  ['an element with only an id', patient({ name: [{ id: 'n1' }] }), 'Patient.name[0]', /ele-1/],
  ['an empty list', patient({ identifier: [] }), 'Patient.identifier', /ele-1/],
  ['an empty string (a uri the schema lets be empty)', patient({ identifier: [{ system: '', value: 'm1' }] }), 'Patient.identifier[0].system', /empty string/],
  ['an empty object', patient({ maritalStatus: {} }), 'Patient.maritalStatus', /ele-1/],
  ['a primitive extension without extensions or a value', patient({ _birthDate: { id: 'b' } }), 'Patient._birthDate', /ele-1/],
  ['an extension without url', ext({ valueString: 'x' }), 'Patient.extension[0]', /needs a url/],
  ['an extension with a value and extensions', ext({ url: 'http://e.example/a', valueString: 'x', extension: [{ url: 'b', valueBoolean: true }] }), 'Patient.extension[0]', /ext-1/],
  ['an extension with neither', ext({ url: 'http://e.example/a' }), 'Patient.extension[0]', /ext-1/],
  ['an extension with two values', ext({ url: 'http://e.example/a', valueString: 'x', valueBoolean: true }), 'Patient.extension[0].value[x]', /one type/],
  ['two contained resources with one id', patient({ contained: [{ resourceType: 'Organization', id: 'o', name: 'A' }, { resourceType: 'Organization', id: 'o', name: 'B' }] }), 'Patient.contained[1].id', /same id/],
  ['a contained resource without id', patient({ contained: [{ resourceType: 'Organization', name: 'A' }] }), 'Patient.contained[0]', /needs an id/],
  ['a contained resource that contains', patient({ contained: [{ resourceType: 'Organization', id: 'o', contained: [{ resourceType: 'Organization', id: 'p', name: 'B' }] }] }), 'Patient.contained[0].contained', /dom-2/],
  ['a lone surrogate', patient({ name: [{ family: 'Doe\ud800' }] }), 'Patient.name[0].family', /lone surrogate/],
  ['a control character', patient({ name: [{ family: 'Doe\u0007' }] }), 'Patient.name[0].family', /control character/],
  ['a broken rule inside a contained resource', patient({ contained: [{ resourceType: 'Organization', id: 'o', name: 'A', telecom: [{}] }] }), 'Patient.contained[0].telecom[0]', /ele-1/],
  ['a broken rule inside a Bundle entry', { resourceType: 'Bundle', type: 'collection', entry: [{ resource: patient({ birthDate: '2021-02-30' }) }] }, 'Bundle.entry[0].resource.birthDate', /day does not exist/],
];

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
});
