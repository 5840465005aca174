import type { Consent, Coverage, Identifier, OperationOutcome, Parameters, ParametersParameter, Patient, Reference, Resource } from 'fhir/r4';
import { patientIdOf } from '../fhir/reference';
import type { Request } from 'express';
import { ResourceStore } from '../store/resource-store';
import { parametersOf, readParts, first } from '../fhir/parameters';
import { validateResource } from '../fhir/validator';
import { FhirError, unprocessable } from '../fhir/outcome';
import { ConsentParties, judgeConsent } from './consent-policy';
import { RESULT_SYSTEM } from '../fhir/pdex';
import { MatchCandidate, matchMember, matchRequest, MatchRequest, MemberKey } from './member-matcher';
import { MatchThrottle } from './match-throttle';
import { GrantStore } from '../access/grants';
import { CLIENT_TAG_SYSTEM } from '../fhir/internal-markers';
import type { Logger } from '../logger';
import type { AuditLog } from '../audit/audit-log';

export const MEMBER_MATCH_SPECS = [
  { name: 'MemberPatient', min: 1, max: 1, type: 'resource:Patient' },
  { name: 'CoverageToMatch', min: 1, max: 1, type: 'resource:Coverage' },
  { name: 'CoverageToLink', min: 0, max: 1, type: 'resource:Coverage' },
  { name: 'Consent', min: 1, max: 1, type: 'resource:Consent' },
] as const;

export interface MemberMatchInput {
  patient: Patient;
  coverageToMatch: Coverage;
  coverageToLink?: Coverage;
  consent: Consent;
}

/** Reads and checks HRex $member-match inputs; a missing or wrong part is a 400 naming it. */
export function parseMemberMatch(body: unknown): MemberMatchInput {
  return readMemberMatchParts(parametersOf(body), 'Parameters');
}

/**
 * Reads the member-match parts (the body of $member-match, or the `memberMatch` part of
 * $sdh.s2s.invoke-export): each part once, of its type, structurally valid R4 (missing required
 * elements tolerated, as HRex's examples have them).
 */
export function readMemberMatchParts(parts: ParametersParameter[], context: string): MemberMatchInput {
  const params = readParts(parts, [...MEMBER_MATCH_SPECS], context);
  const part = <T extends Resource>(name: string) => {
    const r = first<T>(params, name, 'resource');
    return r ? (validateResource(r, r.resourceType, true) as T) : undefined;
  };
  return {
    patient: part<Patient>('MemberPatient') as Patient,
    coverageToMatch: part<Coverage>('CoverageToMatch') as Coverage,
    coverageToLink: part<Coverage>('CoverageToLink'),
    consent: part<Consent>('Consent') as Consent,
  };
}

/** The member-match inputs as the Parameters a source's $member-match takes. */
export function memberMatchParameters(input: MemberMatchInput): Parameters {
  const parameter: ParametersParameter[] = [
    { name: 'MemberPatient', resource: input.patient },
    { name: 'CoverageToMatch', resource: input.coverageToMatch },
    ...(input.coverageToLink ? [{ name: 'CoverageToLink', resource: input.coverageToLink }] : []),
    { name: 'Consent', resource: input.consent },
  ];
  return { resourceType: 'Parameters', parameter };
}

const NO_MATCH = 'No unique member match was found for the submitted demographics and coverage, or the consent cannot be honoured';
/**
 * MemberIdentifier's type: HRex 1.0 (what Inferno validates) fixes v2-0203#MB, HRex 1.1+ fixes
 * hrex-temp#UMB; both are patterns, so one CodeableConcept with both codings satisfies both.
 */
export const MEMBER_IDENTIFIER_TYPE = {
  coding: [
    { system: 'http://terminology.hl7.org/CodeSystem/v2-0203', code: 'MB' },
    { system: 'http://hl7.org/fhir/us/davinci-hrex/CodeSystem/hrex-temp', code: 'UMB' },
  ],
};

/** Options of the matcher: the system this payer issues member ids under, when it declares one. */
export interface MemberMatchOptions {
  memberIdSystem?: string;
  /** Who a client's Consent must name (this payer as source, the client as recipient); unset: no actor is checked by identifier. */
  consentParties?: (clientId: string) => ConsentParties;
}

/**
 * A Consent this payer cannot honour, judged before any member is looked up (its terms and actors
 * say nothing of a member): a 422 saying what is wrong with it, coded `consentconstraint` (PDex's
 * match-result code) so a partner can tell it from a failed match.
 */
export class ConsentRefused extends FhirError {
  constructor(problem: string) {
    super(422, 'business-rule', `The consent cannot be honoured: ${problem}`, ['Parameters.parameter.where(name = \'Consent\').resource']);
  }

  override toOutcome(): OperationOutcome {
    const o = super.toOutcome();
    o.issue[0].details = { coding: [{ system: RESULT_SYSTEM, code: 'consentconstraint' }], text: this.message };
    return o;
  }
}

