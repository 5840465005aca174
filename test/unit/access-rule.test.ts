import type { Resource } from 'fhir/r4';
import { SqliteDatabase } from '../../src/store/sqlite/sqlite-database';
import { ResourceStore } from '../../src/store/resource-store';
import { SearchRegistry } from '../../src/fhir/search/registry';
import { RESOURCE_TYPES } from '../../src/fhir/resource-types';
import { PatientCompartment } from '../../src/fhir/compartment';
import { AccessPolicy, AccessScope } from '../../src/access/access-policy';
import { GrantStore } from '../../src/access/grants';
import { ConsentPolicy, consentPolicy, isSensitive, SENSITIVE_SECURITY_TOKENS, withCanonicalPolicy } from '../../src/responder/consent-policy';
import { CLIENT_TAG_SYSTEM } from '../../src/fhir/internal-markers';

/**
 * The partner access rule, case by case: a resource and the partner's grants → visible or not.
 * Each case is judged twice, by `canSee` and by the search filter run on the embedded engine (over
 * the whole type, and pinned to the resource's id), and both must give the expected answer: a
 * search, a count and a read never disagree.
 */
const registry = new SearchRegistry(RESOURCE_TYPES);
const compartment = new PatientCompartment(registry, RESOURCE_TYPES);

/** m1 gave #regular, m3 #sensitive; m2 granted nothing. */
const GRANTS: Record<string, ConsentPolicy> = { m1: 'regular', m3: 'sensitive' };
const ACT = 'http://terminology.hl7.org/CodeSystem/v3-ActCode';
const CONF = 'http://terminology.hl7.org/CodeSystem/v3-Confidentiality';
const p = (id: string) => ({ reference: `Patient/${id}` });
const label = (system: string | undefined, code: string) => ({ meta: { security: [{ ...(system ? { system } : {}), code }] } });
const tag = (client: string) => ({ meta: { tag: [{ system: CLIENT_TAG_SYSTEM, code: client }] } });

type Case = [name: string, resource: Record<string, unknown>, visible: boolean];
let n = 0;
const r = (resourceType: string, body: Record<string, unknown>): Record<string, unknown> => ({ resourceType, id: `r${++n}`, ...body });
const obs = (body: Record<string, unknown>) => r('Observation', { status: 'final', code: { text: 'x' }, ...body });
const cond = (patient: string, extra: Record<string, unknown> = {}) => r('Condition', { subject: p(patient), ...extra });

const eob = (patient: string, extra: Record<string, unknown> = {}) => r('ExplanationOfBenefit', { status: 'active', use: 'claim', patient: p(patient), ...extra });
const prov = (targets: string[], extra: Record<string, unknown> = {}) =>
  r('Provenance', { target: targets.map((reference) => ({ reference })), recorded: '2024-01-01T00:00:00Z', agent: [{ who: { reference: 'Organization/o' } }], ...extra });
/** Records of members that Provenance cases below target (stored before them: the cases are stored in order). */
const EOB_M1 = eob('m1');
const EOB_M2 = eob('m2');
const EOB_M3_SENSITIVE = eob('m3', label(ACT, 'HIV'));
const DEVICE_M1 = r('Device', { patient: p('m1') });
const DISPENSE_M1 = r('MedicationDispense', { status: 'completed', medicationCodeableConcept: { text: 'x' }, subject: p('m1') });
const ref = (res: Record<string, unknown>) => `${res.resourceType}/${res.id}`;

const SENSITIVE_SPELLINGS: [string | undefined, string][] = [
  ['urn:oid:2.16.840.1.113883.5.4', 'HIV'],
  [ACT, 'ETHUD'], [ACT, 'BH'], [ACT, 'OPIOIDUD'], [ACT, 'SICKLE'], [ACT, '42CFRPart2'], [ACT, 'SUD'], [ACT, 'MH'], [ACT, 'PSYTHPN'],
  [ACT, 'STD'], [ACT, 'SEX'], [ACT, 'SDV'], [ACT, 'GDIS'], [ACT, 'DRGIS'], [ACT, 'CEL'], [ACT, 'COMPT'], [ACT, 'TBOO'],
  ['http://hl7.org/fhir/v3/ActCode', 'PSY'],
  [CONF, 'R'], [CONF, 'V'], ['urn:oid:2.16.840.1.113883.5.25', 'R'], ['http://hl7.org/fhir/v3/Confidentiality', 'V'],
  [undefined, 'ETH'], [undefined, 'R'],
];

