import type { Consent, ConsentProvisionActor, Identifier, Organization, Resource } from 'fhir/r4';

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

/** HRex's role codes of the Consent's actors (hrex-consent, `provision.actor` sliced by `role`). */
export const CONSENT_ACTOR_ROLES = {
  /** Authorized to disclose: the data source (the payer asked for the data). */
  source: { system: 'http://terminology.hl7.org/CodeSystem/provenance-participant-type', code: 'performer' },
  /** Authorized to receive: the requesting payer. */
  recipient: { system: 'http://terminology.hl7.org/CodeSystem/v3-ParticipationType', code: 'IRCP' },
} as const;
export const CONSENT_ACTION_DISCLOSE = { system: 'http://terminology.hl7.org/CodeSystem/consentaction', code: 'disclose' } as const;

/** An organization's business identifier (NPI, payer id): what a Consent's actor names it by. */
export interface OrgIdentifier {
  system: string;
  value: string;
}

/** Who a Consent must name, for one request: this payer as source, the calling payer as recipient. */
export interface ConsentParties {
  /** This payer's identifiers (PAYER_IDENTIFIERS): a source actor must carry one. None configured: any source actor will do. */
  source: readonly OrgIdentifier[];
  /** The calling client's organization identifiers (its CLIENTS_FILE entry): a recipient actor must carry one. */
  recipient: readonly OrgIdentifier[];
  /** The other registered clients' identifiers: when the caller has none, a Consent whose every recipient is one of them names another payer. */
  others?: readonly OrgIdentifier[];
}

/** Elements of `provision` that HRex prohibits (..0): each would narrow the disclosure in a way this payer does not apply, so a Consent carrying one cannot be honoured. */
const PROHIBITED_PROVISION = ['securityLabel', 'purpose', 'class', 'code', 'dataPeriod', 'data', 'provision'] as const;

/**
 * The terms of a member's Consent as the HRex Consent profile states them, judged for this payer:
 * status `active`; exactly one policy, HRex's `#regular` (all but sensitive data) or `#sensitive`
 * (all), by its canonical URL; `provision.type` `permit`; a `provision.period` with both start and
 * end that covers `now`; `provision.action`, when given, `disclose`; none of the provision elements
 * HRex prohibits. Anything else yields a problem (a fixed text, nothing of the Consent's own
 * values), never a policy. The actors are judged by `judgeConsent`.
 */
export function consentPolicy(consent: Consent, now: Date): { policy: ConsentPolicy } | { problem: string } {
  if (consent.status !== 'active') return { problem: 'consent status must be active' };
  const uris = (consent.policy ?? []).map((p) => p.uri).filter((u): u is string => typeof u === 'string');
  const kinds = new Set(uris.map((u) => hrexPolicyOf(u) ?? 'other'));
  if (kinds.size === 0) return { problem: 'consent names no policy' };
  if (kinds.has('other') || kinds.size > 1) return { problem: `consent policy must be exactly one of ${HREX_POLICY_URIS.regular} or ${HREX_POLICY_URIS.sensitive}` };
  const provision = consent.provision;
  if (!provision) return { problem: 'consent has no provision: HRex requires a permit provision with a period' };
  if (provision.type === 'deny') return { problem: 'consent provision.type is deny: a denial permits no disclosure' };
  if (provision.type !== 'permit') return { problem: 'consent provision.type must be permit' };
  const prohibited = PROHIBITED_PROVISION.find((k) => (provision as Record<string, unknown>)[k] !== undefined);
  if (prohibited) return { problem: `consent provision.${prohibited} narrows the disclosure, which HRex prohibits and this payer cannot honour` };
  const actions = provision.action ?? [];
  if (!actions.every((a) => (a.coding ?? []).some((c) => c.system === CONSENT_ACTION_DISCLOSE.system && c.code === CONSENT_ACTION_DISCLOSE.code))) {
    return { problem: `consent provision.action must be ${CONSENT_ACTION_DISCLOSE.system}#disclose` };
  }
  if (!provision.period?.start || !provision.period.end) return { problem: 'consent provision.period must have both a start and an end' };
  const { start, end } = consentPeriod(consent);
  if (start === undefined || end === undefined) return { problem: 'consent provision.period is not a valid period' };
  if (end < start) return { problem: 'consent provision.period ends before it starts' };
  const t = now.getTime();
  if (start > t) return { problem: 'consent period has not begun' };
  if (end < t) return { problem: 'consent period has ended' };
  return { policy: kinds.has('sensitive') ? 'sensitive' : 'regular' };
}

