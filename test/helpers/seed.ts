import type { Resource } from 'fhir/r4';
import { generatePopulation, SyntheticMember } from '../../scripts/synthetic';
import { RunningServer } from '../../src/main';

/** Seeds a server's store with the synthetic population (the same data `npm run seed` sends over HTTP). */
export async function seedPopulation(server: RunningServer, members: number, prefix = 'src', memberSystem = 'http://source-payer.example.com/member-id'): Promise<SyntheticMember[]> {
  const { resources, members: list } = generatePopulation({ members, prefix, memberSystem });
  for (const r of resources) await server.store.update(r.resourceType, r.id as string, r as Resource);
  return list;
}

/** The NPIs of HRex's member-match example: the old (source) and the new (requesting) health plan. */
export const OLD_PLAN_NPI = { system: 'http://hl7.org/fhir/sid/us-npi', value: '9876543210' };
export const NEW_PLAN_NPI = { system: 'http://hl7.org/fhir/sid/us-npi', value: '0123456789' };

/**
 * A Consent shaped exactly like the one in HRex's `$member-match` example (Parameters
 * member-match-in), its period moved to cover now: status, scope, patient, performer, source
 * reference, policy, and a permit provision with a bounded period, the old plan as source, the new
 * plan as recipient and the action disclose.
 */
export function hrexExampleConsent(opts: { policy?: string; source?: { system: string; value: string }; recipient?: { system: string; value: string }; period?: { start?: string; end?: string } } = {}) {
  return {
    resourceType: 'Consent',
    status: 'active',
    scope: { coding: [{ system: 'http://terminology.hl7.org/CodeSystem/consentscope', code: 'patient-privacy' }] },
    patient: { reference: 'http://example.org/Patient/example' },
    performer: [{ reference: 'http://example.org/Patient/example' }],
    sourceReference: { reference: 'http://example.org/DocumentReference/someconsent' },
    policy: [{ uri: `http://hl7.org/fhir/us/davinci-hrex/StructureDefinition-hrex-consent.html#${opts.policy ?? 'regular'}` }],
    provision: {
      type: 'permit',
      period: opts.period ?? { start: '2020-01-01', end: '2999-01-31' },
      actor: [
        { role: { coding: [{ system: 'http://terminology.hl7.org/CodeSystem/provenance-participant-type', code: 'performer' }] }, reference: { identifier: opts.source ?? OLD_PLAN_NPI, display: 'Old Health Plan' } },
        { role: { coding: [{ system: 'http://terminology.hl7.org/CodeSystem/v3-ParticipationType', code: 'IRCP' }] }, reference: { identifier: opts.recipient ?? NEW_PLAN_NPI, display: 'New Health Plan' } },
      ],
      action: [{ coding: [{ system: 'http://terminology.hl7.org/CodeSystem/consentaction', code: 'disclose' }] }],
    },
  };
}

/**
 * A $member-match body for a member, with a conformant HRex Consent (hrexExampleConsent). `consent`
 * replaces its top-level elements, except `provision`, which is merged into the example's (an
 * element given as undefined is removed; `provision: null` removes the provision).
 */
export function memberMatchBody(m: { family: string; given: string; birthDate: string; memberId: string }, opts: { policy?: string; consent?: Record<string, unknown>; memberSystem?: string } = {}) {
  const base = hrexExampleConsent({ policy: opts.policy });
  const { provision, ...rest } = (opts.consent ?? {}) as { provision?: Record<string, unknown> | null };
  const consent = { ...base, ...rest, provision: provision === null ? undefined : { ...base.provision, ...(provision ?? {}) } };
  return {
    resourceType: 'Parameters',
    parameter: [
      { name: 'MemberPatient', resource: { resourceType: 'Patient', name: [{ family: m.family, given: [m.given] }], birthDate: m.birthDate } },
      { name: 'CoverageToMatch', resource: { resourceType: 'Coverage', identifier: [{ system: opts.memberSystem ?? 'http://source-payer.example.com/member-id', value: m.memberId }] } },
      { name: 'Consent', resource: JSON.parse(JSON.stringify(consent)) },
    ],
  };
}
