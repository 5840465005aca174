import { MatchResultReader, resultCodeOf } from '../../src/requester/match-result';
import { asContained, planContained } from '../../src/responder/bulk-member-match';
import type { MemberMatchInput } from '../../src/responder/member-match';

const RESULT = 'http://hl7.org/fhir/us/davinci-pdex/CodeSystem/PdexMultiMemberMatchResultCS';
const EXT = 'http://hl7.org/fhir/us/davinci-pdex/StructureDefinition/base-ext-match-parameters';
const COVERAGE_EXT = 'http://hl7.org/fhir/us/davinci-pdex/StructureDefinition/base-ext-match-coverage';
const patient = (id: string, family = 'Same') => ({ resourceType: 'Patient', id, name: [{ family }], birthDate: '1970-01-01' });
const code = (c: string) => ({ coding: [{ system: RESULT, code: c }] });
const entry = (entity: string, pointer: string, coverage?: string) => ({ entity: { reference: entity, extension: [{ url: EXT, valueReference: { reference: pointer } }, ...(coverage ? [{ url: COVERAGE_EXT, valueReference: { reference: coverage } }] : [])] } });

describe('reading a $bulk-member-match answer (requesting side)', () => {
  const submitted = new Map([['t1', 'task-1'], ['t2', 'task-2'], ['t3', 'task-3']]);

  it('correlates by the submitted id alone: identical demographics under two ids are two members', () => {
    const r = new MatchResultReader(submitted);
    r.take({ resourceType: 'Group', id: 'G', type: 'person', actual: true, code: code('match'), contained: [patient('t1'), patient('t2')] as any, member: [entry('Patient/a', '#t1'), entry('Patient/b', '#t2')] } as any);
    r.take({ resourceType: 'Group', type: 'person', actual: true, code: code('nomatch'), contained: [patient('t3')] as any, member: [entry('#t3', '#t3')] } as any);
    expect(Object.fromEntries(r.outcomes())).toEqual({ 'task-1': { memberId: 'a' }, 'task-2': { memberId: 'b' }, 'task-3': { failed: expect.stringMatching(/no unique match/) } });
    expect(r.groupId).toBe('G');
  });

  it('ignores entries whose pointer names no contained Patient or an id it did not submit (no guess by name and birth date)', () => {
    const r = new MatchResultReader(submitted);
    r.take({ resourceType: 'Group', id: 'G', code: code('match'), contained: [patient('member-1')] as any, member: [entry('Patient/a', '#member-1'), entry('Patient/b', '#t2')] } as any);
    expect(r.outcomes().size).toBe(0);
  });

  it('classifies by Group.code, then characteristic (older sources), then the Parameters part name (2.1)', () => {
    expect(resultCodeOf({ resourceType: 'Group', code: code('consentconstraint'), characteristic: [{ code: code('match') }] } as any)).toBe('consentconstraint');
    expect(resultCodeOf({ resourceType: 'Group', characteristic: [{ code: code('nomatch') }] } as any)).toBe('nomatch');
    expect(resultCodeOf({ resourceType: 'Group' } as any, 'ConsentConstrainedMembers')).toBe('consentconstraint');
    expect(resultCodeOf({ resourceType: 'Group', code: { coding: [{ system: 'http://example.org', code: 'match' }] } } as any)).toBeUndefined();
    const r = new MatchResultReader(submitted);
    r.takeParameters({
      resourceType: 'Parameters',
      parameter: [
        { name: 'MatchedMembers', resource: { resourceType: 'Group', id: 'G2', contained: [patient('t1')], member: [entry('Patient/a', '#t1')] } as any },
        { name: 'NonMatchedMembers', resource: { resourceType: 'Group', contained: [patient('t2')], member: [{ entity: { reference: '#t2' } }] } as any },
      ],
    });
    expect(Object.fromEntries(r.outcomes())).toEqual({ 'task-1': { memberId: 'a' }, 'task-2': { failed: expect.stringMatching(/no unique match/) } });
    expect(r.groupId).toBe('G2');
  });

  it('one person answered for two coverages: the match wins; matched to two people, or two members to one person, fails', () => {
    const r = new MatchResultReader(submitted);
    r.take({ resourceType: 'Group', id: 'G', code: code('match'), contained: [patient('t1'), patient('t2'), patient('t3')] as any, member: [entry('Patient/a', '#t1', '#c1'), entry('Patient/b', '#t2'), entry('Patient/c', '#t2'), entry('Patient/d', '#t3')] } as any);
    r.take({ resourceType: 'Group', code: code('nomatch'), contained: [patient('t1')] as any, member: [entry('#t1', '#t1', '#c2')] } as any);
    const out = Object.fromEntries(r.outcomes());
    expect(out['task-1']).toEqual({ memberId: 'a' });
    expect(out['task-2']).toEqual({ failed: expect.stringMatching(/more than one of its members/) });
    expect(out['task-3']).toEqual({ memberId: 'd' });
    const shared = new MatchResultReader(submitted);
    shared.take({ resourceType: 'Group', id: 'G', code: code('match'), contained: [patient('t1'), patient('t2')] as any, member: [entry('Patient/a', '#t1'), entry('Patient/a', '#t2')] } as any);
    expect([...shared.outcomes().values()]).toEqual([{ failed: expect.stringMatching(/another member of the same request/) }, { failed: expect.stringMatching(/another member of the same request/) }]);
  });
});

