import type { CodeableConcept, Consent, ConsentProvisionActor, Patient, Reference } from 'fhir/r4';
import { CONSENT_ACTION_DISCLOSE, CONSENT_ACTOR_ROLES, OrgIdentifier, withCanonicalPolicy } from '../responder/consent-policy';

/** HRex's required category (the `disclosure` slice) and PDex's API-purpose category for payer-to-payer Consents. */
export const CONSENT_CATEGORY_DISCLOSURE = { system: 'http://terminology.hl7.org/CodeSystem/v3-ActCode', code: 'IDSCL' } as const;
export const CONSENT_CATEGORY_P2P = { system: 'http://hl7.org/fhir/us/davinci-pdex/CodeSystem/pdex-consent-api-purpose', code: 'payer-to-payer' } as const;
const SCOPE_PATIENT_PRIVACY = { system: 'http://terminology.hl7.org/CodeSystem/consentscope', code: 'patient-privacy' } as const;

/** An organization as a Consent's actor names it: by its identifiers, and its name. */
export interface ConsentOrganization {
  name?: string;
  identifiers?: readonly OrgIdentifier[];
}

export interface ConsentCompletion {
  /** The source payer (its registration): the actor authorized to disclose. */
  source: ConsentOrganization;
  /** This payer (PAYER_IDENTIFIERS, PAYER_NAME): the actor authorized to receive. */
  recipient: ConsentOrganization;
  /** The submitted MemberPatient: the Consent's patient is `Patient/{its id}` when it has one (HRex: the same id). */
  memberPatient?: Patient;
  /** Otherwise, the member as known here (an absolute reference, as in HRex's example). */
  localPatientUrl: string;
  /** The period's length when the user gives no end (CONSENT_DEFAULT_DAYS). */
  defaultDays: number;
  now: Date;
}

/**
 * The Consent sent to a source payer, as the HRex Consent profile has it, from the short form a user
 * may give `$sdh.s2s.invoke-export` (the seed's example carries only a `policy`). Whatever the user
 * gave is kept; what is missing is added: HRex's policies by their canonical URL, `status` active,
 * `scope` patient-privacy, `category` IDSCL (HRex's required slice; PDex's `payer-to-payer` beside
 * it), `patient` and `performer` (the member), `dateTime` now, `provision.type` permit, a
 * `provision.period` from today for `defaultDays` (or from the given start), `provision.action`
 * disclose, and the two payers as actors, each repetition naming one of its identifiers (HRex:
 * role `performer` for the source, `IRCP` for the recipient; a payer with no identifiers is named by
 * its name only). A slice the user gave is not added to.
 */
export function completeConsent(given: Consent, ctx: ConsentCompletion): Consent {
  const consent = withCanonicalPolicy(JSON.parse(JSON.stringify(given)) as Consent);
  consent.status ??= 'active';
  consent.scope ??= { coding: [{ ...SCOPE_PATIENT_PRIVACY }] };
  const category = [...(consent.category ?? [])];
  const has = (code: { system: string; code: string }) => category.some((c) => (c.coding ?? []).some((x) => x.system === code.system && x.code === code.code));
  if (!has(CONSENT_CATEGORY_DISCLOSURE)) category.push({ coding: [{ ...CONSENT_CATEGORY_DISCLOSURE }] });
  if (!has(CONSENT_CATEGORY_P2P)) category.push({ coding: [{ ...CONSENT_CATEGORY_P2P }] });
  consent.category = category;
  const member: Reference = typeof ctx.memberPatient?.id === 'string' && ctx.memberPatient.id ? { reference: `Patient/${ctx.memberPatient.id}` } : { reference: ctx.localPatientUrl };
  consent.patient ??= member;
  consent.performer ??= [{ ...consent.patient }];
  consent.dateTime ??= ctx.now.toISOString();

  const provision = (consent.provision ??= {});
  provision.type ??= 'permit';
  const today = ctx.now.toISOString().slice(0, 10);
  const period = (provision.period ??= {});
  period.start ??= today;
  period.end ??= addDays(period.start, ctx.defaultDays);
  provision.action ??= [{ coding: [{ ...CONSENT_ACTION_DISCLOSE }] }];
  const actors = [...(provision.actor ?? [])];
  const hasRole = (role: { system: string; code: string }) => actors.some((a) => (a.role?.coding ?? []).some((c) => c.system === role.system && c.code === role.code));
  if (!hasRole(CONSENT_ACTOR_ROLES.source)) actors.push(...actorsFor(ctx.source, CONSENT_ACTOR_ROLES.source));
  if (!hasRole(CONSENT_ACTOR_ROLES.recipient)) actors.push(...actorsFor(ctx.recipient, CONSENT_ACTOR_ROLES.recipient));
  provision.actor = actors;
  return consent;
}

/** One actor per identifier of the organization (a Reference holds one identifier), each with its name; its name alone when it has none. */
function actorsFor(org: ConsentOrganization, role: { system: string; code: string }): ConsentProvisionActor[] {
  const roleConcept: CodeableConcept = { coding: [{ system: role.system, code: role.code }] };
  const display = org.name ? { display: org.name } : {};
  const ids = org.identifiers ?? [];
  if (ids.length === 0) return [{ role: roleConcept, reference: { type: 'Organization', ...display } }];
  return ids.map((i) => ({ role: roleConcept, reference: { type: 'Organization', identifier: { system: i.system, value: i.value }, ...display } }));
}

/** The date `days` after a date or dateTime's day (UTC), as a date. */
function addDays(start: string, days: number): string {
  const t = Date.parse(/^\d{4}$/.test(start) ? `${start}-01-01` : /^\d{4}-\d{2}$/.test(start) ? `${start}-01` : start);
  const from = Number.isNaN(t) ? Date.now() : t;
  return new Date(from + days * 86_400_000).toISOString().slice(0, 10);
}