/** How one member's match ended; `tried` is how many failed matches of the allowance it costs when not a match. */
export type MatchEvaluation =
  | { outcome: 'match'; patient: Patient; coverage: Coverage }
  | { outcome: 'nomatch' | 'consentconstraint'; candidates: number; tried: number; problem?: string };

/**
 * HRex $member-match, served by the source payer. The request must follow the matching rules of
 * `matchRequest` (one member identifier, a family name and a full birth date); a request that does
 * not is refused with a 422 saying which rule it breaks, before any member is looked up. Any failure
 * to match, or a consent this payer cannot honour, is the same 422, so a caller learns nothing about
 * which members exist. Every member identifier a request puts forward that does not end in a match
 * counts as one failure of the caller's brute-force allowance. A match records the Consent and
 * grants the caller access to that member under it.
 */
export class MemberMatchService {
  constructor(
    private readonly store: ResourceStore,
    private readonly grants: GrantStore,
    private readonly throttle: MatchThrottle,
    private readonly logger: Logger,
    private readonly now: () => Date = () => new Date(),
    private readonly audit?: AuditLog,
    private readonly opts: MemberMatchOptions = {},
  ) {}

  /** The matching rules applied to one member's inputs, before any look-up. */
  check(input: MemberMatchInput): MatchRequest {
    return matchRequest(input.patient, input.coverageToMatch, this.opts.memberIdSystem);
  }

  /**
   * Matches one member for a client: a unique demographic and coverage match whose consent this
   * payer can honour is `match` (the Consent recorded, the client granted access); a match whose
   * consent cannot be honoured is `consentconstraint`; anything else `nomatch`, with `problem` when
   * the inputs break the matching rules (then nothing is looked up).
   */
  async evaluate(input: MemberMatchInput, clientId: string): Promise<MatchEvaluation> {
    const request = this.check(input);
    if (!request.ok) return { outcome: 'nomatch', candidates: 0, tried: request.tried, problem: request.problem };
    const candidates = await this.candidates(request.key);
    const { matched } = matchMember(input.patient, candidates);
    if (matched.length !== 1) return { outcome: 'nomatch', candidates: candidates.length, tried: 1 };
    if ('problem' in this.judge(input, clientId)) return { outcome: 'consentconstraint', candidates: candidates.length, tried: 1 };
    const { patient, coverage } = matched[0];
    const recorded = await this.recordConsent(input.consent, patient, clientId);
    await this.grants.grant(clientId, patient.id as string, recorded);
    return { outcome: 'match', patient, coverage };
  }

  /** The Consent judged for this client: its terms (HRex) and its actors (this payer as source, the client as recipient). */
  judge(input: MemberMatchInput, clientId: string): ReturnType<typeof judgeConsent> {
    return judgeConsent(input.consent, this.now(), this.opts.consentParties?.(clientId) ?? { source: [], recipient: [] });
  }

  async handle(body: unknown, req: Request): Promise<Parameters> {
    const clientId = req.access?.clientId ?? 'anonymous';
    const input = parseMemberMatch(body);
    // A Consent that cannot be honoured is refused before any member is looked up, whoever the
    // member is: the answer (what is wrong with the Consent) tells nothing of the member, and
    // costs nothing of the client's allowance of failed matches.
    const judged = this.judge(input, clientId);
    if ('problem' in judged) {
      this.logger.info('member-match refused', { client: clientId, reason: 'consent cannot be honoured', problem: judged.problem });
      await this.audit?.record({ kind: 'member-match', action: 'E', outcome: 'failure', client: clientId, description: '$member-match: consent cannot be honoured' });
      throw new ConsentRefused(judged.problem);
    }
    // As many failed matches of the client's allowance as the request puts forward member
    // identifiers are taken before the match is tried, so concurrent requests cannot together go
    // past it; they are given back if the match succeeds. A request breaking the rules keeps them.
    const tried = this.check(input).tried;
    const slot = await this.throttle.reserve(clientId, tried);
    if (slot.granted === 0) throw this.throttle.throttled(clientId, slot.retryAfterSeconds);
    let result: MatchEvaluation;
    try {
      result = await this.evaluate(input, clientId);
    } catch (err) {
      await slot.settle(0);
      throw err;
    }
    await slot.settle(result.outcome === 'match' ? 0 : result.tried);
    if (result.outcome !== 'match') {
      const reason = result.problem ? 'inputs break the matching rules' : result.outcome;
      this.logger.info(result.outcome === 'nomatch' ? 'member-match found no unique member' : 'member-match refused', { client: clientId, reason, candidates: result.candidates, identifiers: result.tried });
      await this.audit?.record({ kind: 'member-match', action: 'E', outcome: 'failure', client: clientId, description: `$member-match: ${result.problem ? 'inputs break the matching rules' : result.outcome === 'nomatch' ? 'no unique match' : 'consent cannot be honoured'}` });
      // The rule broken is said (it is about the request only); a failed match says nothing more.
      throw result.problem ? unprocessable(result.problem, 'business-rule') : unprocessable(NO_MATCH);
    }
    const { patient, coverage } = result;
    this.logger.info('member-match matched', { client: clientId, patient: patient.id });
    await this.audit?.record({ kind: 'member-match', action: 'E', outcome: 'success', client: clientId, patients: [patient.id as string], description: '$member-match: matched; access granted under the member\'s consent' });
    return {
      resourceType: 'Parameters',
      parameter: [
        { name: 'MemberIdentifier', valueIdentifier: memberIdentifier(patient, coverage) },
        { name: 'MemberId', valueReference: { reference: `Patient/${patient.id}` } },
      ],
    };
  }