const CASES: Case[] = [
  ['Patient granted', r('Patient', { id: 'm1' }), true],
  ['Patient not granted', r('Patient', { id: 'm2' }), false],
  ['Patient labelled R, #regular', r('Patient', { id: 'm1', ...label(CONF, 'R') }), false],
  ['Patient labelled R, #sensitive', r('Patient', { id: 'm3', ...label(CONF, 'R') }), true],
  // (a) about, not mention
  ['Observation about m1', obs({ subject: p('m1') }), true],
  ['Observation about m2 performed by m1', obs({ subject: p('m2'), performer: [p('m1')] }), false],
  ['Observation about m1 performed by m2', obs({ subject: p('m1'), performer: [p('m2')] }), true],
  ['Observation with only a performer', obs({ performer: [p('m1')] }), false],
  ['Observation about a Group', obs({ subject: { reference: 'Group/g1' } }), false],
  ['Observation about m1 by absolute URL', obs({ subject: { reference: 'https://payer.example.com/fhir/Patient/m1' } }), true],
  ['Coverage of dependent m2, subscriber m1', r('Coverage', { status: 'active', beneficiary: p('m2'), subscriber: p('m1'), payor: [{ reference: 'Organization/o' }] }), false],
  ['Coverage of m1, subscriber m2', r('Coverage', { status: 'active', beneficiary: p('m1'), subscriber: p('m2'), payor: [{ reference: 'Organization/o' }] }), true],
  ['Condition about m2 asserted by m1', cond('m2', { asserter: p('m1') }), false],
  ['DocumentReference about m2 authored by m1', r('DocumentReference', { status: 'current', content: [{ attachment: {} }], subject: p('m2'), author: [p('m1')] }), false],
  ['Encounter about m2', r('Encounter', { status: 'finished', class: { code: 'AMB' }, subject: p('m2') }), false],
  ['MedicationDispense about m1', r('MedicationDispense', { status: 'completed', medicationCodeableConcept: { text: 'x' }, subject: p('m1') }), true],
  ['CarePlan about m2 performed by m1', r('CarePlan', { status: 'active', intent: 'plan', subject: p('m2'), activity: [{ detail: { status: 'completed', performer: [p('m1')] } }] }), false],
  ['Provenance about m1 and m3', r('Provenance', { target: [p('m1'), p('m3')], recorded: '2024-01-01T00:00:00Z', agent: [{ who: { reference: 'Organization/o' } }] }), true],
  ['Provenance about m1 and m2', r('Provenance', { target: [p('m1'), p('m2')], recorded: '2024-01-01T00:00:00Z', agent: [{ who: { reference: 'Organization/o' } }] }), false],
  ['sensitive Provenance about m1 and m3', r('Provenance', { target: [p('m1'), p('m3')], recorded: '2024-01-01T00:00:00Z', agent: [{ who: { reference: 'Organization/o' } }], ...label(ACT, 'HIV') }), false],
  ['sensitive Provenance about m3', r('Provenance', { target: [p('m3')], recorded: '2024-01-01T00:00:00Z', agent: [{ who: { reference: 'Organization/o' } }], ...label(ACT, 'HIV') }), true],
  ['sensitive Observation about m1 performed by m3', obs({ subject: p('m1'), performer: [p('m3')], ...label(ACT, 'HIV') }), false],
  // (c) every spelling of a sensitive label
  ...SENSITIVE_SPELLINGS.flatMap(([system, code]): Case[] => [
    [`${system ?? '(no system)'}|${code} under #regular`, cond('m1', label(system, code)), false],
    [`${system ?? '(no system)'}|${code} under #sensitive`, cond('m3', label(system, code)), true],
  ]),
  ['Confidentiality N under #regular', cond('m1', label(CONF, 'N')), true],
  ['HIV in an unknown system under #regular', cond('m1', label('http://example.org/labels', 'HIV')), true],
  ['ActCode R (not a sensitivity code) under #regular', cond('m1', label(ACT, 'R')), true],
  // Directory data, and what a partner never sees
  ['Practitioner', r('Practitioner', {}), true],
  ['sensitive Organization', r('Organization', label(CONF, 'R')), false],
  ['Task for m1', r('Task', { status: 'requested', intent: 'order', for: p('m1') }), false],
  ['AuditEvent about m1', r('AuditEvent', { type: { code: 'x' }, recorded: '2024-01-01T00:00:00Z', agent: [{ requestor: true, who: p('m1') }], source: { observer: { display: 'x' } }, entity: [{ what: p('m1') }] }), false],
  // Device: its patient's (R4's compartment leaves it out; PDex counts it the member's)
  ['Device of m1', DEVICE_M1, true],
  ['Device of m2', r('Device', { patient: p('m2') }), false],
  ['Device of no one', r('Device', {}), false],
  ['sensitive Device of m1', r('Device', { patient: p('m1'), ...label(CONF, 'R') }), false],
  // Provenance: about whom its targets are about
  ['EOB of m1', EOB_M1, true],
  ['EOB of m2', EOB_M2, false],
  ['sensitive EOB of m3', EOB_M3_SENSITIVE, true],
  ['MedicationDispense of m1 (a target)', DISPENSE_M1, true],
  ['Provenance of m1\'s EOB', prov([ref(EOB_M1)]), true],
  ['Provenance of m1\'s EOB by absolute URL', prov([`https://payer.example.com/fhir/${ref(EOB_M1)}`]), true],
  ['Provenance of m2\'s EOB', prov([ref(EOB_M2)]), false],
  ['Provenance of m1\'s and m2\'s EOBs', prov([ref(EOB_M1), ref(EOB_M2)]), false],
  ['Provenance of m1\'s EOB and m2', prov([ref(EOB_M1), 'Patient/m2']), false],
  ['Provenance of m1\'s EOB and m3\'s sensitive EOB', prov([ref(EOB_M1), ref(EOB_M3_SENSITIVE)]), true],
  ['sensitive Provenance of m1\'s EOB', prov([ref(EOB_M1)], label(ACT, 'HIV')), false],
  ['Provenance of m1\'s Device, dispense and an Organization', prov([ref(DEVICE_M1), ref(DISPENSE_M1), 'Organization/o']), true],
  ['Provenance of m1\'s EOB and a Bundle', prov([ref(EOB_M1), 'Bundle/b1']), true],
  ['Provenance of an Organization only (directory data)', prov(['Organization/o']), false],
  ['Provenance of an EOB not stored here', prov(['ExplanationOfBenefit/nowhere']), false],
  ['Provenance of m1\'s EOB and one not stored here', prov([ref(EOB_M1), 'ExplanationOfBenefit/nowhere']), false],
  ['Provenance of another server\'s Patient only by a search URL', prov(['Patient?identifier=x']), false],
  // Consents: its own only
  ['its own Consent for m1', r('Consent', { status: 'active', scope: { text: 'x' }, category: [{ text: 'x' }], patient: p('m1'), ...tag('partner') }), true],
  ['another client\'s Consent for m1', r('Consent', { status: 'active', scope: { text: 'x' }, category: [{ text: 'x' }], patient: p('m1'), ...tag('other') }), false],
  ['its own Consent moved to m2', r('Consent', { status: 'active', scope: { text: 'x' }, category: [{ text: 'x' }], patient: p('m2'), ...tag('partner') }), false],
  // (b) Groups
  ['Group of m1 and m2', r('Group', { type: 'person', actual: true, quantity: 2, member: [{ entity: p('m1') }, { entity: p('m2') }] }), true],
  ['Group of m2', r('Group', { type: 'person', actual: true, member: [{ entity: p('m2') }] }), false],
  ['sensitive Group of m1', r('Group', { type: 'person', actual: true, member: [{ entity: p('m1') }], ...label(ACT, 'PSY') }), false],
  ['its own result Group listing m2', r('Group', { type: 'person', actual: true, member: [{ entity: p('m2') }], ...tag('partner') }), true],
  ['another client\'s result Group listing m1', r('Group', { type: 'person', actual: true, member: [{ entity: p('m1') }], ...tag('other') }), false],
];

