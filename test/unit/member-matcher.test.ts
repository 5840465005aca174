import type { Coverage, HumanName, Patient } from 'fhir/r4';
import { demographicsAgree, matchMember, matchRequest, MAX_MEMBER_NAMES } from '../../src/responder/member-matcher';

/** The pure matching rule: what a request must carry, and what of it is compared with a candidate. */
const SYSTEM = 'http://payer.example/member-id';
const person = (names: HumanName[], birthDate?: string, extra: Partial<Patient> = {}): Patient => ({ resourceType: 'Patient', name: names, ...(birthDate ? { birthDate } : {}), ...extra });
const rivera = person([{ family: 'Rivera', given: ['Ana'] }], '1975-05-05', { gender: 'female' });
const coverage = (c: Partial<Coverage>): Coverage => ({ resourceType: 'Coverage', ...c }) as Coverage;
const ids = (...values: string[]) => values.map((value) => ({ system: SYSTEM, value }));

describe('matchRequest: one member identifier, a family name and a full birth date', () => {
  it('takes one identifier, the same value given as identifier and subscriberId, or a subscriberId alone', () => {
    expect(matchRequest(rivera, coverage({ identifier: ids('M-1') }))).toEqual({ ok: true, tried: 1, key: { value: 'M-1', system: SYSTEM, inIdentifier: true, asSubscriberId: false } });
    expect(matchRequest(rivera, coverage({ identifier: [...ids('M-1'), ...ids(' M-1 ')], subscriberId: 'M-1' }))).toMatchObject({ ok: true, key: { value: 'M-1', inIdentifier: true, asSubscriberId: true } });
    expect(matchRequest(rivera, coverage({ subscriberId: 'S-1' }), SYSTEM)).toMatchObject({ ok: true, key: { value: 'S-1', inIdentifier: false, asSubscriberId: true } });
  });

  it('refuses several identifiers, counting each one put forward', () => {
    const many = Array.from({ length: 10_000 }, (_, i) => ({ value: `G-${i}` }));
    expect(matchRequest(rivera, coverage({ identifier: many }))).toMatchObject({ ok: false, tried: 10_000 });
    expect(matchRequest(rivera, coverage({ identifier: ids(...Array.from({ length: 50 }, (_, i) => `G-${i}`)) }))).toMatchObject({ ok: false, tried: 50 });
    // A subscriberId beside an identifier (HRex's Coverage example has both) is a condition, not a second candidate.
    expect(matchRequest(rivera, coverage({ identifier: ids('M-1'), subscriberId: 'S-2' }))).toEqual({ ok: true, tried: 1, key: { value: 'M-1', system: SYSTEM, inIdentifier: true, asSubscriberId: false, requireSubscriberId: 'S-2' } });
    expect(matchRequest(rivera, coverage({ identifier: ids('M-1', 'M-2'), subscriberId: 'S-2' }))).toMatchObject({ ok: false, tried: 2 });
    expect(matchRequest(rivera, coverage({}))).toMatchObject({ ok: false, tried: 1 });
    expect(matchRequest(rivera, coverage({ identifier: [{ system: SYSTEM, value: 'M-1' }, { system: 'urn:other', value: 'M-1' }] }))).toMatchObject({ ok: false, tried: 2 });
  });

  it('where the payer declares its member id system, an identifier must carry it', () => {
    expect(matchRequest(rivera, coverage({ identifier: [{ value: 'M-1' }] }), SYSTEM)).toMatchObject({ ok: false, tried: 1 });
    expect(matchRequest(rivera, coverage({ identifier: [{ system: 'urn:other', value: 'M-1' }] }), SYSTEM)).toMatchObject({ ok: false, tried: 1 });
    expect(matchRequest(rivera, coverage({ identifier: ids('M-1') }), SYSTEM)).toMatchObject({ ok: true });
    // Without a declared system, a system-less identifier is looked up under any system.
    expect(matchRequest(rivera, coverage({ identifier: [{ value: 'M-1' }] }))).toMatchObject({ ok: true, key: { value: 'M-1', system: undefined } });
  });

  it('needs a family name and a full birth date, and at most a few names', () => {
    const one = coverage({ identifier: ids('M-1') });
    const problem = (p: Patient) => {
      const r = matchRequest(p, one);
      return r.ok ? undefined : r.problem;
    };
    expect(problem(person([], '1975-05-05'))).toMatch(/family name/);
    expect(problem(person([{ given: ['Ana'] }], '1975-05-05'))).toMatch(/family name/);
    expect(problem(person([{ family: 'Rivera' }]))).toMatch(/birth date/);
    expect(problem(person([{ family: 'Rivera' }], '1975'))).toMatch(/full date/);
    expect(problem(person(Array.from({ length: MAX_MEMBER_NAMES + 1 }, () => ({ family: 'Rivera' })), '1975-05-05'))).toMatch(/names/);
    expect(problem(person(Array.from({ length: MAX_MEMBER_NAMES }, () => ({ family: 'Rivera' })), '1975-05-05'))).toBeUndefined();
  });
});

