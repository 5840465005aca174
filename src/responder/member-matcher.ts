import type { Coverage, HumanName, Patient } from 'fhir/r4';
import { normalizeString } from '../fhir/search/index-values';

export interface MatchCandidate {
  coverage: Coverage;
  patient: Patient;
}

export interface MatchResult {
  matched: MatchCandidate[];
  /** Why each rejected candidate did not match: for tests and debug logs, never for the client. */
  reasons: string[];
}

/** At most this many names in a MemberPatient (HRex's examples have one). */
export const MAX_MEMBER_NAMES = 3;

/**
 * The one member identifier a CoverageToMatch names: its value, the system it was given under
 * (undefined: none), and whether it was given as `subscriberId` and/or in `identifier`.
 */
export interface MemberKey {
  value: string;
  system?: string;
  inIdentifier: boolean;
  asSubscriberId: boolean;
  /**
   * A subscriberId given beside an identifier of another value (a dependent's card: HRex's own
   * Coverage example carries both): not a second candidate, but a condition the Coverage found by
   * the identifier must meet as well.
   */
  requireSubscriberId?: string;
}

/**
 * What the matching rules make of a request before any member is looked at: the one identifier to
 * look up, or why the request cannot be matched. `tried` is how many member identifiers the request
 * put forward (each counts as a failed match of the client's allowance when it does not match).
 */
export type MatchRequest = { ok: true; key: MemberKey; tried: 1 } | { ok: false; problem: string; tried: number };

/**
 * The matching rules, judged on the request alone (so the answer says what is wrong without saying
 * anything about any member):
 * - CoverageToMatch names exactly one member identifier: the distinct values of
 *   `Coverage.identifier[].value`, or `subscriberId` alone. Several identifier values are refused,
 *   never tried one after another. A `subscriberId` beside an identifier narrows the match (the
 *   Coverage must carry both), so it can never widen it to another member.
 * - The identifier entries of that value agree on one system (or carry none); where this payer
 *   declares the system it issues member ids under (`memberIdSystem`), every identifier entry must
 *   carry exactly that system. `subscriberId` is a bare string in R4 and needs no system.
 * - MemberPatient carries a family name and a full birth date (YYYY-MM-DD), and at most
 *   MAX_MEMBER_NAMES names.
 */
export function matchRequest(patient: Patient, coverage: Coverage, memberIdSystem?: string): MatchRequest {
  const entries = (coverage.identifier ?? [])
    .filter((i) => typeof i.value === 'string' && i.value.trim())
    .map((i) => ({ system: typeof i.system === 'string' && i.system.trim() ? i.system.trim() : undefined, value: (i.value as string).trim() }));
  const subscriberId = typeof coverage.subscriberId === 'string' && coverage.subscriberId.trim() ? coverage.subscriberId.trim() : undefined;
  const values = new Set(entries.map((e) => e.value));
  if (values.size === 0 && !subscriberId) return { ok: false, problem: 'CoverageToMatch names no member identifier (Coverage.identifier or subscriberId)', tried: 1 };
  if (values.size > 1) return { ok: false, problem: `CoverageToMatch names ${values.size} different member identifiers; one member identifier is accepted`, tried: values.size };
  const [value = subscriberId as string] = values;
  const requireSubscriberId = subscriberId !== undefined && subscriberId !== value ? subscriberId : undefined;
  const systems = new Set(entries.map((e) => e.system));
  if (systems.size > 1) return { ok: false, problem: 'CoverageToMatch gives its member identifier under several systems; give it under one', tried: systems.size };
  const [system] = systems;
  if (memberIdSystem && entries.length > 0 && system !== memberIdSystem) {
    return { ok: false, problem: `CoverageToMatch.identifier must carry this payer's member id system ${memberIdSystem}`, tried: 1 };
  }
  const problem = patientProblem(patient);
  if (problem) return { ok: false, problem, tried: 1 };
  const key: MemberKey = { value, system, inIdentifier: entries.length > 0, asSubscriberId: subscriberId === value };
  if (requireSubscriberId) key.requireSubscriberId = requireSubscriberId;
  return { ok: true, key, tried: 1 };
}

/** What the MemberPatient lacks for a match, if anything. */
export function patientProblem(patient: Patient): string | undefined {
  const names = patient.name ?? [];
  if (names.length > MAX_MEMBER_NAMES) return `MemberPatient carries ${names.length} names; at most ${MAX_MEMBER_NAMES} are accepted`;
  if (!primaryName(patient)) return 'MemberPatient needs a family name';
  if (!patient.birthDate) return 'MemberPatient needs a birth date';
  if (!/^\d{4}-\d{2}-\d{2}$/.test(patient.birthDate)) return 'MemberPatient.birthDate must be a full date (YYYY-MM-DD)';
  return undefined;
}

const norm = (s?: unknown) => (typeof s === 'string' ? normalizeString(s) : '');

/**
 * The submitted name that is compared: the first `official` name with a family, else the first name
 * with a family. Only its family counts: other submitted names are never tried, so listing several
 * families does not widen a match.
 */
export function primaryName(patient: Patient): HumanName | undefined {
  const withFamily = (patient.name ?? []).filter((n) => norm(n.family));
  return withFamily.find((n) => n.use === 'official') ?? withFamily[0];
}

/**
 * Demographic check of a candidate against the submitted MemberPatient: the primary name's family
 * (one of the candidate's families, without case or accents) and the birth date (exactly) always;
 * the first given name (the primary name's, else the first submitted) and the gender where submitted.
 */
export function demographicsAgree(submitted: Patient, candidate: Patient): string | undefined {
  const primary = primaryName(submitted);
  if (!primary || !submitted.birthDate) return 'MemberPatient lacks a family name or birth date';
  const families = new Set((candidate.name ?? []).map((n) => norm(n.family)).filter(Boolean));
  const givens = new Set((candidate.name ?? []).flatMap((n) => n.given ?? []).map(norm));
  if (!families.has(norm(primary.family))) return 'family name differs';
  if (submitted.birthDate !== candidate.birthDate) return 'birth date differs';
  const firstGiven = primary.given?.find((g) => norm(g)) ?? (submitted.name ?? []).flatMap((n) => n.given ?? []).find((g) => norm(g));
  if (firstGiven && !givens.has(norm(firstGiven))) return 'given name differs';
  if (submitted.gender && candidate.gender && submitted.gender !== candidate.gender) return 'gender differs';
  return undefined;
}

/** Keeps the candidates whose demographics agree; distinct members only. */
export function matchMember(submitted: Patient, candidates: MatchCandidate[]): MatchResult {
  const problem = patientProblem(submitted);
  if (problem) return { matched: [], reasons: [problem] };
  const reasons: string[] = [];
  const byPatient = new Map<string, MatchCandidate>();
  for (const c of candidates) {
    const why = demographicsAgree(submitted, c.patient);
    if (why) reasons.push(`Patient/${c.patient.id}: ${why}`);
    else if (!byPatient.has(c.patient.id as string)) byPatient.set(c.patient.id as string, c);
  }
  return { matched: [...byPatient.values()], reasons };
}