  /**
   * The Coverages the one member identifier names (by identifier, under its system or, given
   * without one, under any; and/or by subscriberId, as it was given), with their beneficiaries; a
   * subscriberId given beside an identifier of another value must be the Coverage's too.
   */
  private async candidates(key: MemberKey): Promise<MatchCandidate[]> {
    const identifierTokens = key.inIdentifier ? [key.system ? `${key.system}|${key.value}` : key.value] : [];
    const coverages = (await this.store.coveragesFor({ identifierTokens, subscriberId: key.asSubscriberId ? key.value : undefined }, 50)) as Coverage[];
    const out: MatchCandidate[] = [];
    for (const coverage of coverages) {
      if (key.requireSubscriberId !== undefined && coverage.subscriberId !== key.requireSubscriberId) continue;
      const id = patientIdOf(coverage.beneficiary?.reference);
      if (!id) continue;
      const patient = (await this.store.readIfExists('Patient', id)) as Patient | undefined;
      if (patient) out.push({ coverage, patient });
    }
    return out;
  }

  /** Stores the accepted Consent against the matched member, tagged with the client it was given to. */
  private async recordConsent(submitted: Consent, patient: Patient, clientId: string): Promise<Consent & { id: string }> {
    const consent: Consent = {
      resourceType: 'Consent',
      meta: { tag: [{ system: CLIENT_TAG_SYSTEM, code: clientId }] },
      status: 'active',
      scope: submitted.scope ?? { coding: [{ system: 'http://terminology.hl7.org/CodeSystem/consentscope', code: 'patient-privacy' }] },
      category: submitted.category ?? [{ coding: [{ system: 'http://loinc.org', code: '64292-6' }] }],
      patient: { reference: `Patient/${patient.id}` },
      dateTime: submitted.dateTime ?? this.now().toISOString(),
      performer: performersHere(submitted, patient.id as string),
      organization: submitted.organization?.map(withoutLiteral).filter((r): r is Reference => r !== undefined),
      policy: submitted.policy,
      provision: submitted.provision,
    };
    // The actors may name their Organization by a contained one (`#id`): those are kept, nothing else contained.
    const orgs = (submitted.contained ?? []).filter((r) => r.resourceType === 'Organization');
    if (orgs.length) consent.contained = orgs;
    return (await this.store.create(JSON.parse(JSON.stringify(consent)) as Resource)) as Consent & { id: string };
  }
}

/**
 * The Consent's performers as recorded here: the member (the submitted patient, or any Patient
 * reference: a requester's own Patient, not one of this server's) is the matched member; any other
 * is kept by identifier and name only, so the recorded Consent refers to nothing outside this
 * server (a partner exporting the member would otherwise receive a reference to someone else).
 */
function performersHere(submitted: Consent, memberId: string): Reference[] | undefined {
  if (!submitted.performer) return undefined;
  const isMember = (r: Reference) => r.type === 'Patient' || (typeof r.reference === 'string' && (r.reference === submitted.patient?.reference || /(^|\/)Patient\/[^/]+$/.test(r.reference)));
  const out = submitted.performer.map((r) => (isMember(r) ? { reference: `Patient/${memberId}` } : withoutLiteral(r))).filter((r): r is Reference => r !== undefined);
  return out.length ? out : undefined;
}

/** A reference kept by its identifier and display only; nothing when it has neither. */
function withoutLiteral(r: Reference): Reference | undefined {
  const kept: Reference = {};
  if (r.identifier) kept.identifier = r.identifier;
  if (r.display) kept.display = r.display;
  if (r.type && (kept.identifier || kept.display)) kept.type = r.type;
  return kept.identifier || kept.display ? kept : undefined;
}

/**
 * The member's identifier here: one of the Patient's own (its member number, typed MB or UMB, else
 * its first), so `Patient?identifier=<value>` finds the member; failing those, the coverage's.
 */
export function memberIdentifier(patient: Patient, coverage: Coverage): Identifier {
  const own = (patient.identifier ?? []).filter((i) => i.value);
  const source = own.find((i) => i.type?.coding?.some((c) => c.code === 'MB' || c.code === 'UMB')) ?? own[0] ?? coverage.identifier?.find((i) => i.value);
  if (source?.value) return { type: MEMBER_IDENTIFIER_TYPE, ...(source.system ? { system: source.system } : {}), value: source.value };
  return { type: MEMBER_IDENTIFIER_TYPE, value: coverage.subscriberId ?? (patient.id as string) };
}
