/**
 * Resources the R4 JSON schema accepts and R4 refuses (issue 24): each with the element the refusal
 * must name and what it must say. Shared by the unit test of the rules and the HTTP tests of writes.
 */
export const patient = (x: Record<string, unknown>) => ({ resourceType: 'Patient', ...x });
export const observation = (x: Record<string, unknown>) => ({ resourceType: 'Observation', status: 'final', code: { text: 'x' }, ...x });
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


/**
 * A resource as the JSON text a client or a source sends: a number JSON cannot hold exactly is
 * written as it was meant (Infinity as `1e400`, the rounded 2^53 as `9007199254740993`), as
 * JSON.stringify would otherwise write null or the rounded number.
 */
export function asSent(resource: unknown): string {
  return JSON.stringify(resource, (_k, v) => (v === Infinity ? '@@1e400@@' : v === 9007199254740992 ? '@@9007199254740993@@' : v)).replace(/"@@([0-9e]+)@@"/g, '$1');
}
