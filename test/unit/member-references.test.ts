import { isMemberReference, parseReference, positionsOf, refusedReference, screenReferences, MemberScope } from '../../src/requester/member-references';
import { agreesWithMember, memberDigest, normalizeFamily } from '../../src/requester/member-demographics';
import { hadOthersRemoved, localForm, OTHERS_REMOVED_TAG } from '../../src/requester/local-form';
import { IdMapping } from '../../src/requester/reference-rewriter';
import { ImportRefused } from '../../src/requester/exchange-errors';

const SOURCE = 'https://source.example.com/fhir';
const LOCAL = 'http://127.0.0.1:8080/4_0_1';
const scope: MemberScope = { sourcePatientId: 'm1', sourceBase: SOURCE, localBase: LOCAL, memberIdentifiers: [{ system: 'https://source.example.com/member-id', value: 'MEM-1' }] };
const obs = (extra: Record<string, unknown>) => ({ resourceType: 'Observation', id: 'o1', status: 'final', code: { text: 'x' }, subject: { reference: 'Patient/m1' }, ...extra });

describe('the reference check, before rewriting', () => {
  it.each([
    ['relative', 'Patient/m1'],
    ['relative, a version', 'Patient/m1/_history/3'],
    ['absolute at the source', `${SOURCE}/Patient/m1`],
    ['absolute at the source, a version', `${SOURCE}/Patient/m1/_history/2`],
  ])('accepts the member: %s', (_name, reference) => {
    expect(isMemberReference(reference, scope)).toBe(true);
    expect(refusedReference(obs({ subject: { reference } }), scope)).toBeUndefined();
  });

  it.each([
    ['another Patient of the source', { subject: { reference: 'Patient/other' } }, /refers to a patient other than the member \(at Observation\.subject\)/],
    ['another Patient at the source base', { subject: { reference: `${SOURCE}/Patient/other` } }, /patient other than the member/],
    ['another Patient, a version', { subject: { reference: 'Patient/other/_history/1' } }, /patient other than the member/],
    ['the member id on another server', { subject: { reference: 'https://elsewhere.example/fhir/Patient/m1' } }, /patient other than the member/],
    ['lower case', { subject: { reference: 'patient/m1' } }, /patient other than the member/],
    ['odd case, absolute', { subject: { reference: `${SOURCE}/PATIENT/other` } }, /patient other than the member/],
    ['percent-encoded', { subject: { reference: 'Pati%65nt/other' } }, /patient other than the member/],
    ['an encoded slash', { subject: { reference: 'Patient%2Fother' } }, /patient other than the member/],
    ['padding', { subject: { reference: ' Patient/m1' } }, /patient other than the member/],
    ['a trailing slash', { subject: { reference: 'Patient/m1/' } }, /patient other than the member/],
    ['dot segments', { subject: { reference: './Patient/other' } }, /patient other than the member/],
    ['conditional', { subject: { reference: 'Patient?identifier=https://source.example.com/member-id|MEM-2' } }, /conditional reference/],
    ['conditional, lower case', { subject: { reference: 'patient?name=Victim' } }, /conditional reference/],
    ['conditional, absolute', { subject: { reference: `${SOURCE}/Patient?identifier=x|y` } }, /conditional reference/],
    ['a record of this server', { hasMember: [{ reference: `${LOCAL}/Observation/local-1` }] }, /refers to a record of this server \(at Observation\.hasMember\[0\]\)/],
    ['a patient of this server', { subject: { reference: `${LOCAL}/Patient/victim-local` } }, /patient other than the member/],
    ['this server as localhost', { hasMember: [{ reference: 'http://localhost:8080/4_0_1/Observation/local-1' }] }, /record of this server/],
    ['this server outside its base', { hasMember: [{ reference: 'http://127.0.0.1:8080/other/Observation/1' }] }, /record of this server/],
    ['inside contained', { contained: [{ resourceType: 'Observation', id: 'c', status: 'final', code: { text: 'y' }, subject: { reference: 'Patient/other' } }] }, /patient other than the member \(at Observation\.contained\[0\]\.subject\)/],
    ['a contained Patient', { contained: [{ resourceType: 'Patient', id: 'p' }], subject: { reference: '#p' } }, /contains a Patient \(at Observation\.contained\[0\]\)/],
    ['in an extension', { extension: [{ url: 'https://x.example/ext', valueReference: { reference: 'Patient/other' } }] }, /patient other than the member \(at Observation\.extension\[0\]\.valueReference\)/],
    ['subject by identifier, another member', { subject: { identifier: { system: 'https://source.example.com/member-id', value: 'MEM-2' } } }, /by identifier to a person other than the member/],
    ['subject by any identifier', { subject: { identifier: { system: 'http://hospital.example/mrn', value: '9' } } }, /by identifier/],
    ['typed Patient, by identifier', { performer: [{ type: 'Patient', identifier: { system: 'http://hospital.example/mrn', value: '9' } }] }, /by identifier/],
    ['typed Patient by canonical, by identifier', { performer: [{ type: 'http://hl7.org/fhir/StructureDefinition/Patient', identifier: { value: '9' } }] }, /by identifier/],
    ["the member's identifier system, another value", { performer: [{ identifier: { system: 'https://source.example.com/member-id', value: 'MEM-2' } }] }, /by identifier/],
    ['typed Patient, another resource', { performer: [{ type: 'Patient', reference: 'Practitioner/d1' }] }, /patient other than the member/],
  ])('refuses %s', (_name, extra, reason) => {
    expect(refusedReference(obs(extra), scope)).toMatch(reason);
  });

  it('leaves references to other records alone', () => {
    const fine = obs({
      performer: [{ reference: 'Practitioner/d1' }, { reference: `${SOURCE}/Organization/o1/_history/2` }, { identifier: { system: 'http://hl7.org/fhir/sid/us-npi', value: '1234567893' } }],
      encounter: { reference: 'Encounter/e1' },
      hasMember: [{ reference: 'https://elsewhere.example/fhir/Observation/x' }, { reference: 'urn:uuid:5b3e1e4a-0000-4000-8000-000000000000' }],
      contained: [{ resourceType: 'Practitioner', id: 'p' }],
      derivedFrom: [{ reference: '#p' }],
      subject: { reference: 'Patient/m1', type: 'Patient' },
      focus: [{ identifier: { system: 'https://source.example.com/member-id', value: 'MEM-1' }, type: 'Patient' }],
    });
    expect(refusedReference(fine, scope)).toBeUndefined();
    // A Coverage's payor by identifier is an organization, not a person.
    expect(refusedReference({ resourceType: 'Coverage', id: 'c', status: 'active', beneficiary: { reference: 'Patient/m1' }, payor: [{ identifier: { value: 'PAYER-1' } }] }, scope)).toBeUndefined();
  });

  it('parses every spelling to the same parts', () => {
    expect(parseReference('Patient/x/_history/2')).toMatchObject({ kind: 'literal', type: 'Patient', id: 'x' });
    expect(parseReference(`${SOURCE}/patient/x`)).toMatchObject({ kind: 'literal', origin: 'https://source.example.com', type: 'patient', id: 'x' });
    expect(parseReference('Patient?identifier=a|b')).toMatchObject({ kind: 'conditional', type: 'Patient' });
    expect(parseReference('#c1').kind).toBe('contained');
  });

  it('refuses through localForm before rewriting, with a reason that repeats nothing the source sent', () => {
    const m: IdMapping = { ...scope, localPatientId: 'local-1', issuer: 'https://source.example.com' };
    expect(() => localForm(obs({ performer: [{ reference: 'patient/victim' }] }) as never, m, 'sys')).toThrow(ImportRefused);
    let message = '';
    try {
      localForm(obs({ subject: { reference: 'patient/victim-xyz' } }) as never, m, 'sys');
    } catch (e) {
      message = (e as Error).message;
    }
    expect(message).toMatch(/patient other than the member/);
    expect(message).not.toContain('victim');
    const ok = localForm(obs({ performer: [{ reference: 'Practitioner/d1' }] }) as never, m, 'sys') as any;
    expect(ok.subject.reference).toBe('Patient/local-1');
    expect(ok.performer[0].reference).toMatch(/^Practitioner\/p2p-[0-9a-f]{40}$/);
  });
});

