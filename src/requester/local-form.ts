import type { Patient, Resource } from 'fhir/r4';
import { hasElement } from '../fhir/validator';
import { stripInternalMarkers } from '../fhir/internal-markers';
import { IdMapping, localIdFor, rewriteReferences } from './reference-rewriter';
import { ImportRefused } from './exchange-errors';
import { contentHash } from '../store/resource-store';
import { screenReferences, withoutOthers } from './member-references';
import { INTERNAL_PREFIX } from '../fhir/internal-markers';
import { agreesWithMember, DISAGREES } from './member-demographics';

export const IMPORT_TAG_SYSTEM = 'urn:p2p-fhir-server:imported-from';
/**
 * On an imported record that, as received, referred to a person other than the member at a
 * mention-only position: those references were not kept (member-references.ts). Set by this server
 * only (a source's own is stripped with the other internal markers); the exchange counts them.
 */
export const OTHERS_REMOVED_TAG = { system: `${INTERNAL_PREFIX}references-not-kept`, code: 'other-person', display: 'a reference to a person other than the member was not kept' } as const;

/** Whether a record in its local form carries OTHERS_REMOVED_TAG. */
export function hadOthersRemoved(resource: Resource): boolean {
  return !!resource.meta?.tag?.some((t) => t.system === OTHERS_REMOVED_TAG.system);
}

/**
 * The local form of one resource as received from a source, linked to the local member: the
 * member's Patient stays the local one (undefined here); every other resource gets its
 * deterministic local id, references rewritten (contained resources' too), the server's own
 * markers stripped, and keeps its origin (the source id under the responder identifier system, and
 * meta.source). What the source may not send throws ImportRefused: another person's Patient, the
 * member's Patient disagreeing with the submitted demographics, or a reference to any Patient but
 * the member or to a record of this server (member-references.ts, judged before rewriting), except
 * a plain reference to another Patient of the source where the record only mentions a person: that
 * reference is masked (never rewritten to a local Patient) and the record tagged OTHERS_REMOVED_TAG.
 */
export function localForm(resource: Resource & { id?: string }, m: IdMapping, identifierSystem: string): Resource | undefined {
  const type = resource.resourceType;
  const sourceId = resource.id;
  if (typeof sourceId !== 'string') throw new ImportRefused(`a ${type} from the source has no id`);
  if (type === 'Patient') {
    if (sourceId !== m.sourcePatientId) throw new ImportRefused('the source sent a Patient other than the matched member');
    // The member is the local Patient: the source's is not copied, only compared with what was submitted.
    if (m.member && !agreesWithMember(resource as Patient, m.member)) throw new ImportRefused(DISAGREES);
    return undefined;
  }
  const screen = screenReferences(resource, m);
  if (screen.refused) throw new ImportRefused(screen.refused);
  // A plain reference to another person where the record only mentions one (a dependent's Coverage.subscriber): not kept.
  const out = rewriteReferences(stripInternalMarkers(withoutOthers(resource, screen.others)), m) as Resource & { identifier?: { system?: string; value?: string }[] };
  out.id = localIdFor(m.issuer, type, sourceId);
  if (hasElement(type, 'identifier')) {
    const origin = { system: identifierSystem, value: sourceId };
    const others = (out.identifier ?? []).filter((i) => i.system !== identifierSystem);
    out.identifier = [...others, origin];
  }
  const { versionId: _v, lastUpdated: _l, ...meta } = out.meta ?? {};
  out.meta = {
    ...meta,
    source: `${m.sourceBase}/${type}/${sourceId}`,
    tag: [...(meta.tag ?? []), { system: IMPORT_TAG_SYSTEM, code: m.issuer }, ...(screen.others.length ? [{ ...OTHERS_REMOVED_TAG }] : [])],
  };
  return out;
}

/**
 * One line of a prepared file: the local form of a resource as received, after the local reference
 * it gets (`Type/id`) and its content hash (the store's `contentHash`), each followed by a tab (JSON
 * has no raw tab outside a string); undefined for the member's own Patient. Made while the file
 * downloads (on the record checker's thread, for a large file), so the import parses each record
 * once, checks it once and hashes none; throws ImportRefused.
 */
export function preparedLine(resource: Resource & { id?: string }, m: IdMapping, identifierSystem: string): string | undefined {
  const local = localForm(resource, m, identifierSystem);
  return local && `${local.resourceType}/${local.id}\t${contentHash(local)}\t${JSON.stringify(local)}`;
}

/** A prepared line's parts (a line made before the hash was added has none). */
export function parsePreparedLine(line: string): { reference: string; hash?: string; resource: Resource } {
  const tab = line.indexOf('\t');
  const rest = line.slice(tab + 1);
  if (rest.startsWith('{')) return { reference: line.slice(0, tab), resource: JSON.parse(rest) as Resource };
  const second = rest.indexOf('\t');
  return { reference: line.slice(0, tab), hash: rest.slice(0, second), resource: JSON.parse(rest.slice(second + 1)) as Resource };
}
