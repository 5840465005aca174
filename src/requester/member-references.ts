/**
 * What a record from a source may refer to: the member, the source's other (non-Patient) records,
 * and records elsewhere that are not patients. Judged on the record as received, before any
 * reference is rewritten, against the source's own id for the member: once rewritten, every source
 * Patient looks like a local `Patient/p2p-…`, and the check could no longer tell the member from
 * anyone else.
 */

/** What the check knows about the member and the two servers. */
export interface MemberScope {
  /** The member's id at the source. */
  sourcePatientId: string;
  /** For a group's files, before they are split: every matched member's id at the source. */
  members?: ReadonlySet<string>;
  /** The source's FHIR base. */
  sourceBase: string;
  /** This (requesting) server's own FHIR base: a source may not point at local records. */
  localBase?: string;
  /** The member's identifiers at the source (the MemberIdentifier its $member-match answered), for logical references. */
  memberIdentifiers?: { system?: string; value?: string }[];
}

/** Elements where a Patient is the reference's intended target: an identifier-only reference there names a person. */
const PATIENT_POSITIONS = new Set(['subject', 'patient', 'beneficiary', 'subscriber']);
/** The elements of the Reference datatype: an object made of these alone, with an `identifier`, is a logical reference. */
const REFERENCE_KEYS = new Set(['id', 'extension', 'reference', 'type', 'identifier', 'display']);
const HISTORY = /^[A-Za-z0-9\-.]{1,64}$/;
const ID = /^[A-Za-z0-9\-.]{1,64}$/;
const LOOPBACK = new Set(['localhost', '127.0.0.1', '[::1]', '::1']);

/** One reference string as understood here: where it points, in a form that does not depend on its spelling. */
export interface ParsedReference {
  kind: 'contained' | 'urn' | 'literal' | 'conditional';
  /** `scheme://authority` of an absolute reference (lower case). */
  origin?: string;
  /** Every path segment (percent-decoded), `_history` and its version dropped. */
  segments: string[];
  type?: string;
  id?: string;
}

/** Parses a reference string: percent-decoded, its fragment dropped, relative or absolute, literal or conditional (`Type?…`). */
export function parseReference(raw: string): ParsedReference {
  let ref = raw.trim();
  if (ref.startsWith('#')) return { kind: 'contained', segments: [] };
  if (/^urn:/i.test(ref)) return { kind: 'urn', segments: [] };
  try {
    ref = decodeURIComponent(ref);
  } catch {
    // Malformed escapes: judged as spelled.
  }
  const hash = ref.indexOf('#');
  if (hash >= 0) ref = ref.slice(0, hash);
  const q = ref.indexOf('?');
  const conditional = q >= 0;
  let path = conditional ? ref.slice(0, q) : ref;
  let origin: string | undefined;
  const abs = path.match(/^((?:[a-z][a-z0-9+.-]*:)?\/\/[^/]*)(.*)$/i);
  if (abs) {
    origin = abs[1].toLowerCase();
    path = abs[2];
  }
  const segments = path.split(/[/\\]+/).map((s) => s.trim()).filter((s) => s && s !== '.');
  if (segments.length >= 2 && segments[segments.length - 2].toLowerCase() === '_history') segments.splice(-2);
  else if (segments.length >= 1 && segments[segments.length - 1].toLowerCase() === '_history') segments.splice(-1);
  if (conditional) return { kind: 'conditional', origin, segments, type: segments[segments.length - 1] };
  return { kind: 'literal', origin, segments, type: segments[segments.length - 2], id: segments[segments.length - 1] };
}

const isPatientName = (s: string | undefined) => typeof s === 'string' && s.trim().toLowerCase() === 'patient';

/** A Reference.type naming Patient: `Patient` in any case, or a canonical URL ending in `/Patient`. */
export function isPatientType(type: unknown): boolean {
  return typeof type === 'string' && (isPatientName(type) || /\/patient$/i.test(type.trim()));
}

const trimBase = (base: string) => base.trim().replace(/\/+$/, '');

/** The member's own reference, exactly as this server rewrites it to the local member: `Patient/{id}` or `{sourceBase}/Patient/{id}`, with an optional `_history/{v}`. */
export function isMemberReference(ref: string, s: MemberScope): boolean {
  const base = trimBase(s.sourceBase);
  const rest = ref.startsWith(`${base}/`) ? ref.slice(base.length + 1) : ref;
  const m = rest.match(/^Patient\/([^/]+)(?:\/_history\/([^/]+))?$/);
  return !!m && (m[1] === s.sourcePatientId || !!s.members?.has(m[1])) && ID.test(m[1]) && (m[2] === undefined || HISTORY.test(m[2]));
}

/** The source's base, as `{origin, path segments}`, to tell its own absolute references from others. */
function baseParts(base: string): { origin: string; segments: string[] } | undefined {
  const p = parseReference(`${trimBase(base)}/x/y`);
  return p.origin ? { origin: p.origin, segments: p.segments.slice(0, -2) } : undefined;
}

/** `scheme://host:port` with the loopback names made one, so `localhost` and `127.0.0.1` are the same server. */
function sameServer(a: string, b: string): boolean {
  const norm = (o: string) => {
    try {
      const u = new URL(o.startsWith('//') ? `http:${o}` : o);
      const host = LOOPBACK.has(u.hostname) || /^127\./.test(u.hostname) ? 'loopback' : u.hostname;
      const port = u.port || (u.protocol === 'https:' ? '443' : u.protocol === 'http:' ? '80' : '');
      return `${host}:${port}`;
    } catch {
      return o;
    }
  };
  return norm(a) === norm(b);
}

