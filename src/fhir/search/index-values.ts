import { evaluatePath, referenceType } from './fhirpath-lite';
import { parseFhirDate, DateRange } from './fhir-date';
import { SearchParamDef, SearchRegistry } from './registry';

export type IndexValue = string | number | DateRange;

/** The search index stored beside a resource: `s` holds the values each parameter matches, `k` a sort key. */
export interface SearchIndex {
  s: Record<string, IndexValue[]>;
  k: Record<string, string | number>;
}

/** Lowercase and strip accents, so `Müller` is found by `muller`. */
export function normalizeString(value: string): string {
  return value.normalize('NFD').replace(/[\u0300-\u036f]/g, '').toLowerCase().trim();
}

/**
 * How many search-index values one resource may have: per search parameter, and for all of them
 * together. Each value is a row of the search index, written with the resource: a Patient of
 * 200,000 names (4 MB) made 600,000 of them and held the event loop for seconds. A resource over
 * either limit is refused (never indexed in part: a search, or an access rule such as "no
 * sensitive label", must never miss a value that is there).
 */
export interface IndexLimits {
  perParameter: number;
  perResource: number;
  /** Characters of indexed text (strings, tokens, references, uris) in all: 4,000 names of 1,000 characters took 0.7 s to write. */
  textPerResource?: number;
}
export const DEFAULT_INDEX_LIMITS: IndexLimits = { perParameter: 10_000, perResource: 50_000, textPerResource: 1024 * 1024 };
const UNLIMITED: IndexLimits = { perParameter: Infinity, perResource: Infinity };

/** A resource with more search-index values than the limits allow. */
export class IndexLimitExceeded extends Error {
  constructor(readonly type: string, readonly parameter: string | undefined, readonly limit: number, text = false) {
    super(
      text
        ? `${type} has more than ${limit} characters of searchable text in all (the limit per resource)`
        : parameter
          ? `${type} has more than ${limit} values for the search parameter '${parameter}' (the limit per resource and parameter)`
          : `${type} has more than ${limit} search-index values in all (the limit per resource)`,
    );
    this.name = 'IndexLimitExceeded';
  }
}

/** The resource's search index; throws IndexLimitExceeded as soon as it would go over `limits` (undefined: none). */
export function buildSearchIndex(registry: SearchRegistry, resource: Record<string, unknown>, limits: IndexLimits = UNLIMITED): SearchIndex {
  const index: SearchIndex = { s: {}, k: {} };
  const type = resource.resourceType as string;
  let total = 0;
  let text = 0;
  const maxText = limits.textPerResource ?? Infinity;
  for (const def of registry.params(type).values()) {
    if (def.code === '_id') continue; // the id itself is the key
    const values: IndexValue[] = [];
    // Counted as extracted (before duplicates are dropped), so the work itself is bounded too.
    const most = Math.min(limits.perParameter, limits.perResource - total) * 2;
    for (const path of def.paths) {
      for (const el of evaluatePath(resource, path)) {
        for (const v of extract(def, el)) values.push(v);
        if (values.length > most) {
          const kept = dedupe(values);
          if (kept.length > limits.perParameter) throw new IndexLimitExceeded(type, def.code, limits.perParameter);
          if (total + kept.length > limits.perResource) throw new IndexLimitExceeded(type, undefined, limits.perResource);
          values.length = 0;
          values.push(...kept);
        }
      }
    }
    if (values.length === 0) continue;
    const kept = dedupe(values);
    if (kept.length > limits.perParameter) throw new IndexLimitExceeded(type, def.code, limits.perParameter);
    total += kept.length;
    if (total > limits.perResource) throw new IndexLimitExceeded(type, undefined, limits.perResource);
    if (maxText !== Infinity) for (const v of kept) if (typeof v === 'string' && (text += v.length) > maxText) throw new IndexLimitExceeded(type, undefined, maxText, true);
    index.s[def.code] = kept;
    const first = values[0];
    index.k[def.code] = typeof first === 'object' ? first.lo : first;
  }
  return index;
}