function grantStore(grants: Record<string, ConsentPolicy>): GrantStore {
  return { activeFor: async () => new Map(Object.entries(grants)) } as unknown as GrantStore;
}

describe('partner access rule', () => {
  let db: SqliteDatabase;
  let store: ResourceStore;
  let scope: AccessScope;
  const byType = new Map<string, Record<string, unknown>[]>();

  beforeAll(async () => {
    db = new SqliteDatabase(undefined);
    store = new ResourceStore(db, registry);
    scope = await new AccessPolicy(grantStore(GRANTS), compartment).scopeFor({ clientId: 'partner', role: 'partner' });
    for (const [, resource] of CASES) {
      // A Patient case's id is its member: give each its own id and keep the member in the map.
      const stored = { ...resource };
      if (stored.resourceType === 'Patient') stored.id = `${resource.id}`;
      byType.set(String(stored.resourceType), [...(byType.get(String(stored.resourceType)) ?? []), stored]);
    }
  });
  afterAll(async () => db.close());

  it.each(CASES.filter(([, res]) => res.resourceType !== 'Patient').map(([name, res, visible]) => [name, visible ? 'visible' : 'hidden', res, visible] as const))('%s → %s', async (_name, _word, resource, visible) => {
    await store.update(String(resource.resourceType), String(resource.id), resource as never);
    // Judged as a read hands it out (a Provenance's members are derived by the store).
    expect(scope.canSee(await store.read(String(resource.resourceType), String(resource.id)))).toBe(visible);
    const filter = scope.filter(String(resource.resourceType));
    const pinned = filter === null ? [] : await store.search(String(resource.resourceType), { $and: [{ _id: { $in: [resource.id] } }, filter] });
    expect(pinned.map((x) => x.id)).toEqual(visible ? [resource.id] : []);
  });

  it('Patients: a read, a search and a count agree', async () => {
    // Patients are their own members, so each case is judged on its own in a fresh store.
    for (const [name, resource, visible] of CASES.filter(([, res]) => res.resourceType === 'Patient')) {
      const one = new SqliteDatabase(undefined);
      const s = new ResourceStore(one, registry);
      await s.update('Patient', String(resource.id), resource as never);
      const filter = scope.filter('Patient') ?? {};
      expect({ name, canSee: scope.canSee(resource as never), found: (await s.count('Patient', filter)) === 1 }).toEqual({ name, canSee: visible, found: visible });
      await one.close();
    }
  });

  it('a search of each whole type finds exactly the visible cases, so totals count only them', async () => {
    for (const [type] of byType) {
      if (type === 'Patient') continue;
      const filter = scope.filter(type);
      const found = filter === null ? [] : (await store.search(type, filter)).map((x) => x.id).sort();
      const expected = CASES.filter(([, res, visible]) => res.resourceType === type && visible).map(([, res]) => res.id).sort();
      expect({ type, found }).toEqual({ type, found: expected });
      expect({ type, total: filter === null ? 0 : await store.count(type, filter) }).toEqual({ type, total: expected.length });
    }
  });

  it('a Group reaches a partner with only the members it may see, its own result Groups whole', () => {
    const [, mixed] = CASES.find(([name]) => name === 'Group of m1 and m2') as Case;
    const shown = scope.view(mixed as never) as any;
    expect(shown.member).toEqual([{ entity: p('m1') }]);
    expect(shown.quantity).toBe(1);
    expect(shown.meta.security).toContainEqual({ system: 'http://terminology.hl7.org/CodeSystem/v3-ObservationValue', code: 'REDACTED' });
    expect((mixed as any).member).toHaveLength(2); // the stored resource is untouched
    const [, own] = CASES.find(([name]) => name === 'its own result Group listing m2') as Case;
    expect(scope.view(own as never)).toBe(own);
  });

  it('narrowed to one member, a scope sees nothing of the others', async () => {
    const m1Only = scope.only(['m1']);
    expect(m1Only.canSee(cond('m3') as never)).toBe(false);
    expect(m1Only.canSee(cond('m1') as never)).toBe(true);
    const group = r('Group', { type: 'person', actual: true, member: [{ entity: p('m1') }, { entity: p('m3') }] });
    expect((m1Only.view(group as never) as any).member).toEqual([{ entity: p('m1') }]);
    const none = await new AccessPolicy(grantStore({}), compartment).scopeFor({ clientId: 'partner', role: 'partner' });
    expect(none.filter('Observation')).toBeNull();
    expect(none.canSee(obs({ subject: p('m1') }) as never)).toBe(false);
  });

  it('the search tokens and the predicate come from one list', () => {
    for (const token of SENSITIVE_SECURITY_TOKENS) {
      const [system, code] = token.split('|');
      expect({ token, sensitive: isSensitive({ resourceType: 'Basic', meta: { security: [{ ...(system ? { system } : {}), code }] } } as Resource) }).toEqual({ token, sensitive: true });
    }
  });
});

