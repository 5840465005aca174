import type { Consent } from 'fhir/r4';
import { ConsentParties, judgeConsent } from '../../src/responder/consent-policy';
import { completeConsent } from '../../src/requester/consent-completion';
import { hrexExampleConsent, NEW_PLAN_NPI, OLD_PLAN_NPI } from '../helpers/seed';

/** The HRex Consent judged as a source payer judges it: pure, no store, a fixed clock. */
describe('Consent judgement (HRex Consent profile)', () => {
  const now = new Date('2026-06-01T12:00:00Z');
  const OTHER_NPI = { system: 'http://hl7.org/fhir/sid/us-npi', value: '5555555555' };
  const PAYER_ID = { system: 'http://example.org/payer-id', value: 'OLD-1' };
  /** This payer is the old plan, the caller the new plan, a third payer is registered too. */
  const strict: ConsentParties = { source: [OLD_PLAN_NPI], recipient: [NEW_PLAN_NPI], others: [OTHER_NPI] };
  const example = () => hrexExampleConsent({ period: { start: '2026-01-01', end: '2026-12-31' } }) as any;
  const edit = (f: (c: any) => void) => {
    const c = example();
    f(c);
    return c as Consent;
  };
  const role = (code: 'performer' | 'IRCP') => ({ coding: [{ system: code === 'performer' ? 'http://terminology.hl7.org/CodeSystem/provenance-participant-type' : 'http://terminology.hl7.org/CodeSystem/v3-ParticipationType', code }] });

  const cases: [string, Consent, ConsentParties, RegExp | 'regular' | 'sensitive'][] = [
    ["HRex's example, its period covering now", example(), strict, 'regular'],
    ['#sensitive', edit((c) => (c.policy = [{ uri: 'http://hl7.org/fhir/us/davinci-hrex/StructureDefinition-hrex-consent.html#sensitive' }])), strict, 'sensitive'],
    ['a deny', edit((c) => (c.provision.type = 'deny')), strict, /deny/],
    ['no provision.type', edit((c) => delete c.provision.type), strict, /permit/],
    ['no provision', edit((c) => delete c.provision), strict, /provision/],
    ['no period', edit((c) => delete c.provision.period), strict, /period/],
    ['an open end', edit((c) => delete c.provision.period.end), strict, /both a start and an end/],
    ['no start', edit((c) => delete c.provision.period.start), strict, /both a start and an end/],
    ['an expired period', edit((c) => (c.provision.period = { start: '2025-01-01', end: '2026-05-31' })), strict, /ended/],
    ['a period ending today (a date covers its day)', edit((c) => (c.provision.period = { start: '2025-01-01', end: '2026-06-01' })), strict, 'regular'],
    ['a period ending this month (a year-month covers its month)', edit((c) => (c.provision.period = { start: '2025-01-01', end: '2026-06' })), strict, 'regular'],
    ['a period not begun', edit((c) => (c.provision.period = { start: '2026-07-01', end: '2027-01-01' })), strict, /not begun/],
    ['a period ending before it starts', edit((c) => (c.provision.period = { start: '2026-07-01', end: '2026-01-01' })), strict, /ended|before/],
    ['status draft', edit((c) => (c.status = 'draft')), strict, /active/],
    ['no status', edit((c) => delete c.status), strict, /active/],
    ['a policy on another host', edit((c) => (c.policy = [{ uri: 'https://evil.example/StructureDefinition-hrex-consent.html#sensitive' }])), strict, /policy/],
    ['both policies', edit((c) => (c.policy = ['regular', 'sensitive'].map((k) => ({ uri: `http://hl7.org/fhir/us/davinci-hrex/StructureDefinition-hrex-consent.html#${k}` })))), strict, /policy/],
    ['a nested provision (HRex prohibits it)', edit((c) => (c.provision.provision = [{ type: 'deny', class: [{ code: 'Condition' }] }])), strict, /provision\.provision/],
    ['a data period (HRex prohibits it)', edit((c) => (c.provision.dataPeriod = { start: '2025-01-01' })), strict, /dataPeriod/],
    ['an action other than disclose', edit((c) => (c.provision.action = [{ coding: [{ system: 'http://terminology.hl7.org/CodeSystem/consentaction', code: 'collect' }] }])), strict, /disclose/],
    ['no action (tolerated)', edit((c) => delete c.provision.action), strict, 'regular'],
    ['no source actor', edit((c) => (c.provision.actor = c.provision.actor.filter((a: any) => a.role.coding[0].code !== 'performer'))), strict, /no source/],
    ['no recipient actor', edit((c) => (c.provision.actor = c.provision.actor.filter((a: any) => a.role.coding[0].code !== 'IRCP'))), strict, /no recipient/],
    ['another payer as recipient', edit((c) => (c.provision.actor[1].reference.identifier = OTHER_NPI)), strict, /requesting payer as the recipient/],
    ['another payer as source', edit((c) => (c.provision.actor[0].reference.identifier = OTHER_NPI)), strict, /this payer as the source/],
    ['the payers swapped (this payer as recipient only)', edit((c) => ([c.provision.actor[0].reference, c.provision.actor[1].reference] = [c.provision.actor[1].reference, c.provision.actor[0].reference])), strict, /this payer as the source/],
    ['the recipient by name only', edit((c) => delete c.provision.actor[1].reference.identifier), strict, /recipient/],
    ['the recipient with the right value under another system', edit((c) => (c.provision.actor[1].reference.identifier = { system: 'http://example.org/npi', value: NEW_PLAN_NPI.value })), strict, /recipient/],
    ['a role code under another system', edit((c) => (c.provision.actor[0].role = { coding: [{ system: 'http://example.org/roles', code: 'performer' }] })), strict, /no source/],
    [
      'a mutual Consent (both payers in both roles)',
      edit((c) => c.provision.actor.push({ role: role('performer'), reference: { identifier: NEW_PLAN_NPI } }, { role: role('IRCP'), reference: { identifier: OLD_PLAN_NPI } })),
      strict,
      'regular',
    ],
    [
      'this payer named by another of its identifiers, through a contained Organization',
      edit((c) => {
        c.contained = [{ resourceType: 'Organization', id: 'old', identifier: [PAYER_ID] }];
        c.provision.actor[0].reference = { reference: '#old' };
      }),
      { ...strict, source: [OLD_PLAN_NPI, PAYER_ID] },
      'regular',
    ],
    ['a caller without identifiers: judged on the rest', example(), { source: [OLD_PLAN_NPI], recipient: [], others: [OTHER_NPI] }, 'regular'],
    ['a caller without identifiers, the recipient by name only', edit((c) => delete c.provision.actor[1].reference.identifier), { source: [OLD_PLAN_NPI], recipient: [], others: [OTHER_NPI] }, 'regular'],
    ['a caller without identifiers, the recipient another registered payer', edit((c) => (c.provision.actor[1].reference.identifier = OTHER_NPI)), { source: [OLD_PLAN_NPI], recipient: [], others: [OTHER_NPI] }, /another payer/],
    ['a caller without identifiers, still no recipient actor', edit((c) => c.provision.actor.pop()), { source: [], recipient: [] }, /no recipient/],
    ['no identifiers configured for this payer: any source actor', edit((c) => (c.provision.actor[0].reference.identifier = OTHER_NPI)), { source: [], recipient: [NEW_PLAN_NPI] }, 'regular'],
  ];

  it.each(cases)('%s', (_what, consent, parties, expected) => {
    const judged = judgeConsent(consent, now, parties);
    if (typeof expected === 'string') expect(judged).toEqual({ policy: expected });
    else {
      expect(judged).toEqual({ problem: expect.stringMatching(expected) });
      // The reason is about the Consent only: none of its values (identifiers, dates) is echoed.
      expect((judged as { problem: string }).problem).not.toMatch(/\d{4}-\d{2}|5555555555|0123456789|9876543210/);
    }
  });
});

