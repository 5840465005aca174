import type { Group, Parameters } from 'fhir/r4';
import { patientIdOf } from '../fhir/reference';
import { MATCH_COVERAGE_EXT, MATCH_PARAMETERS_EXT, MatchResultCode, RESULT_PARAMETER, RESULT_SYSTEM } from '../fhir/pdex';

/** How one submitted member ended at the source's `$bulk-member-match`: the source's Patient id, or why not. */
export type MatchOutcome = { memberId: string } | { failed: string };

const FAILED: Record<Exclude<MatchResultCode, 'match'>, string> = {
  nomatch: 'The source payer found no unique match ($bulk-member-match)',
  consentconstraint: "The source payer cannot honour the member's consent ($bulk-member-match)",
};
const AMBIGUOUS = 'The source payer matched the member to more than one of its members ($bulk-member-match); nothing is imported';
const SHARED = 'The source payer matched this member and another member of the same request to one of its members ($bulk-member-match); nothing is imported for either';

const CODES = new Set<string>(['match', 'nomatch', 'consentconstraint']);
const BY_PARAMETER = new Map(Object.entries(RESULT_PARAMETER).map(([code, name]) => [name, code as MatchResultCode]));
const VALID_ID = /^[A-Za-z0-9\-.]{1,64}$/;

/**
 * What a result Group is: its `Group.code` (PDex 2.2, 1..1), else its `characteristic` (older
 * sources), else the name of the Parameters part that carried it (PDex 2.1's envelope).
 */
export function resultCodeOf(group: Group, partName?: string): MatchResultCode | undefined {
  const codings = [group?.code, ...(Array.isArray(group?.characteristic) ? group.characteristic.map((c) => c?.code) : [])];
  for (const cc of codings) {
    const code = (Array.isArray(cc?.coding) ? cc.coding : []).find((c) => c?.system === RESULT_SYSTEM && CODES.has(c?.code as string))?.code;
    if (code) return code as MatchResultCode;
  }
  return partName ? BY_PARAMETER.get(partName) : undefined;
}

/**
 * Reads the answer of a source's `$bulk-member-match`, in either form (PDex 2.2's Group NDJSON, or
 * 2.1's Parameters holding the Groups), into each submitted member's outcome. A result is
 * correlated to a member only by the contained Patient its entry points at (`matchedMember` /
 * `nonMatchedMember`), whose id is the id this server submitted for that member (§pdex-150,
 * §pdex-152): never by demographics. Entries naming no submitted id are ignored (that member then
 * matches on its own). A match wins over a non-match for the same member (one person answered for
 * several coverages, §pdex-153); a member matched to two of the source's members, or two members
 * matched to one of them, end failed: their data cannot be told apart.
 */
export class MatchResultReader {
  private readonly matches = new Map<string, Set<string>>();
  private readonly others = new Map<string, Exclude<MatchResultCode, 'match'>>();
  /** The id of the MatchedMembers Group at the source (the first one named), for its `$davinci-data-export`. */
  groupId?: string;

  /** @param submitted each member's submitted MemberPatient id → the member (its child Task). */
  constructor(private readonly submitted: ReadonlyMap<string, string>) {}

  /** One result Group; `partName` is the Parameters part that carried it, if any. */
  take(group: Group, partName?: string): void {
    const code = resultCodeOf(group, partName);
    if (!code) return;
    if (code === 'match' && !this.groupId && typeof group.id === 'string' && VALID_ID.test(group.id)) this.groupId = group.id;
    const contained = new Set((Array.isArray(group.contained) ? group.contained : []).filter((c) => c?.resourceType === 'Patient' && typeof c.id === 'string').map((c) => `#${c.id}`));
    for (const m of Array.isArray(group.member) ? group.member : []) {
      const entity = m?.entity;
      const extensions = Array.isArray(entity?.extension) ? entity.extension : [];
      // matchedMember / nonMatchedMember; a source before 2.2 may name the extension otherwise, or (not matched) point with the entity itself.
      const pointer =
        extensions.find((e) => e?.url === MATCH_PARAMETERS_EXT)?.valueReference?.reference ??
        extensions.find((e) => e?.url !== MATCH_COVERAGE_EXT && typeof e?.valueReference?.reference === 'string')?.valueReference?.reference ??
        (code !== 'match' && typeof entity?.reference === 'string' && entity.reference.startsWith('#') ? entity.reference : undefined);
      if (typeof pointer !== 'string' || !contained.has(pointer)) continue;
      const child = this.submitted.get(pointer.slice(1));
      if (!child) continue;
      if (code === 'match') {
        const memberId = patientIdOf(entity?.reference);
        if (!memberId) continue;
        // Two of the source's members for one member is already ambiguous: no more are kept (a hostile file stays bounded).
        const ids = this.matches.get(child) ?? new Set<string>();
        if (ids.size < 2) this.matches.set(child, ids.add(memberId));
      } else if (!this.others.has(child)) {
        this.others.set(child, code);
      }
    }
  }

  /** A PDex 2.1 result: the Groups in its MatchedMembers, NonMatchedMembers and ConsentConstrainedMembers parts. */
  takeParameters(parameters: Parameters): void {
    for (const p of Array.isArray(parameters?.parameter) ? parameters.parameter : []) {
      if (p?.resource?.resourceType === 'Group') this.take(p.resource as Group, typeof p.name === 'string' ? p.name : undefined);
    }
  }

  /** Each member the answer named, with its outcome. */
  outcomes(): Map<string, MatchOutcome> {
    const out = new Map<string, MatchOutcome>();
    const claims = new Map<string, string[]>();
    for (const [child, ids] of this.matches) {
      if (ids.size !== 1) {
        out.set(child, { failed: AMBIGUOUS });
        continue;
      }
      const [memberId] = ids;
      claims.set(memberId, [...(claims.get(memberId) ?? []), child]);
      out.set(child, { memberId });
    }
    for (const children of claims.values()) if (children.length > 1) for (const child of children) out.set(child, { failed: SHARED });
    for (const [child, code] of this.others) if (!out.has(child)) out.set(child, { failed: FAILED[code] });
    return out;
  }
}