describe('consent policies by their canonical URL', () => {
  const HREX = 'http://hl7.org/fhir/us/davinci-hrex/StructureDefinition-hrex-consent.html';
  const now = new Date('2026-06-01T00:00:00Z');
  // A permit with a bounded period (HRex requires both), so that only the policy is judged here.
  const consent = (...uris: string[]) => ({ resourceType: 'Consent', status: 'active', policy: uris.map((uri) => ({ uri })), provision: { type: 'permit', period: { start: '2020-01-01', end: '2999-01-01' } } }) as never;

  it.each([
    [`${HREX}#regular`, 'regular'],
    [`${HREX}#sensitive`, 'sensitive'],
    ['https://evil.example/anything#sensitive', undefined],
    ['https://hl7.org/fhir/us/davinci-hrex/StructureDefinition-hrex-consent.html#sensitive', undefined],
    [`${HREX}#sensitive?x`, undefined],
    ['hrex-consent.html#sensitive', undefined],
    ['#regular', undefined],
    [`${HREX.toUpperCase()}#REGULAR`, undefined],
  ])('%s → %s', (uri, policy) => {
    const judged = consentPolicy(consent(uri), now);
    expect(judged).toEqual(policy ? { policy } : { problem: expect.any(String) });
  });

  it('a requester sends the canonical URL for a shorthand, and another policy as given (for the source to refuse)', () => {
    const sent = (uri: string) => (withCanonicalPolicy(consent(uri)) as any).policy;
    expect(sent('hrex-consent.html#sensitive')).toEqual([{ uri: `${HREX}#sensitive` }]);
    expect(sent('StructureDefinition-hrex-consent.html#regular')).toEqual([{ uri: `${HREX}#regular` }]);
    expect(sent('#regular')).toEqual([{ uri: `${HREX}#regular` }]);
    expect(sent(`${HREX}#regular`)).toEqual([{ uri: `${HREX}#regular` }]);
    expect(sent('https://evil.example/hrex-consent.html#sensitive')).toEqual([{ uri: 'https://evil.example/hrex-consent.html#sensitive' }]);
    expect(consentPolicy(withCanonicalPolicy(consent('hrex-consent.html#sensitive')), now)).toEqual({ policy: 'sensitive' });
  });
});