function startsWith(segments: string[], prefix: string[]): boolean {
  return prefix.length <= segments.length && prefix.every((p, i) => p.toLowerCase() === segments[i].toLowerCase());
}

/** Why one reference string may not be imported, or undefined. */
function refusedString(ref: string, s: MemberScope): string | undefined {
  if (isMemberReference(ref, s)) return undefined;
  // The common case, a relative `Type/id`, without parsing.
  const simple = ref.match(/^([A-Za-z]+)\/[A-Za-z0-9\-.]{1,64}$/);
  if (simple) return isPatientName(simple[1]) ? 'refers to a patient other than the member' : undefined;
  const p = parseReference(ref);
  if (p.kind === 'contained' || p.kind === 'urn') return undefined;
  let segments = p.segments;
  let local = false;
  if (p.origin) {
    const source = baseParts(s.sourceBase);
    const atSource = !!source && p.origin === source.origin && startsWith(p.segments, source.segments);
    if (atSource) segments = p.segments.slice(source.segments.length);
    // A record of this server: whatever its type, a source cannot point at it.
    else local = !!s.localBase && sameServer(p.origin, baseParts(s.localBase)?.origin ?? '');
  }
  if (p.kind === 'conditional' && isPatientName(p.type)) return 'refers to a patient by a conditional reference';
  if (segments.some(isPatientName)) return 'refers to a patient other than the member';
  if (local) return 'refers to a record of this server';
  return undefined;
}

const sameIdentifier = (a: { system?: unknown; value?: unknown }, b: { system?: string; value?: string }) => a.value === b.value && (a.system ?? undefined) === (b.system ?? undefined) && typeof a.value === 'string';

/**
 * Why a resource received from a source may not be imported for the member, or undefined. Refused,
 * wherever they are (contained resources and extensions included):
 * - a Patient resource inside it (contained, or nested in any element);
 * - a reference to any Patient but the member, in any spelling: relative or absolute (to the
 *   source's base or any other), with `_history`, in any case (`patient/x`), percent-encoded,
 *   conditional (`Patient?identifier=…`); the member is accepted only as `Patient/{id}` or
 *   `{sourceBase}/Patient/{id}` (optionally `/_history/{v}`), the spellings that are linked to the
 *   local member;
 * - any absolute reference to this server's own base (its origin);
 * - a Reference whose `type` names Patient but whose `reference` is not the member, or which has
 *   only an `identifier` that is not one of the member's;
 * - a logical reference (an `identifier`, no `reference`) where a Patient is expected (`subject`,
 *   `patient`, `beneficiary`, `subscriber`) or whose identifier has the system of the member's
 *   identifier, unless it is one of the member's identifiers.
 * Other references (to the source's non-Patient records, to other servers' non-Patient records,
 * logical references to organizations or practitioners) are left to the rewriting.
 */
export function refusedReference(resource: unknown, s: MemberScope): string | undefined {
  const root = resource as { resourceType?: string };
  const type = typeof root?.resourceType === 'string' ? root.resourceType : 'resource';
  let reason: string | undefined;
  const walk = (value: unknown, path: string, key: string | undefined, depth: number): boolean => {
    if (depth > 200) {
      reason = `nests too deep (at ${path})`;
      return true;
    }
    if (Array.isArray(value)) {
      for (let i = 0; i < value.length; i++) if (walk(value[i], `${path}[${i}]`, key, depth + 1)) return true;
      return false;
    }
    if (!value || typeof value !== 'object') return false;
    const obj = value as Record<string, unknown>;
    if (obj !== root && typeof obj.resourceType === 'string' && isPatientName(obj.resourceType)) {
      reason = `contains a Patient (at ${path})`;
      return true;
    }
    const why = referenceVerdict(obj, key, s);
    if (why) {
      reason = `${why} (at ${path})`;
      return true;
    }
    for (const [k, v] of Object.entries(obj)) if (v && typeof v === 'object' && walk(v, `${path}.${k}`, k, depth + 1)) return true;
    return false;
  };
  walk(resource, type, undefined, 0);
  return reason && `${/^[AEIOU]/.test(type) ? 'an' : 'a'} ${type} from the source ${reason}`;
}

/** The verdict on one object that may be a Reference (`key`: the element it sits in). */
function referenceVerdict(obj: Record<string, unknown>, key: string | undefined, s: MemberScope): string | undefined {
  const ref = obj.reference;
  if (typeof ref === 'string') {
    const why = refusedString(ref, s);
    if (why) return why;
    if (isPatientType(obj.type) && !isMemberReference(ref, s)) return 'refers to a patient other than the member';
    return undefined;
  }
  const id = obj.identifier;
  if (!id || typeof id !== 'object' || Array.isArray(id) || typeof obj.resourceType === 'string') return undefined;
  const looksLikeReference = Object.keys(obj).every((k) => REFERENCE_KEYS.has(k) || k.startsWith('_')) && (obj.type === undefined || typeof obj.type === 'string');
  if (!looksLikeReference) return undefined;
  const identifier = id as { system?: unknown; value?: unknown };
  const members = s.memberIdentifiers ?? [];
  if (members.some((m) => sameIdentifier(identifier, m))) return undefined;
  const memberSystem = typeof identifier.system === 'string' && members.some((m) => m.system === identifier.system);
  if (isPatientType(obj.type) || (key !== undefined && PATIENT_POSITIONS.has(key)) || memberSystem) return 'refers by identifier to a person other than the member';
  return undefined;
}
