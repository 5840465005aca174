import type { Consent, Resource } from 'fhir/r4';

export type ConsentPolicy = 'regular' | 'sensitive';

/** HRex's consent policies (ValueSet hrex-consent-policy, the same in STU 1, 1.1 and 1.2): a policy is one of these URIs, exactly. */
export const HREX_CONSENT_POLICY = 'http://hl7.org/fhir/us/davinci-hrex/StructureDefinition-hrex-consent.html';
export const HREX_POLICY_URIS: Readonly<Record<ConsentPolicy, string>> = {
  regular: `${HREX_CONSENT_POLICY}#regular`,
  sensitive: `${HREX_CONSENT_POLICY}#sensitive`,
};

/** The policy a URI names, when it is one of HRex's by its full canonical URL; a look-alike on another host (`https://evil.example/x#sensitive`) is no policy of HRex's. */
export function hrexPolicyOf(uri: string): ConsentPolicy | undefined {
  return uri === HREX_POLICY_URIS.regular ? 'regular' : uri === HREX_POLICY_URIS.sensitive ? 'sensitive' : undefined;
}

/**
 * The Consent with HRex's policies by their full canonical URL, for sending to a source payer,
 * which honours only those: a relative shorthand (`#regular`, `hrex-consent.html#sensitive`,
 * `StructureDefinition-hrex-consent.html#regular`) is read against HRex's base. Any other policy
 * is sent as given, for the source to judge (and refuse).
 */
export function withCanonicalPolicy(consent: Consent): Consent {
  if (!consent.policy) return consent;
  const policy = consent.policy.map((p) => {
    const short = typeof p.uri === 'string' ? p.uri.match(/^(?:(?:StructureDefinition-)?hrex-consent\.html)?#(regular|sensitive)$/) : null;
    return short ? { ...p, uri: HREX_POLICY_URIS[short[1] as ConsentPolicy] } : p;
  });
  return { ...consent, policy };
}

/**
 * What a member's Consent allows (HRex): `#regular` shares all but sensitive data, `#sensitive`
 * shares all. A Consent this payer cannot honour (no policy, a policy that is not one of HRex's
 * by its canonical URL, both, out of its period) yields a problem instead of a policy.
 */
export function consentPolicy(consent: Consent, now: Date): { policy: ConsentPolicy } | { problem: string } {
  if (consent.status && consent.status !== 'active') return { problem: `consent status is ${consent.status}` };
  const uris = (consent.policy ?? []).map((p) => p.uri).filter((u): u is string => typeof u === 'string');
  const kinds = new Set(uris.map((u) => hrexPolicyOf(u) ?? 'other'));
  if (kinds.size === 0) return { problem: 'consent names no policy' };
  if (kinds.has('other') || kinds.size > 1) return { problem: `consent policy must be exactly one of ${HREX_POLICY_URIS.regular} or ${HREX_POLICY_URIS.sensitive}` };
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

/**
 * The security labels that make a resource sensitive, by code system, each system under every name
 * it is written with (its URI, its OID, the pre-R4 URI). One list: the search filter's tokens and
 * the per-resource predicate are both derived from it.
 * - v3-ActCode: every code under _InformationSensitivityPolicy in the R4 code system (the act,
 *   entity and role sensitivity policies: ETH, ETHUD, OPIOIDUD, SUD, BH, PSY, HIV, SICKLE…), the
 *   privacy compartments (COMPT, HRCOMPT, RESCOMPT, RMGTCOMPT) and the US privacy law 42 CFR Part 2
 *   as DS4P labels substance use disorder records (42CFRPart2), and the confidentiality-by-info-type
 *   codes older data carries in either system (ETH, HIV, PSY, SDV).
 * - v3-Confidentiality: restricted (R) and very restricted (V), and the old ETH, HIV, PSY, SDV.
 * A label without a system counts when its code is any of these.
 */
export const SENSITIVE_LABELS: readonly { systems: readonly string[]; codes: readonly string[] }[] = [
  {
    systems: ['http://terminology.hl7.org/CodeSystem/v3-ActCode', 'urn:oid:2.16.840.1.113883.5.4', 'http://hl7.org/fhir/v3/ActCode'],
    codes: [
      '_InformationSensitivityPolicy', '_ActInformationSensitivityPolicy',
      'ETH', 'GDIS', 'HIV', 'MST', 'SCA', 'SDV', 'SEX', 'SPI', 'BH', 'COGN', 'DVD', 'EMOTDIS', 'MH', 'PSY', 'PSYTHPN', 'SUD', 'ETHUD', 'OPIOIDUD', 'STD', 'TBOO', 'VIO', 'SICKLE',
      '_EntitySensitivityPolicyType', 'DEMO', 'DOB', 'GENDER', 'LIVARG', 'MARST', 'RACE', 'REL',
      '_RoleInformationSensitivityPolicy', 'B', 'EMPL', 'LOCIS', 'SSP', 'ADOL', 'CEL', 'DIA', 'DRGIS', 'EMP', 'PDS', 'PHY', 'PRS',
      'COMPT', 'HRCOMPT', 'RESCOMPT', 'RMGTCOMPT',
      '42CFRPart2',
    ],
  },
  {
    systems: ['http://terminology.hl7.org/CodeSystem/v3-Confidentiality', 'urn:oid:2.16.840.1.113883.5.25', 'http://hl7.org/fhir/v3/Confidentiality'],
    codes: ['R', 'V', 'ETH', 'HIV', 'PSY', 'SDV'],
  },
];

const ANY_SENSITIVE_CODE = new Set(SENSITIVE_LABELS.flatMap((l) => l.codes));
const SENSITIVE_BY_SYSTEM = new Map<string, Set<string>>(SENSITIVE_LABELS.flatMap((l) => l.systems.map((s) => [s, new Set(l.codes)] as [string, Set<string>])));

/** Whether one security label is sensitive (see SENSITIVE_LABELS). */
export function isSensitiveLabel(label: { system?: string; code?: string }): boolean {
  if (typeof label.code !== 'string') return false;
  if (!label.system) return ANY_SENSITIVE_CODE.has(label.code);
  return SENSITIVE_BY_SYSTEM.get(label.system)?.has(label.code) ?? false;
}

/** The `_security` search tokens of the sensitive labels, as the search index holds them (`system|code`, `|code`): exactly the labels isSensitiveLabel accepts. */
export const SENSITIVE_SECURITY_TOKENS: string[] = [
  ...SENSITIVE_LABELS.flatMap((l) => l.systems.flatMap((system) => l.codes.map((code) => `${system}|${code}`))),
  ...[...ANY_SENSITIVE_CODE].map((code) => `|${code}`),
];

/** Whether a resource is labelled sensitive in meta.security. */
export function isSensitive(resource: Resource): boolean {
  return (resource.meta?.security ?? []).some(isSensitiveLabel);
}
