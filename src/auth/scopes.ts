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

export function parseScope(scope: string): Grant | undefined {
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
