import { createHash, randomBytes } from 'node:crypto';
import type { Parameters, Patient } from 'fhir/r4';

/**
 * What an exchange keeps of the submitted MemberPatient to compare the source's Patient with: the
 * family names and the birth date, each normalized and hashed with a salt of its own, so the job
 * store holds no readable demographics once the match is done (and none is ever logged or put on
 * the Task). Empty lists: nothing was submitted to compare.
 */
export interface MemberDigest {
  salt: string;
  families: string[];
  birthDate?: string;
}

/** A family name as compared: accents and case dropped, only letters and digits kept (`Ríos-O'Neil` and `RIOS ONEIL` are the same). */
export function normalizeFamily(family: string): string {
  return family.normalize('NFKD').replace(/\p{M}/gu, '').toLowerCase().replace(/[^\p{L}\p{N}]/gu, '');
}

const hash = (salt: string, kind: string, value: string) => createHash('sha256').update(`${salt}|${kind}|${value}`).digest('base64url');

function familiesOf(p: Patient | undefined): string[] {
  const out = new Set<string>();
  for (const n of Array.isArray(p?.name) ? p.name : []) {
    if (typeof n?.family === 'string') {
      const f = normalizeFamily(n.family);
      if (f) out.add(f);
    }
  }
  return [...out];
}

/** The digest of the MemberPatient of a member-match Parameters (undefined when it carries none). */
export function memberDigest(memberMatch: Parameters | undefined, salt = randomBytes(16).toString('base64url')): MemberDigest | undefined {
  const patient = memberMatch?.parameter?.find((p) => p.name === 'MemberPatient')?.resource as Patient | undefined;
  if (!patient) return undefined;
  const families = familiesOf(patient).map((f) => hash(salt, 'family', f));
  const birthDate = typeof patient.birthDate === 'string' && patient.birthDate.trim() ? hash(salt, 'birthDate', patient.birthDate.trim()) : undefined;
  if (families.length === 0 && !birthDate) return undefined;
  return { salt, families, ...(birthDate ? { birthDate } : {}) };
}

/**
 * Whether the source's Patient agrees with the submitted member: one of its family names is one of
 * the submitted ones (compared normalized), and its birth date is the submitted one, exactly. What
 * either side leaves out is not compared (a source Patient without a birth date agrees on it).
 */
export function agreesWithMember(source: Patient, d: MemberDigest): boolean {
  const families = familiesOf(source);
  if (d.families.length > 0 && families.length > 0 && !families.some((f) => d.families.includes(hash(d.salt, 'family', f)))) return false;
  if (d.birthDate && typeof source.birthDate === 'string' && hash(d.salt, 'birthDate', source.birthDate.trim()) !== d.birthDate) return false;
  return true;
}

/** The reason an exchange fails when they disagree: it names no demographics. */
export const DISAGREES = "the source's Patient does not agree with the submitted member demographics";