function dedupe(values: IndexValue[]): IndexValue[] {
  if (values.length < 2) return values;
  // Strings and numbers are their own keys (90 and '90' stay apart); a date range is keyed by its ends.
  const seen = new Set<string | number>();
  const ranges = new Set<string>();
  return values.filter((v) => {
    const set = typeof v === 'object' ? ranges : seen;
    const key = typeof v === 'object' ? `${v.lo}/${v.hi}` : v;
    if (set.has(key)) return false;
    set.add(key);
    return true;
  });
}

function extract(def: SearchParamDef, el: unknown): IndexValue[] {
  switch (def.type) {
    case 'token':
      return tokenValues(el, def);
    case 'string':
      return stringValues(el).map(normalizeString);
    case 'reference':
      return referenceValues(el);
    case 'date':
      return dateValues(el);
    case 'number':
    case 'quantity':
      return numberValues(el);
    case 'uri':
      return typeof el === 'string' ? [el] : [];
  }
}

/** A token matches by `code`, by `system|code`, or by `|code` when it has no system. */
export function tokenForms(system: string | undefined, code: string): string[] {
  return system ? [code, `${system}|${code}`] : [code, `|${code}`];
}

function tokenValues(el: unknown, def: SearchParamDef): string[] {
  if (typeof el === 'string') return tokenForms(undefined, el);
  if (typeof el === 'boolean') return [String(el)];
  if (!el || typeof el !== 'object') return [];
  const o = el as Record<string, unknown>;
  if (Array.isArray(o.coding)) return o.coding.flatMap((c) => tokenValues(c, def));
  if (typeof o.code === 'string') return tokenForms(o.system as string | undefined, o.code);
  if (typeof o.value === 'string') {
    // ContactPoint.system is a code (phone, email), not a namespace: match on the value alone.
    const isContactPoint = /telecom|phone|email/.test(def.expression);
    return isContactPoint ? [o.value] : tokenForms(o.system as string | undefined, o.value);
  }
  return [];
}

function stringValues(el: unknown): string[] {
  if (typeof el === 'string') return [el];
  if (!el || typeof el !== 'object') return [];
  const o = el as Record<string, unknown>;
  const out: string[] = [];
  for (const key of ['text', 'family', 'given', 'prefix', 'suffix', 'line', 'city', 'district', 'state', 'postalCode', 'country', 'display']) {
    const v = o[key];
    if (typeof v === 'string') out.push(v);
    else if (Array.isArray(v)) for (const x of v) if (typeof x === 'string') out.push(x);
  }
  return out;
}

/**
 * A reference is findable as `Type/id`; an absolute one also by its URL. (A search by the bare id
 * asks for `Type/id` with each type the parameter may point to.)
 */
export function referenceValues(el: unknown): string[] {
  const ref = typeof el === 'string' ? el : el && typeof el === 'object' ? (el as { reference?: unknown }).reference : undefined;
  if (typeof ref !== 'string') return [];
  const type = referenceType(ref);
  if (!type) return [ref];
  const m = ref.match(/([A-Z][A-Za-z]+)\/([A-Za-z0-9\-.]{1,64})(?:\/_history\/[^/]+)?$/);
  if (!m) return [ref];
  const relative = `${m[1]}/${m[2]}`;
  return ref === relative ? [relative] : [ref, relative];
}

function dateValues(el: unknown): DateRange[] {
  if (typeof el === 'string') {
    const r = parseFhirDate(el);
    return r ? [r] : [];
  }
  if (!el || typeof el !== 'object') return [];
  const o = el as Record<string, unknown>;
  if ('start' in o || 'end' in o) {
    const start = typeof o.start === 'string' ? parseFhirDate(o.start) : undefined;
    const end = typeof o.end === 'string' ? parseFhirDate(o.end) : undefined;
    if (!start && !end) return [];
    return [{ lo: start ? start.lo : -8.64e15, hi: end ? end.hi : 8.64e15 }];
  }
  if (Array.isArray(o.event)) return o.event.flatMap(dateValues);
  return [];
}

function numberValues(el: unknown): number[] {
  if (typeof el === 'number') return [el];
  if (el && typeof el === 'object' && typeof (el as { value?: unknown }).value === 'number') return [(el as { value: number }).value];
  return [];
}
