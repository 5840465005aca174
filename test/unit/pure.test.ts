import { parseFhirDate } from '../../src/fhir/search/fhir-date';
import { compilePath, evaluatePath } from '../../src/fhir/search/fhirpath-lite';
import { allows, grantable } from '../../src/auth/scopes';
import { consentPolicy, isSensitive } from '../../src/responder/consent-policy';
import { matchMember } from '../../src/responder/member-matcher';
import { searchBundle, searchBundleText } from '../../src/fhir/bundle';

describe('FHIR dates as ranges', () => {
  it('covers the whole precision given', () => {
    expect(parseFhirDate('2024')).toEqual({ lo: Date.UTC(2024, 0, 1), hi: Date.UTC(2025, 0, 1) - 1 });
    expect(parseFhirDate('2024-02')).toEqual({ lo: Date.UTC(2024, 1, 1), hi: Date.UTC(2024, 2, 1) - 1 });
    expect(parseFhirDate('2024-02-29T10:00:00+02:00')).toEqual({ lo: Date.UTC(2024, 1, 29, 8), hi: Date.UTC(2024, 1, 29, 8) + 999 });
    expect(parseFhirDate('2024-13')).toBeUndefined();
    expect(parseFhirDate('yesterday')).toBeUndefined();
  });
});

describe('FHIRPath subset of the search parameter expressions', () => {
  it('handles choice types, reference type filters and where() equality', () => {
    const obs = { resourceType: 'Observation', valueQuantity: { value: 5 }, subject: { reference: 'Patient/1' }, performer: [{ reference: 'Practitioner/2' }] };
    expect(evaluatePath(obs, compilePath('(Observation.value as Quantity)') as never)).toEqual([{ value: 5 }]);
    expect(evaluatePath(obs, compilePath('Observation.subject.where(resolve() is Patient)') as never)).toEqual([{ reference: 'Patient/1' }]);
    expect(evaluatePath(obs, compilePath('Observation.performer.where(resolve() is Patient)') as never)).toEqual([]);
    const pat = { telecom: [{ system: 'phone', value: '555' }, { system: 'email', value: 'a@b' }] };
    expect(evaluatePath(pat, compilePath("Patient.telecom.where(system='email')") as never)).toEqual([{ system: 'email', value: 'a@b' }]);
    expect(compilePath('Patient.deceased.exists() and Patient.deceased != false')).toBeNull();
  });
});

describe('SMART scopes', () => {
  it('understands v1 and v2 forms', () => {
    expect(allows('system/*.read', 'Patient', 'r')).toBe(true);
    expect(allows('system/*.read', 'Patient', 'c')).toBe(false);
    expect(allows('system/Patient.rs', 'Patient', 's')).toBe(true);
    expect(allows('system/Patient.rs', 'Coverage', 'r')).toBe(false);
    expect(allows('system/Task.write', 'Task', 'c')).toBe(true);
    expect(grantable('system/Patient.read system/*.write', 'system/*.read')).toEqual(['system/Patient.read']);
    expect(grantable('system/Patient.rs', 'system/*.read')).toEqual(['system/Patient.rs']);
  });
});

describe('consent policy', () => {
  const now = new Date('2026-06-01T00:00:00Z');
  // HRex: status active, a permit with a period that has both ends (an open end is refused).
  const consent = (uri: string, period: { start?: string; end?: string } = { start: '2020-01-01', end: '2999-01-01' }) => ({ resourceType: 'Consent', status: 'active', policy: [{ uri }], provision: { type: 'permit', period } }) as never;
  const hrex = 'http://hl7.org/fhir/us/davinci-hrex/StructureDefinition-hrex-consent.html';
  it('accepts #regular and #sensitive within their period, refuses anything else', () => {
    expect(consentPolicy(consent(`${hrex}#regular`), now)).toEqual({ policy: 'regular' });
    expect(consentPolicy(consent(`${hrex}#sensitive`, { start: '2026-01-01', end: '2026-06-01' }), now)).toEqual({ policy: 'sensitive' });
    expect(consentPolicy(consent(`${hrex}#other`), now)).toHaveProperty('problem');
    expect(consentPolicy(consent(`${hrex}#regular`, { start: '2020-01-01', end: '2026-05-31' }), now)).toHaveProperty('problem');
    expect(consentPolicy(consent(`${hrex}#regular`, { start: '2026-07-01', end: '2027-01-01' }), now)).toHaveProperty('problem');
  });
  it('knows sensitive labels', () => {
    expect(isSensitive({ resourceType: 'Condition', meta: { security: [{ system: 'http://terminology.hl7.org/CodeSystem/v3-ActCode', code: 'HIV' }] } } as never)).toBe(true);
    expect(isSensitive({ resourceType: 'Condition', meta: { security: [{ system: 'http://terminology.hl7.org/CodeSystem/v3-Confidentiality', code: 'N' }] } } as never)).toBe(false);
  });
});

describe('member matcher', () => {
  const patient = (id: string, family: string, given: string, birthDate: string) => ({ resourceType: 'Patient', id, name: [{ family, given: [given] }], birthDate }) as never;
  const coverage = { resourceType: 'Coverage' } as never;
  it('compares demographics without case or accents, and reports why candidates fail', () => {
    const submitted = patient('', 'MULLER', 'zoe', '1980-01-01');
    const result = matchMember(submitted, [
      { coverage, patient: patient('a', 'Müller', 'Zoë', '1980-01-01') },
      { coverage, patient: patient('b', 'Müller', 'Zoë', '1981-01-01') },
    ]);
    expect(result.matched.map((m) => m.patient.id)).toEqual(['a']);
    expect(result.reasons).toEqual(['Patient/b: birth date differs']);
  });
});

describe('searchset Bundles', () => {
  it('as text from stored resources are the Bundle made from the parsed resources, on every page and with warnings', () => {
    const resources = [
      { resourceType: 'Observation', id: 'a', status: 'final', code: { text: 'x "y" \u2028 é' } },
      { resourceType: 'Observation', id: 'b', status: 'final', code: { text: 'z' } },
    ] as never[];
    const matches = resources.map((r: { id: string }) => ({ id: r.id, text: JSON.stringify(r) }));
    const base = 'http://h/4_0_1';
    for (const page of [
      { offset: 0, count: 2, hasMore: true, total: 5, warnings: [] },
      { offset: 2, count: 2, hasMore: false, total: undefined, warnings: ['unknown parameter "q" & <b>'] },
    ]) {
      const args = { base, type: 'Observation', selfParams: [['status', 'final'], ['_count', '2']] as [string, string][], ...page };
      const text = searchBundleText({ ...args, matches });
      expect(text).toBe(JSON.stringify(searchBundle({ ...args, resources })));
      expect(JSON.parse(text).entry[0]).toEqual({ fullUrl: `${base}/Observation/a`, resource: resources[0], search: { mode: 'match' } });
    }
  });
});