describe('demographicsAgree: the primary family and the birth date always, given and gender where submitted', () => {
  const candidate = person([{ family: 'Rivera', given: ['Ana'] }, { family: 'Gómez', given: ['Ana'] }], '1975-05-05', { gender: 'female' });
  it('agrees on the member, without case or accents, by any of the candidate\'s families', () => {
    expect(demographicsAgree(person([{ family: 'RIVERA', given: ['ana'] }], '1975-05-05'), candidate)).toBeUndefined();
    expect(demographicsAgree(person([{ family: 'gomez' }], '1975-05-05', { gender: 'female' }), candidate)).toBeUndefined();
  });
  it('compares only the official (else first) family: a list of families is not a search', () => {
    expect(demographicsAgree(person([{ family: 'Smith' }, { family: 'Rivera' }], '1975-05-05'), candidate)).toBe('family name differs');
    expect(demographicsAgree(person([{ family: 'Smith' }, { use: 'official', family: 'Rivera' }], '1975-05-05'), candidate)).toBeUndefined();
    expect(demographicsAgree(person([{ use: 'official', family: 'Smith' }, { family: 'Rivera' }], '1975-05-05'), candidate)).toBe('family name differs');
  });
  it('needs the birth date to be the same, and checks given name and gender where given', () => {
    expect(demographicsAgree(person([{ family: 'Rivera' }], '1975-05-06'), candidate)).toBe('birth date differs');
    expect(demographicsAgree(person([{ family: 'Rivera' }], '1975-05-05'), { ...candidate, birthDate: undefined })).toBe('birth date differs');
    expect(demographicsAgree(person([{ family: 'Rivera', given: ['Maria'] }], '1975-05-05'), candidate)).toBe('given name differs');
    expect(demographicsAgree(person([{ family: 'Rivera' }], '1975-05-05', { gender: 'male' }), candidate)).toBe('gender differs');
  });
  it('matches nobody for a MemberPatient without a birth date, or with 21 families', () => {
    const c = [{ coverage: coverage({}), patient: { ...candidate, id: 'p1' } }];
    expect(matchMember(person([{ family: 'Rivera' }]), c).matched).toEqual([]);
    const families = ['Smith', 'Johnson', 'Williams', 'Brown', 'Jones', 'Garcia', 'Miller', 'Davis', 'Rodriguez', 'Martinez', 'Hernandez', 'Lopez', 'Gonzalez', 'Wilson', 'Anderson', 'Thomas', 'Taylor', 'Moore', 'Jackson', 'Martin', 'Rivera'];
    expect(matchMember(person(families.map((family) => ({ family })), '1975-05-05'), c).matched).toEqual([]);
    expect(matchMember(person([{ family: 'Rivera' }], '1975-05-05'), c).matched.map((m) => m.patient.id)).toEqual(['p1']);
  });
});