describe('a Provenance follows its targets', () => {
  const judge = async (store: ResourceStore, scope: AccessScope, id: string) => {
    const filter = scope.filter('Provenance');
    return { read: scope.canSee(await store.read('Provenance', id)), found: filter ? (await store.count('Provenance', { $and: [{ _id: id }, filter] })) === 1 : false };
  };
  const claim = (id: string, patient: string) => ({ resourceType: 'ExplanationOfBenefit', id, status: 'active', use: 'claim', patient: p(patient) }) as any;
  const provenanceOf = (id: string, target: string) => ({ resourceType: 'Provenance', id, target: [{ reference: target }], recorded: '2024-01-01T00:00:00Z', agent: [{ who: { reference: 'Organization/o' } }] }) as any;

  it('stored before its target, it is the member\'s once the target is; a target moved to another member takes it along', async () => {
    const db = new SqliteDatabase(undefined);
    const store = new ResourceStore(db, registry);
    const scope = await new AccessPolicy(grantStore(GRANTS), compartment).scopeFor({ clientId: 'partner', role: 'partner' });
    await store.update('Provenance', 'pv', provenanceOf('pv', 'ExplanationOfBenefit/e1'));
    expect(await judge(store, scope, 'pv')).toEqual({ read: false, found: false });
    await store.update('ExplanationOfBenefit', 'e1', claim('e1', 'm1'));
    expect(await judge(store, scope, 'pv')).toEqual({ read: true, found: true });
    expect((await store.read('Provenance', 'pv')).meta?.versionId).toBe('1'); // no new version
    await store.update('ExplanationOfBenefit', 'e1', claim('e1', 'm2'));
    expect(await judge(store, scope, 'pv')).toEqual({ read: false, found: false });
    // Imported in batches (the requesting side's import) and in a transaction, the same.
    await store.update('Provenance', 'pb', provenanceOf('pb', 'ExplanationOfBenefit/e2'));
    const claims = [claim('e2', 'm1')];
    await store.applyWrites('ExplanationOfBenefit', await store.planWrites('ExplanationOfBenefit', claims));
    expect(await judge(store, scope, 'pb')).toEqual({ read: true, found: true });
    await store.transact([
      { kind: 'create', type: 'Provenance', id: 'pt', resource: provenanceOf('pt', 'ExplanationOfBenefit/e3') },
      { kind: 'create', type: 'ExplanationOfBenefit', id: 'e3', resource: claim('e3', 'm1') },
    ]);
    expect(await judge(store, scope, 'pt')).toEqual({ read: true, found: true });
    await db.close();
  });

  it('a version from the history is judged by its Patient targets; another member record it targets is unknown there', () => {
    const scope = new AccessPolicy(grantStore(GRANTS), compartment).scopeFor({ clientId: 'partner', role: 'partner' });
    return scope.then((s) => {
      expect(s.canSee(provenanceOf('h1', 'Patient/m1'))).toBe(true);
      expect(s.canSee(provenanceOf('h2', 'ExplanationOfBenefit/e1'))).toBe(false);
    });
  });
});

