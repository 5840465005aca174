import type { Resource } from 'fhir/r4';
import { badRequest } from '../outcome';
import { Filter } from '../../store/types';
import { ResourceStore } from '../../store/resource-store';
import { AccessScope } from '../../access/access-policy';
import { SearchRegistry } from './registry';
import { evaluatePath } from './fhirpath-lite';
import { referenceValues } from './index-values';
import { Include, Join, parseSearch } from './query';
import { isServedType } from '../resource-types';

/** A chain or `_has` may select at most this many resources on its far side. */
export const MAX_JOIN_MATCHES = 10_000;
/** Includes add at most this many resources to a page. */
export const MAX_INCLUDED = 1_000;

export interface JoinDeps {
  registry: SearchRegistry;
  store: ResourceStore;
  scope: AccessScope;
}

/** The ids of the resources of `type` matching `query`, as the caller may see them; too many is a 400. */
async function idsMatching(d: JoinDeps, type: string, query: Record<string, unknown>): Promise<string[]> {
  const visible = d.scope.filter(type);
  if (visible === null) return [];
  const sr = parseSearch(d.registry, type, query as never, { strict: true, defaultCount: 1, maxCount: 1 });
  const filter = await withJoins(d, type, sr.filter, sr.joins);
  const found = await d.store.search(type, { $and: [filter, visible] }, { limit: MAX_JOIN_MATCHES + 1 });
  if (found.length > MAX_JOIN_MATCHES) throw badRequest(`A chained or _has parameter selects more than ${MAX_JOIN_MATCHES} ${type} resources: narrow it`);
  return found.filter((r) => d.scope.canSee(r)).map((r) => r.id as string);
}

/**
 * The search's filter with its chains and `_has` resolved against the store: a chain becomes the
 * references to the matching targets, a `_has` the ids the matching resources point to. What the
 * far side holds is searched under the caller's scope, so a join never reveals a hidden resource.
 */
export async function withJoins(d: JoinDeps, type: string, filter: Filter, joins: Join[]): Promise<Filter> {
  if (joins.length === 0) return filter;
  const conditions: Filter[] = [filter];
  for (const join of joins) {
    if (join.kind === 'chain') {
      const refs: string[] = [];
      for (const target of join.targets) for (const id of await idsMatching(d, target, join.query)) refs.push(`${target}/${id}`);
      conditions.push({ [`s.${join.code}`]: { $in: refs } });
    } else {
      const def = d.registry.get(join.type, join.code);
      const ids = new Set<string>();
      const visible = d.scope.filter(join.type);
      const matching = visible === null ? [] : await idsMatching(d, join.type, join.query);
      for (let i = 0; i < matching.length; i += 500) {
        for (const r of await d.store.search(join.type, { _id: { $in: matching.slice(i, i + 500) } })) {
          for (const path of def?.paths ?? []) for (const el of evaluatePath(r, path)) for (const v of referenceValues(el)) if (v.startsWith(`${type}/`)) ids.add(v.slice(type.length + 1));
        }
      }
      conditions.push({ _id: { $in: [...ids] } });
    }
  }
  return { $and: conditions };
}

/** The references a resource holds through a reference parameter (or all of its reference parameters: `*`). */
function referencesOf(d: JoinDeps, resource: Resource, code: string, target?: string): string[] {
  const defs = code === '*' ? [...d.registry.params(resource.resourceType).values()].filter((p) => p.type === 'reference') : [d.registry.get(resource.resourceType, code)];
  const out: string[] = [];
  for (const def of defs) for (const path of def?.paths ?? []) for (const el of evaluatePath(resource, path)) for (const v of referenceValues(el)) if (/^[A-Z][A-Za-z]+\/[^/]+$/.test(v) && (!target || v.startsWith(`${target}/`))) out.push(v);
  return out;
}

/**
 * The resources `_include` and `_revinclude` add to a page (once each, none already a match), as
 * the caller may see them; `:iterate` applies once more to what was included.
 */
export async function includedFor(d: JoinDeps, matches: Resource[], includes: Include[]): Promise<Resource[]> {
  if (includes.length === 0 || matches.length === 0) return [];
  const seen = new Set(matches.map((r) => `${r.resourceType}/${r.id}`));
  const included: Resource[] = [];
  const add = (r: Resource) => {
    const key = `${r.resourceType}/${r.id}`;
    if (seen.has(key) || !d.scope.canSee(r) || included.length >= MAX_INCLUDED) return;
    seen.add(key);
    included.push(d.scope.view(r));
  };
  const round = async (from: Resource[], specs: Include[]) => {
    const before = included.length;
    for (const spec of specs) {
      if (!spec.rev) {
        const byType = new Map<string, Set<string>>();
        for (const r of from) {
          if (spec.code !== '*' && r.resourceType !== spec.type) continue;
          for (const ref of referencesOf(d, r, spec.code, spec.target)) {
            const [t, id] = ref.split('/');
            if (!byType.has(t)) byType.set(t, new Set());
            byType.get(t)?.add(id);
          }
        }
        for (const [t, ids] of byType) {
          if (!isServedType(t)) continue; // a reference to a type not stored here includes nothing
          const list = [...ids];
          for (let i = 0; i < list.length; i += 500) for (const r of await d.store.search(t, { _id: { $in: list.slice(i, i + 500) } })) add(r);
        }
      } else {
        const visible = d.scope.filter(spec.type);
        if (visible === null) continue;
        const refs = from.filter((r) => !spec.target || r.resourceType === spec.target).map((r) => `${r.resourceType}/${r.id}`);
        for (let i = 0; i < refs.length; i += 500) {
          for (const r of await d.store.search(spec.type, { $and: [{ [`s.${spec.code}`]: { $in: refs.slice(i, i + 500) } }, visible] }, { limit: MAX_INCLUDED })) add(r);
        }
      }
    }
    return included.slice(before);
  };
  const first = await round(matches, includes);
  const iterating = includes.filter((i) => i.iterate);
  if (iterating.length && first.length) await round(first, iterating);
  return included;
}
