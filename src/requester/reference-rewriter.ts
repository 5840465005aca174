import { createHash } from 'node:crypto';
import type { Resource } from 'fhir/r4';
import type { MemberScope } from './member-references';
import type { MemberDigest } from './member-demographics';

export interface IdMapping extends MemberScope {
  /** The member's id at the source, and the local Patient it becomes. */
  sourcePatientId: string;
  localPatientId: string;
  /** The source's FHIR base, for absolute references to it. */
  sourceBase: string;
  issuer: string;
  /** The submitted MemberPatient's family names and birth date (hashed), to compare the source's Patient with. */
  member?: MemberDigest;
}

/**
 * The local id of a source resource: derived from (issuer, type, source id), so the same record
 * always lands on the same local resource (importing twice updates, never duplicates) and references
 * can be rewritten in one streaming pass with no look-up table.
 */
export function localIdFor(issuer: string, type: string, sourceId: string): string {
  const key = `${issuer}|${type}|${sourceId}`;
  let id = recent.get(key);
  if (id === undefined) {
    id = `p2p-${createHash('sha256').update(key).digest('hex').slice(0, 40)}`;
    // The same practitioners, organizations and encounters are referred to again and again: remember the latest ids.
    if (recent.size >= RECENT_IDS) recent.clear();
    recent.set(key, id);
  }
  return id;
}

const RECENT_IDS = 50_000;
const recent = new Map<string, string>();

const REF = /^(?:(.+)\/)?([A-Z][A-Za-z]+)\/([A-Za-z0-9\-.]{1,64})(?:\/_history\/[^/]+)?$/;

/** Rewrites one reference string; references to other servers, contained resources and URNs are left alone. */
export function rewriteReference(ref: string, m: IdMapping): string {
  if (ref.startsWith('#') || ref.startsWith('urn:')) return ref;
  const match = ref.match(REF);
  if (!match) return ref;
  const [, prefix, type, id] = match;
  if (prefix !== undefined && prefix.replace(/\/+$/, '') !== m.sourceBase.replace(/\/+$/, '')) return ref;
  if (type === 'Patient' && id === m.sourcePatientId) return `Patient/${m.localPatientId}`;
  return `${type}/${localIdFor(m.issuer, type, id)}`;
}

/** A copy of the resource with every `reference` rewritten to local ids, inside contained resources too (`#` ones stay). */
export function rewriteReferences<T extends Resource>(resource: T, m: IdMapping): T {
  const walk = (value: unknown, key?: string): unknown => {
    if (typeof value === 'string') return key === 'reference' ? rewriteReference(value, m) : value;
    if (Array.isArray(value)) return value.map((v) => walk(v));
    if (value && typeof value === 'object') {
      const out: Record<string, unknown> = {};
      for (const [k, v] of Object.entries(value)) out[k] = walk(v, k);
      return out;
    }
    return value;
  };
  return walk(resource) as T;
}