/**
 * The whole judgement of a submitted Consent (its terms, then its actors), as HRex slices them: at
 * least one `provision.actor` with role `performer` (the source) and one with role `IRCP` (the
 * recipient). Where this payer's identifiers are configured, a source actor must name one of them;
 * where the calling client's are, a recipient actor must name one of them; an actor names an
 * organization by `reference.identifier`, or by the identifiers of a contained Organization it
 * points at. A caller registered without identifiers is judged on the rest, except that a Consent
 * whose every recipient is identified as another registered client is not its to use.
 */
export function judgeConsent(consent: Consent, now: Date, parties: ConsentParties): { policy: ConsentPolicy } | { problem: string } {
  const terms = consentPolicy(consent, now);
  if (!('policy' in terms)) return terms;
  const actors = consent.provision?.actor ?? [];
  const withRole = (role: { system: string; code: string }) => actors.filter((a) => (a.role?.coding ?? []).some((c) => c.system === role.system && c.code === role.code));
  const sources = withRole(CONSENT_ACTOR_ROLES.source);
  const recipients = withRole(CONSENT_ACTOR_ROLES.recipient);
  if (sources.length === 0) return { problem: `consent names no source: a provision.actor with role ${CONSENT_ACTOR_ROLES.source.system}#performer naming this payer is required` };
  if (recipients.length === 0) return { problem: `consent names no recipient: a provision.actor with role ${CONSENT_ACTOR_ROLES.recipient.system}#IRCP naming the requesting payer is required` };
  const idsOf = (actor: ConsentProvisionActor) => actorIdentifiers(consent, actor);
  const names = (actor: ConsentProvisionActor, wanted: readonly OrgIdentifier[]) => idsOf(actor).some((i) => wanted.some((w) => sameIdentifier(i, w)));
  if (parties.source.length && !sources.some((a) => names(a, parties.source))) return { problem: 'consent does not name this payer as the source (a provision.actor with role performer, by identifier)' };
  if (parties.recipient.length) {
    if (!recipients.some((a) => names(a, parties.recipient))) return { problem: 'consent does not name the requesting payer as the recipient (a provision.actor with role IRCP, by identifier)' };
  } else if (parties.others?.length) {
    const others = parties.others;
    const couldBeCaller = (a: ConsentProvisionActor) => {
      const ids = idsOf(a);
      return ids.length === 0 || ids.some((i) => !others.some((o) => sameIdentifier(i, o)));
    };
    if (!recipients.some(couldBeCaller)) return { problem: 'consent names another payer as the recipient' };
  }
  return terms;
}

/** The identifiers an actor names its organization by: its reference's identifier, and a contained Organization's (`#id`). */
function actorIdentifiers(consent: Consent, actor: ConsentProvisionActor): OrgIdentifier[] {
  const out: OrgIdentifier[] = [];
  const add = (i: Identifier | undefined) => {
    if (i && typeof i.system === 'string' && typeof i.value === 'string') out.push({ system: i.system, value: i.value });
  };
  add(actor.reference?.identifier);
  const ref = actor.reference?.reference;
  if (typeof ref === 'string' && ref.startsWith('#')) {
    const org = (consent.contained ?? []).find((r) => r.resourceType === 'Organization' && r.id === ref.slice(1)) as Organization | undefined;
    for (const i of org?.identifier ?? []) add(i);
  }
  return out;
}

function sameIdentifier(a: OrgIdentifier, b: OrgIdentifier): boolean {
  return a.system === b.system && a.value.trim() === b.value.trim();
}

/** The consent's period as epoch ms; a period end given as a date covers that whole day. */
export function consentPeriod(consent: Consent): { start?: number; end?: number } {
  const period = consent.provision?.period;
  const start = period?.start ? Date.parse(period.start) : undefined;
  const end = period?.end ? endOf(period.end) : undefined;
  return { start: Number.isNaN(start) ? undefined : start, end: Number.isNaN(end) ? undefined : end };
}

function endOf(value: string): number {
  // A date, a year-month or a year as the end covers the whole of it.
  const m = value.match(/^(\d{4})(?:-(\d{2})(?:-(\d{2}))?)?$/);
  if (!m) return Date.parse(value);
  const [y, mo, d] = [Number(m[1]), m[2] ? Number(m[2]) - 1 : undefined, m[3] ? Number(m[3]) : undefined];
  const next = mo === undefined ? Date.UTC(y + 1, 0, 1) : d === undefined ? Date.UTC(y, mo + 1, 1) : Date.UTC(y, mo, d + 1);
  return Number.isNaN(Date.parse(value)) ? NaN : next - 1;
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
