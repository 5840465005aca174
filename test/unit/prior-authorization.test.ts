import { inPayerToPayerScope, priorAuthorizationDocumentation, priorAuthorizationInScope } from '../../src/responder/service-window';

describe('prior authorizations in a payer-to-payer export (PDex §pdex-131, §pdex-132, §pdex-170)', () => {
  const now = Date.parse('2026-12-04T00:00:00Z');
  const pa = (extra: Record<string, unknown>) => ({ resourceType: 'ExplanationOfBenefit', id: 'pa', use: 'preauthorization', status: 'active', outcome: 'complete', billablePeriod: { start: '2015-01-01', end: '2015-01-02' }, meta: { lastUpdated: '2023-03-01T00:00:00Z' }, ...extra });

  it.each([
    ['active, dates of service long past', pa({}), true],
    ['pending (queued), unchanged since 2023', pa({ status: 'draft', outcome: 'queued' }), true],
    ['pending but cancelled, unchanged since 2023', pa({ status: 'cancelled', outcome: 'queued' }), false],
    ['cancelled in 2023, unchanged since', pa({ status: 'cancelled' }), false],
    ['cancelled within the year', pa({ status: 'cancelled', meta: { lastUpdated: '2026-06-01T00:00:00Z' } }), true],
    ['entered in error a year and a day ago', pa({ status: 'entered-in-error', meta: { lastUpdated: '2025-12-03T00:00:00Z' } }), false],
  ])('%s', (_what, resource, expected) => {
    expect(priorAuthorizationInScope(resource, now)).toBe(expected);
    expect(inPayerToPayerScope(resource, Date.parse('2021-12-04T00:00:00Z'), now, new Set())).toBe(expected);
  });

  it('keeps the window for other records, and exempts the documentation of an active authorization', () => {
    const doc = { resourceType: 'DocumentReference', id: 'd1', date: '2015-01-01T00:00:00Z' };
    const from = Date.parse('2021-12-04T00:00:00Z');
    expect(inPayerToPayerScope(doc, from, now, new Set())).toBe(false);
    const documentation = new Set<string>();
    priorAuthorizationDocumentation(pa({ supportingInfo: [{ valueReference: { reference: 'DocumentReference/d1' } }, { valueReference: { reference: 'Condition/c1' } }] }), documentation);
    priorAuthorizationDocumentation(pa({ status: 'cancelled', supportingInfo: [{ valueReference: { reference: 'DocumentReference/d2' } }] }), documentation);
    expect([...documentation]).toEqual(['DocumentReference/d1']);
    expect(inPayerToPayerScope(doc, from, now, documentation)).toBe(true);
    // A claim is windowed as before; no window (a plain export) keeps it.
    const claim = { ...pa({}), use: 'claim' };
    expect(inPayerToPayerScope(claim, from, now, documentation)).toBe(false);
    expect(inPayerToPayerScope(claim, undefined, now, documentation)).toBe(true);
  });
});
