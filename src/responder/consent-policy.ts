import type { Consent, Resource } from 'fhir/r4';

export type ConsentPolicy = 'regular' | 'sensitive';

/**
 * What a member's Consent allows (HRex): `#regular` shares all but sensitive data, `#sensitive`
 * shares all. A Consent this payer cannot honour yields a problem instead of a policy.
 */
export function consentPolicy(consent: Consent, now: Date): { policy: ConsentPolicy } | { problem: string } {
  if (consent.status && consent.status !== 'active') return { problem: `consent status is ${consent.status}` };
  const uris = (consent.policy ?? []).map((p) => p.uri).filter((u): u is string => typeof u === 'string');
  const kinds = new Set(uris.map((u) => (u.endsWith('#sensitive') ? 'sensitive' : u.endsWith('#regular') ? 'regular' : 'other')));
  if (kinds.size === 0) return { problem: 'consent names no policy' };
  if (kinds.has('other') || kinds.size > 1) return { problem: 'consent policy must be exactly one of #regular or #sensitive' };
  const { start, end } = consentPeriod(consent);
  const t = now.getTime();
  if (start !== undefined && start > t) return { problem: 'consent period has not begun' };
  if (end !== undefined && end < t) return { problem: 'consent period has ended' };
  return { policy: kinds.has('sensitive') ? 'sensitive' : 'regular' };
}

/** The consent's period as epoch ms; a period end given as a date covers that whole day. */
export function consentPeriod(consent: Consent): { start?: number; end?: number } {
  const period = consent.provision?.period;
  const start = period?.start ? Date.parse(period.start) : undefined;
  const end = period?.end ? endOf(period.end) : undefined;
  return { start: Number.isNaN(start) ? undefined : start, end: Number.isNaN(end) ? undefined : end };
}

function endOf(value: string): number {
  return /^\d{4}-\d{2}-\d{2}$/.test(value) ? Date.parse(value) + 86_400_000 - 1 : Date.parse(value);
}

const SENSITIVE_CODES = new Set(['ETH', 'HIV', 'PSY', 'SDV', 'SEX', 'STD', 'SUD', 'R', 'V']);
const SENSITIVE_SYSTEMS = new Set([
  'http://terminology.hl7.org/CodeSystem/v3-ActCode',
  'http://terminology.hl7.org/CodeSystem/v3-Confidentiality',
  'http://hl7.org/fhir/v3/ActCode',
  'http://hl7.org/fhir/v3/Confidentiality',
]);

/** The `_security` search tokens of the sensitive labels, as the search index holds them (`system|code`, `|code`). */
export const SENSITIVE_SECURITY_TOKENS: string[] = [...SENSITIVE_CODES].flatMap((code) => [`|${code}`, ...[...SENSITIVE_SYSTEMS].map((system) => `${system}|${code}`)]);

/** Whether a resource is labelled sensitive in meta.security (v3 ActCode ETH, HIV, PSY…, or confidentiality R/V). */
export function isSensitive(resource: Resource): boolean {
  return (resource.meta?.security ?? []).some((c) => !!c.code && SENSITIVE_CODES.has(c.code) && (!c.system || SENSITIVE_SYSTEMS.has(c.system)));
}
