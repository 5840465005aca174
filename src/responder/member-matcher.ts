import type { Coverage, Patient } from 'fhir/r4';
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

/** The member identifiers a CoverageToMatch carries: its identifiers and its subscriberId. */
export function coverageKeys(coverage: Coverage): { identifiers: { system?: string; value: string }[]; subscriberId?: string } {
  const identifiers = (coverage.identifier ?? [])
    .filter((i) => typeof i.value === 'string' && i.value.trim())
    .map((i) => ({ system: i.system, value: i.value as string }));
  return { identifiers, subscriberId: coverage.subscriberId?.trim() || undefined };
}

/**
 * Demographic check of a candidate against the submitted MemberPatient: family name, first given
 * name, birth date and gender, each only where submitted, compared without case or accents.
 */
export function demographicsAgree(submitted: Patient, candidate: Patient): string | undefined {
  const norm = (s?: string) => (s ? normalizeString(s) : '');
  const families = new Set((candidate.name ?? []).map((n) => norm(n.family)).filter(Boolean));
  const givens = new Set((candidate.name ?? []).flatMap((n) => n.given ?? []).map(norm));
  const submittedFamilies = (submitted.name ?? []).map((n) => norm(n.family)).filter(Boolean);
  if (submittedFamilies.length > 0 && !submittedFamilies.some((f) => families.has(f))) return 'family name differs';
  const firstGiven = (submitted.name ?? []).map((n) => n.given?.[0]).find(Boolean);
  if (firstGiven && !givens.has(norm(firstGiven))) return 'given name differs';
  if (submitted.birthDate && submitted.birthDate !== candidate.birthDate) return 'birth date differs';
  if (submitted.gender && candidate.gender && submitted.gender !== candidate.gender) return 'gender differs';
  return undefined;
}

/** Keeps the candidates whose demographics agree; distinct members only. */
export function matchMember(submitted: Patient, candidates: MatchCandidate[]): MatchResult {
  const reasons: string[] = [];
  if (!(submitted.name ?? []).some((n) => n.family) && !submitted.birthDate) {
    return { matched: [], reasons: ['MemberPatient has neither a family name nor a birth date'] };
  }
  const byPatient = new Map<string, MatchCandidate>();
  for (const c of candidates) {
    const why = demographicsAgree(submitted, c.patient);
    if (why) reasons.push(`Patient/${c.patient.id}: ${why}`);
    else if (!byPatient.has(c.patient.id as string)) byPatient.set(c.patient.id as string, c);
  }
  return { matched: [...byPatient.values()], reasons };
}
