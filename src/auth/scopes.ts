/**
 * SMART system scopes in both forms: v1 `system/Patient.read|write|*` and v2 `system/Patient.cruds`
 * (any subset, in that order). Actions: c(reate) r(ead) u(pdate) d(elete) s(earch).
 */
export type Action = 'c' | 'r' | 'u' | 'd' | 's';

interface Grant {
  type: string; // '*' for all
  actions: Set<Action>;
}

const V1: Record<string, Action[]> = { read: ['r', 's'], write: ['c', 'u', 'd'], '*': ['c', 'r', 'u', 'd', 's'] };

/**
 * The scopes PDex proposes for the payer-to-payer operations ("Scopes for Operations" on its single and
 * bulk exchange pages): the operations' canonical URLs (and, for the bulk one, its Group scope with a
 * query). Each allows what calling the operation and exporting its members' data needs: reading and
 * searching, of only the members the caller matched (the access policy bounds a partner as it bounds
 * `system/*.read`). The lower-case `…/bulk-member-match` is the IG's earlier spelling (FHIR-56185).
 */
const OPERATION_SCOPES = new Set([
  'http://hl7.org/fhir/us/davinci-hrex/OperationDefinition/member-match',
  'http://hl7.org/fhir/us/davinci-pdex/OperationDefinition/BulkMemberMatch',
  'http://hl7.org/fhir/us/davinci-pdex/OperationDefinition/bulk-member-match',
]);
const GROUP_MATCH_SCOPE = /^system[./]Group\.u\?code=http:\/\/hl7\.org\/fhir\/us\/davinci-pdex\/(?:ValueSet\/PDexMultiMemberMatchResultVS|CodeSystem\/PdexMultiMemberMatchResultCS)\|match$/;

export function parseScope(scope: string): Grant | undefined {
  if (OPERATION_SCOPES.has(scope)) return { type: '*', actions: new Set<Action>(['r', 's']) };
  if (GROUP_MATCH_SCOPE.test(scope)) return { type: 'Group', actions: new Set<Action>(['r', 's']) };
  const m = scope.match(/^system\/(\*|[A-Z][A-Za-z]+)\.(read|write|\*|c?r?u?d?s?)$/);
  if (!m || m[2] === '') return undefined;
  const actions = V1[m[2]] ?? (m[2].split('') as Action[]);
  return { type: m[1], actions: new Set(actions) };
}

const parsed = new Map<string, Grant[]>();

/** A token's scopes, parsed once per distinct scope string (tokens share a handful of them). */
export function parseScopes(scopes: string): Grant[] {
  let grants = parsed.get(scopes);
  if (!grants) {
    grants = scopes.split(/\s+/).map(parseScope).filter((g): g is Grant => !!g);
    if (parsed.size > 1000) parsed.clear();
    parsed.set(scopes, grants);
  }
  return grants;
}

/** Whether the granted scopes allow `action` on `type`. */
export function allows(granted: string, type: string, action: Action): boolean {
  return parseScopes(granted).some((g) => (g.type === '*' || g.type === type) && g.actions.has(action));
}

/** The requested scopes that the allowed ones cover (a requested scope is granted only if wholly covered). */
export function grantable(requested: string, allowed: string): string[] {
  const allow = parseScopes(allowed);
  return requested
    .split(/\s+/)
    .filter(Boolean)
    .filter((s) => {
      const want = parseScope(s);
      if (!want) return false;
      return allow.some((g) => (g.type === '*' || g.type === want.type) && [...want.actions].every((a) => g.actions.has(a)));
    });
}
