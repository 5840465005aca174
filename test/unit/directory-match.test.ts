import type { Coverage, Patient, Resource } from 'fhir/r4';
import { applyAliases, chooseExisting, directoryReferences, MERGED_SYSTEM, isSourcePayerOrganization, matchKeys, memberIdentifiersToAdd, MAX_MATCH_KEYS, NPI_SYSTEM, PRIOR_COVERAGE_TAG, priorCoverage, withIdentifiers } from '../../src/requester/directory-match';

const ORIGIN = 'https://source-payer.example.com/resource-id';
const npi = (value: string) => ({ system: NPI_SYSTEM, value });

describe('matching of directory records (data-mapping steps 3 to 5)', () => {
  it('matches a Practitioner and an Organization by NPI only, a Location by any identifier, never by the origin id', () => {
    const pract = { resourceType: 'Practitioner', id: 'p', identifier: [npi('1900000001'), { system: 'http://state.example/license', value: 'L1' }, { system: ORIGIN, value: 'src-pract-1' }] } as Resource;
    expect(matchKeys(pract, ORIGIN)).toEqual([`${NPI_SYSTEM}|1900000001`]);
    const org = { resourceType: 'Organization', id: 'o', identifier: [{ system: 'urn:oid:2.16.840.1.113883.4.4', value: '12-345' }] } as Resource;
    expect(matchKeys(org, ORIGIN)).toEqual([]);
    const loc = { resourceType: 'Location', id: 'l', identifier: [{ system: 'http://plan.example/site', value: 'S1' }, { system: ORIGIN, value: 'src-loc-1' }] } as Resource;
    expect(matchKeys(loc, ORIGIN)).toEqual(['http://plan.example/site|S1']);
  });

  it('ignores an NPI that is not ten digits, identifiers without a system or value, and bounds the keys of one record', () => {
    const pract = { resourceType: 'Practitioner', identifier: [npi('123'), npi('19000000011'), { value: '1900000001' }, { system: NPI_SYSTEM }] } as Resource;
    expect(matchKeys(pract, ORIGIN)).toEqual([]);
    const many = { resourceType: 'Location', identifier: Array.from({ length: 50 }, (_, i) => ({ system: 'http://x', value: `v${String(i).padStart(2, '0')}` })) } as Resource;
    expect(matchKeys(many, ORIGIN)).toHaveLength(MAX_MATCH_KEYS);
    // The same record always gives the same keys, whatever the order of its identifiers.
    expect(matchKeys({ ...many, identifier: [...(many as any).identifier].reverse() } as Resource, ORIGIN)).toEqual(matchKeys(many, ORIGIN));
  });

  it('keeps a record its own source owns, prefers the one an earlier run matched, then the payer\'s own, then the first by id', () => {
    expect(chooseExisting('own', [])).toBeUndefined();
    expect(chooseExisting('own', [{ id: 'a', payerOwned: true, hasOrigin: false }, { id: 'own', payerOwned: false, hasOrigin: false }])).toBeUndefined();
    expect(chooseExisting('own', [{ id: 'b', payerOwned: false, hasOrigin: false }, { id: 'a', payerOwned: false, hasOrigin: false }])).toBe('a');
    expect(chooseExisting('own', [{ id: 'a', payerOwned: false, hasOrigin: false }, { id: 'z', payerOwned: true, hasOrigin: false }])).toBe('z');
    expect(chooseExisting('own', [{ id: 'a', payerOwned: true, hasOrigin: false }, { id: 'y', payerOwned: false, hasOrigin: true }])).toBe('y');
  });

  it("knows the source payer's Organization by its registered identifiers", () => {
    const registered = [npi('9876543210')];
    expect(isSourcePayerOrganization({ resourceType: 'Organization', identifier: [npi('9876543210')] } as Resource, registered)).toBe(true);
    expect(isSourcePayerOrganization({ resourceType: 'Organization', identifier: [npi('1111111111')] } as Resource, registered)).toBe(false);
    expect(isSourcePayerOrganization({ resourceType: 'Organization', identifier: [npi('9876543210')] } as Resource, [])).toBe(false);
    expect(isSourcePayerOrganization({ resourceType: 'Practitioner', identifier: [npi('9876543210')] } as Resource, registered)).toBe(false);
  });

  it('adds only missing identifiers, each once', () => {
    const rec = { resourceType: 'Practitioner', id: 'e', identifier: [npi('1900000001')] } as Resource;
    expect(withIdentifiers(rec, [npi('1900000001')])).toBeUndefined();
    const grown = withIdentifiers(rec, [{ system: ORIGIN, value: 'x' }, { system: ORIGIN, value: 'x' }, { system: 'http://y' }]) as any;
    expect(grown.identifier).toEqual([npi('1900000001'), { system: ORIGIN, value: 'x' }]);
    expect(withIdentifiers(grown, [{ system: ORIGIN, value: 'x' }])).toBeUndefined();
  });

  it('never matches by the merged-id identifier, and finds the imported directory references of a record', () => {
    expect(matchKeys({ resourceType: 'Location', identifier: [{ system: MERGED_SYSTEM, value: 'p2p-' + 'a'.repeat(40) }] } as Resource, ORIGIN)).toEqual([]);
    const id = 'p2p-' + 'b'.repeat(40);
    const enc = { resourceType: 'Encounter', participant: [{ individual: { reference: `Practitioner/${id}` } }], subject: { reference: `Patient/${id}` }, serviceProvider: { reference: 'Organization/local-1' }, contained: [{ resourceType: 'Location', managingOrganization: { reference: `Organization/${id}` } }] } as Resource;
    expect(directoryReferences(enc)).toEqual([`Practitioner/${id}`, `Organization/${id}`]);
  });

  it('rewrites references to matched records only, and copies nothing when none applies', () => {
    const aliases = new Map([['Practitioner/p2p-b', 'Practitioner/p2p-a']]);
    const enc = { resourceType: 'Encounter', id: 'e', participant: [{ individual: { reference: 'Practitioner/p2p-b', display: 'Practitioner/p2p-b' } }], serviceProvider: { reference: 'Organization/p2p-o' } } as Resource;
    const out = applyAliases(enc, aliases) as any;
    expect(out.participant[0].individual).toEqual({ reference: 'Practitioner/p2p-a', display: 'Practitioner/p2p-b' });
    expect(out.serviceProvider.reference).toBe('Organization/p2p-o');
    expect(applyAliases({ resourceType: 'Encounter', id: 'x', subject: { reference: 'Patient/1' } } as Resource, aliases)).toBeUndefined();
    expect(applyAliases(enc, new Map())).toBeUndefined();
  });
});