describe('whom a record is about, and whom it only mentions', () => {
  const m: IdMapping = { ...scope, localPatientId: 'local-1', issuer: 'https://source.example.com' };
  const coverage = (extra: Record<string, unknown> = {}) => ({
    resourceType: 'Coverage', id: 'cov-dep', status: 'active', subscriberId: 'CARD-77', relationship: { coding: [{ code: 'child' }] },
    beneficiary: { reference: 'Patient/m1' }, subscriber: { reference: 'Patient/sub-1', display: 'Sam Subscriber' }, payor: [{ reference: 'Organization/payer' }], ...extra,
  });
  const paths = (steps: any[][]) => steps.map((p) => p.map((x) => x.name).join('.'));

  it("takes the positions from R4's Patient compartment and the source side's about table", () => {
    expect(paths(positionsOf('Coverage').about)).toEqual(['beneficiary']);
    expect(paths(positionsOf('Coverage').mention)).toEqual(expect.arrayContaining(['subscriber', 'policyHolder', 'payor']));
    expect(paths(positionsOf('Observation').about)).toContain('subject');
    expect(paths(positionsOf('Observation').mention)).toContain('performer');
    expect(paths(positionsOf('Consent').mention)).toContain('performer');
    expect(paths(positionsOf('DocumentReference').mention)).toContain('author');
    expect(positionsOf('Practitioner')).toEqual({ about: [], mention: [] });
  });

  it("keeps a dependent's Coverage: the subscriber reference (and its display) not kept, the card number kept, the record tagged", () => {
    expect(refusedReference(coverage(), scope)).toBeUndefined();
    const local = localForm(coverage() as never, m, 'sys') as any;
    expect(local.beneficiary).toEqual({ reference: 'Patient/local-1' });
    expect(local.subscriber).toEqual({ extension: [{ url: 'http://hl7.org/fhir/StructureDefinition/data-absent-reason', valueCode: 'masked' }] });
    expect(local.subscriberId).toBe('CARD-77');
    expect(local.payor[0].reference).toMatch(/^Organization\/p2p-/);
    expect(JSON.stringify(local)).not.toMatch(/sub-1|Sam|Subscriber/);
    expect(hadOthersRemoved(local)).toBe(true);
    // The same Coverage, the subscriber at the source's base: the same.
    expect((localForm(coverage({ subscriber: { reference: `${SOURCE}/Patient/sub-1`, type: 'Patient' } }) as never, m, 'sys') as any).subscriber.reference).toBeUndefined();
  });

  it("keeps an Observation performed by another person and a Consent whose performer is another person, without those references", () => {
    const o = localForm(obs({ performer: [{ reference: 'Patient/other' }, { reference: 'Practitioner/d1' }] }) as never, m, 'sys') as any;
    expect(o.subject.reference).toBe('Patient/local-1');
    expect(o.performer[0].reference).toBeUndefined();
    expect(o.performer[1].reference).toMatch(/^Practitioner\/p2p-/);
    const consent = { resourceType: 'Consent', id: 'c1', status: 'active', scope: { text: 's' }, category: [{ text: 'c' }], patient: { reference: 'Patient/m1' }, performer: [{ reference: 'Patient/guardian' }] };
    const c = localForm(consent as never, m, 'sys') as any;
    expect(c.performer[0].reference).toBeUndefined();
    expect(JSON.stringify(c)).not.toContain('guardian');
  });

  it('does not count a tag the source forged, nor a record it did not change', () => {
    const forged = localForm(obs({ meta: { tag: [{ ...OTHERS_REMOVED_TAG }] } }) as never, m, 'sys') as any;
    expect(hadOthersRemoved(forged)).toBe(false);
  });

  it.each([
    ['the about position names another person', coverage({ beneficiary: { reference: 'Patient/sub-1' } }), /patient other than the member \(at Coverage\.beneficiary\)/],
    ['a record naming only another person, at a mention position', { resourceType: 'Observation', id: 'o', status: 'final', code: { text: 'x' }, performer: [{ reference: 'Patient/other' }] }, /patient other than the member \(at Observation\.performer\[0\]\)/],
    ['a mention in lower case', coverage({ subscriber: { reference: 'patient/sub-1' } }), /patient other than the member/],
    ['a mention in odd case', obs({ performer: [{ reference: 'PaTiEnT/other' }] }), /patient other than the member/],
    ['a mention, percent-encoded', obs({ performer: [{ reference: 'Pati%65nt/other' }] }), /patient other than the member/],
    ['a mention on another server', obs({ performer: [{ reference: 'https://elsewhere.example/fhir/Patient/other' }] }), /patient other than the member/],
    ['a mention of a patient of this server', coverage({ subscriber: { reference: `${LOCAL}/Patient/victim-local` } }), /patient other than the member/],
    ['a conditional mention', coverage({ subscriber: { reference: 'Patient?identifier=x|y' } }), /conditional reference/],
    ['a mention by identifier', coverage({ subscriber: { identifier: { system: 'http://hospital.example/mrn', value: '9' } } }), /by identifier/],
    ['a mention carrying an identifier', coverage({ subscriber: { reference: 'Patient/sub-1', identifier: { value: 'SSN-1' } } }), /patient other than the member/],
    ['a mention typed in lower case', coverage({ subscriber: { reference: 'Patient/sub-1', type: 'patient' } }), /patient other than the member/],
    ['a mention with an extension', coverage({ subscriber: { reference: 'Patient/sub-1', extension: [{ url: 'https://x.example/e', valueString: 'x' }] } }), /patient other than the member/],
    ['a mention inside a contained resource', obs({ contained: [coverage({ id: 'c' })] }), /patient other than the member \(at Observation\.contained\[0\]\.subscriber\)/],
    ['a mention in an extension', obs({ extension: [{ url: 'https://x.example/e', valueReference: { reference: 'Patient/other' } }] }), /patient other than the member/],
    ['a contained Patient beside a mention', coverage({ contained: [{ resourceType: 'Patient', id: 'p' }], subscriber: { reference: '#p' } }), /contains a Patient/],
  ])('still refuses %s', (_name, resource, reason) => {
    expect(refusedReference(resource, scope)).toMatch(reason);
    expect(() => localForm(resource as never, m, 'sys')).toThrow(ImportRefused);
  });

  it("in a group's files, tells a record about a patient outside the group from a hostile one", () => {
    const group: MemberScope = { sourcePatientId: '', members: new Set(['m1', 'm2']), sourceBase: SOURCE, localBase: LOCAL };
    const outside = screenReferences(obs({ subject: { reference: 'Patient/m3' } }), group, { tolerateAbout: true });
    expect(outside.refused).toBeUndefined();
    expect(outside.aboutOthers).toHaveLength(1);
    expect(screenReferences(obs({ subject: { reference: 'Patient/m3' } }), group).refused).toMatch(/patient other than the member/);
    expect(screenReferences(obs({ subject: { reference: 'patient/m3' } }), group, { tolerateAbout: true }).refused).toMatch(/patient other than the member/);
    const mentions = screenReferences(obs({ performer: [{ reference: 'Patient/m2' }, { reference: 'Patient/m3' }] }), group, { tolerateAbout: true });
    expect({ refused: mentions.refused, others: mentions.others.length, namesMember: mentions.namesMember }).toEqual({ refused: undefined, others: 1, namesMember: true });
  });
});