describe('the Consent a requester sends (completed from what the user gave)', () => {
  const now = new Date('2026-06-01T12:00:00Z');
  const seed = { resourceType: 'Consent', policy: [{ uri: 'hrex-consent.html#regular' }] } as Consent;
  const ctx = {
    source: { name: 'Old Health Plan', identifiers: [OLD_PLAN_NPI] },
    recipient: { name: 'New Health Plan', identifiers: [NEW_PLAN_NPI] },
    localPatientUrl: 'https://new-plan.example/4_0_1/Patient/local-123',
    defaultDays: 365,
    now,
  };

  it("completes the seed's example into a Consent this payer, as source, honours", () => {
    const sent = completeConsent(seed, ctx);
    expect(sent).toMatchObject({
      status: 'active',
      scope: { coding: [{ code: 'patient-privacy' }] },
      patient: { reference: ctx.localPatientUrl },
      performer: [{ reference: ctx.localPatientUrl }],
      dateTime: now.toISOString(),
      policy: [{ uri: 'http://hl7.org/fhir/us/davinci-hrex/StructureDefinition-hrex-consent.html#regular' }],
      provision: { type: 'permit', period: { start: '2026-06-01', end: '2027-06-01' }, action: [{ coding: [{ code: 'disclose' }] }] },
    });
    expect(sent.category?.flatMap((c) => c.coding ?? []).map((c) => c.code)).toEqual(['IDSCL', 'payer-to-payer']);
    expect(sent.provision?.actor).toEqual([
      { role: { coding: [{ system: 'http://terminology.hl7.org/CodeSystem/provenance-participant-type', code: 'performer' }] }, reference: { type: 'Organization', identifier: OLD_PLAN_NPI, display: 'Old Health Plan' } },
      { role: { coding: [{ system: 'http://terminology.hl7.org/CodeSystem/v3-ParticipationType', code: 'IRCP' }] }, reference: { type: 'Organization', identifier: NEW_PLAN_NPI, display: 'New Health Plan' } },
    ]);
    expect(judgeConsent(sent, now, { source: [OLD_PLAN_NPI], recipient: [NEW_PLAN_NPI] })).toEqual({ policy: 'regular' });
    expect(seed).toEqual({ resourceType: 'Consent', policy: [{ uri: 'hrex-consent.html#regular' }] }); // the given one is not changed
  });

  it('keeps what the user gave, and completes around it', () => {
    const given = {
      resourceType: 'Consent',
      status: 'draft',
      category: [{ coding: [{ system: 'http://loinc.org', code: '64292-6' }] }],
      policy: [{ uri: 'http://hl7.org/fhir/us/davinci-hrex/StructureDefinition-hrex-consent.html#sensitive' }],
      provision: { period: { start: '2026-05-01' }, actor: [{ role: { coding: [{ system: 'http://terminology.hl7.org/CodeSystem/v3-ParticipationType', code: 'IRCP' }] }, reference: { display: 'Given recipient' } }] },
    } as Consent;
    const sent = completeConsent(given, { ...ctx, memberPatient: { resourceType: 'Patient', id: 'member-1' } });
    expect(sent.status).toBe('draft');
    expect(sent.patient).toEqual({ reference: 'Patient/member-1' });
    expect(sent.category?.flatMap((c) => c.coding ?? []).map((c) => c.code)).toEqual(['64292-6', 'IDSCL', 'payer-to-payer']);
    expect(sent.provision?.period).toEqual({ start: '2026-05-01', end: '2027-05-01' });
    expect(sent.provision?.type).toBe('permit');
    // The recipient given is kept (not added to); the source was missing and is added.
    expect(sent.provision?.actor?.map((a) => a.reference?.display)).toEqual(['Given recipient', 'Old Health Plan']);
    expect(completeConsent({ ...seed, provision: { type: 'deny' } } as Consent, ctx).provision?.type).toBe('deny');
  });

  it('names a payer with several identifiers once per identifier, and one with none by its name', () => {
    const sent = completeConsent(seed, { ...ctx, source: { name: 'Old Health Plan' }, recipient: { name: 'New Health Plan', identifiers: [NEW_PLAN_NPI, { system: 'http://example.org/payer-id', value: 'NEW-1' }] } });
    expect(sent.provision?.actor?.map((a) => [a.role.coding?.[0].code, a.reference?.identifier?.value ?? null, a.reference?.display])).toEqual([
      ['performer', null, 'Old Health Plan'],
      ['IRCP', NEW_PLAN_NPI.value, 'New Health Plan'],
      ['IRCP', 'NEW-1', 'New Health Plan'],
    ]);
  });
});