describe('imported Coverage and the member identifiers', () => {
  const us = { reference: 'Organization/this-payer', identifiers: [npi('0123456789')] };

  it("keeps the old plan's Coverage with its status and period, tagged as its history", () => {
    const cov = { resourceType: 'Coverage', id: 'c', status: 'active', period: { start: '2019-01-01', end: '2025-12-31' }, beneficiary: { reference: 'Patient/1' }, payor: [{ reference: 'Organization/source-payer-1' }] } as Coverage;
    const kept = priorCoverage(cov, us) as Coverage;
    expect(kept.status).toBe('active');
    expect(kept.period).toEqual(cov.period);
    expect(kept.meta?.tag).toEqual([PRIOR_COVERAGE_TAG]);
    // Tagged once, however often it is imported.
    expect(priorCoverage(kept, us)?.meta?.tag).toEqual([PRIOR_COVERAGE_TAG]);
  });

  it('leaves out a Coverage that names this payer as payor, by reference or by identifier', () => {
    const base = { resourceType: 'Coverage', id: 'c', status: 'active', beneficiary: { reference: 'Patient/1' } } as Coverage;
    expect(priorCoverage({ ...base, payor: [{ reference: 'Organization/this-payer' }] }, us)).toBeUndefined();
    expect(priorCoverage({ ...base, payor: [{ identifier: npi('0123456789') }] }, us)).toBeUndefined();
  });

  it("adds the member's identifiers at the source once, never a second value under a system the Patient has", () => {
    const mb = { type: { coding: [{ system: 'http://terminology.hl7.org/CodeSystem/v2-0203', code: 'MB' }] }, system: 'http://source-payer.example.com/member-id', value: 'M-1' };
    const origin = { system: ORIGIN, value: 'src-pat-1' };
    const local: Patient = { resourceType: 'Patient', identifier: [{ system: 'http://new-plan.example/member-id', value: 'N-9' }] };
    expect(memberIdentifiersToAdd(local, [mb, origin, origin])).toEqual([mb, origin]);
    const after: Patient = { ...local, identifier: [...(local.identifier ?? []), mb, origin] };
    expect(memberIdentifiersToAdd(after, [mb, origin])).toEqual([]);
    // A source cannot give the member another value in this payer's own member system, nor a second id of its own.
    expect(memberIdentifiersToAdd(after, [{ system: 'http://new-plan.example/member-id', value: 'N-1' }, { system: ORIGIN, value: 'other' }, undefined, { value: 'x' }])).toEqual([]);
  });
});