describe('placing the submitted resources in the result Groups (source side)', () => {
  const input = (p: Record<string, unknown>, coverage: Record<string, unknown> = {}) => ({ patient: { resourceType: 'Patient', ...p }, coverageToMatch: { resourceType: 'Coverage', ...coverage }, consent: { resourceType: 'Consent' } }) as unknown as MemberMatchInput;

  it('keeps submitted ids, gives one to a Patient without, and contains Coverages only for a person in several bundles', () => {
    const { plan, conflict } = planContained([
      input({ id: 'a', name: [{ family: 'A' }] }),
      input({ name: [{ family: 'B' }] }),
      input({ id: 'member-2', name: [{ family: 'C' }] }),
      input({ id: 'd', name: [{ family: 'D' }] }, { id: 'cov', identifier: [{ value: '1' }] }),
      input({ id: 'd', name: [{ family: 'D' }] }, { id: 'cov', identifier: [{ value: '2' }] }),
      input({ id: 'd', name: [{ family: 'D' }] }, { id: 'cov', identifier: [{ value: '1' }] }),
    ]);
    expect(conflict).toBeUndefined();
    expect(plan).toEqual([{ patientId: 'a' }, { patientId: 'member-2-2' }, { patientId: 'member-2' }, { patientId: 'd', coverageId: 'cov' }, { patientId: 'd', coverageId: 'coverage-5' }, { patientId: 'd', coverageId: 'cov' }]);
  });

  it('refuses two different people under one id', () => {
    expect(planContained([input({ id: 'x', name: [{ family: 'A' }] }), input({ id: 'x', name: [{ family: 'B' }] })]).conflict?.text).toMatch(/MemberBundle 2: .*'x' of MemberBundle 1's/);
  });

  it('removes from a contained copy only what R4 forbids there', () => {
    expect(asContained({ resourceType: 'Patient', id: 'p', meta: { versionId: '1', lastUpdated: '2024-01-01T00:00:00Z', security: [{ code: 'R' }], profile: ['x'], tag: [{ code: 't' }] }, contained: [{ resourceType: 'Organization' }], gender: 'male' } as any)).toEqual({ resourceType: 'Patient', id: 'p', meta: { profile: ['x'], tag: [{ code: 't' }] }, gender: 'male' });
    expect(asContained({ resourceType: 'Patient', meta: { versionId: '1' } } as any)).toEqual({ resourceType: 'Patient' });
  });
});