describe("the source's Patient against the submitted member", () => {
  const submitted = { resourceType: 'Parameters' as const, parameter: [{ name: 'MemberPatient', resource: { resourceType: 'Patient' as const, name: [{ family: 'Rivera', given: ['Ana'] }], birthDate: '1975-05-05' } }] };
  const digest = memberDigest(submitted)!;

  it('keeps no readable demographics', () => {
    expect(JSON.stringify(digest)).not.toMatch(/rivera|1975/i);
  });

  it('agrees on family name (case, accents, punctuation aside) and the exact birth date', () => {
    expect(agreesWithMember({ resourceType: 'Patient', name: [{ family: 'RÍVERA' }], birthDate: '1975-05-05' }, digest)).toBe(true);
    expect(agreesWithMember({ resourceType: 'Patient', name: [{ family: 'Smith' }, { family: 'rivera', use: 'old' }], birthDate: '1975-05-05' }, digest)).toBe(true);
    expect(normalizeFamily("Ríos-O'Neil")).toBe(normalizeFamily('RIOS ONEIL'));
  });

  it('disagrees with another person', () => {
    expect(agreesWithMember({ resourceType: 'Patient', name: [{ family: 'Victim' }], birthDate: '1950-01-01' }, digest)).toBe(false);
    expect(agreesWithMember({ resourceType: 'Patient', name: [{ family: 'Rivera' }], birthDate: '1950-01-01' }, digest)).toBe(false);
    expect(agreesWithMember({ resourceType: 'Patient', name: [{ family: 'Victim' }], birthDate: '1975-05-05' }, digest)).toBe(false);
    expect(agreesWithMember({ resourceType: 'Patient', name: [{ family: 'Rivera' }], birthDate: '1975-05' }, digest)).toBe(false);
  });

  it('does not compare what the source leaves out', () => {
    expect(agreesWithMember({ resourceType: 'Patient' }, digest)).toBe(true);
    expect(memberDigest({ resourceType: 'Parameters', parameter: [] })).toBeUndefined();
  });

  it('fails localForm on the wrong person, naming no demographics', () => {
    const m: IdMapping = { ...scope, localPatientId: 'local-1', issuer: 'https://source.example.com', member: digest };
    expect(() => localForm({ resourceType: 'Patient', id: 'm1', name: [{ family: 'Victim' }], birthDate: '1950-01-01' } as never, m, 'sys')).toThrow("the source's Patient does not agree with the submitted member demographics");
    expect(localForm({ resourceType: 'Patient', id: 'm1', name: [{ family: 'Rivera' }], birthDate: '1975-05-05' } as never, m, 'sys')).toBeUndefined();
  });
});