describe('grants follow their Consent', () => {
  it('a Consent moved to another patient revokes its grant; a changed policy applies', async () => {
    const db = new SqliteDatabase(undefined);
    const grants = new GrantStore(db);
    const given = { resourceType: 'Consent', id: 'c1', status: 'active', scope: { text: 'x' }, category: [{ text: 'x' }], patient: p('m1'), policy: [{ uri: 'http://hl7.org/fhir/us/davinci-hrex/StructureDefinition-hrex-consent.html#regular' }], provision: { type: 'permit', period: { start: '2020-01-01', end: '2999-01-01' } } } as any;
    await grants.grant('partner', 'm1', given);
    await grants.consentChanged('c1', { ...given, policy: [{ uri: 'http://hl7.org/fhir/us/davinci-hrex/StructureDefinition-hrex-consent.html#sensitive' }] });
    expect([...(await grants.activeFor('partner'))]).toEqual([['m1', 'sensitive']]);
    await grants.consentChanged('c1', { ...given, patient: p('m2') });
    expect([...(await grants.activeFor('partner'))]).toEqual([]);
    // Moving it back grants nothing again: only a new match does.
    await grants.consentChanged('c1', given);
    expect([...(await grants.activeFor('partner'))]).toEqual([]);
    await db.close();
  });
});
