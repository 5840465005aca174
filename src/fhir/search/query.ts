import { Filter, SortSpec } from '../../store/types';
import { badRequest } from '../outcome';
import { parseFhirDate } from './fhir-date';
import { normalizeString } from './index-values';
import { SearchParamDef, SearchRegistry } from './registry';
import { RESOURCE_TYPES } from '../resource-types';

export type QueryValue = string | string[] | undefined;
export type RawQuery = Record<string, QueryValue>;

export interface SearchRequest {
  filter: Filter;
  sort: SortSpec;
  count: number;
  offset: number;
  total: 'accurate' | 'none';
  summaryCount: boolean;
  elements?: string[];
  /** Parameters that were not understood, with the reason: reported to the client. */
  warnings: string[];
  /** The parameters that were applied, for the Bundle's self link. */
  applied: [string, string][];
  /** Chained parameters (`patient.name=x`, `subject:Patient.name=x`) and reverse chains (`_has:…`), resolved by the caller against the store. */
  joins: Join[];
  /** `_include` and `_revinclude` requests. */
  includes: Include[];
}

/** `code[:Type].rest=value`: resources whose `code` references a `Type` matching `rest=value`; `_has:Type:code:rest=value`: resources referenced… the other way. */
export type Join =
  | { kind: 'chain'; code: string; targets: string[]; query: RawQuery }
  | { kind: 'has'; type: string; code: string; query: RawQuery };

/** `_include=Type:param[:Target]` (or `*`), `_revinclude=Type:param[:Target]`; `iterate` once more over what was included. */
export interface Include {
  rev: boolean;
  iterate: boolean;
  type: string;
  /** A reference parameter's code, or `*` for all of them. */
  code: string;
  target?: string;
}

export interface SearchOptions {
  strict: boolean;
  defaultCount: number;
  maxCount: number;
}

const CONTROL = new Set(['_count', '_offset', '_sort', '_total', '_summary', '_format', '_pretty', '_elements']);
const PREFIXES = ['eq', 'ne', 'gt', 'lt', 'ge', 'le', 'sa', 'eb', 'ap'] as const;
type Prefix = (typeof PREFIXES)[number];

const escapeRegex = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

/** Turns a FHIR search query into a MongoDB-style filter over the stored search index. */
export function parseSearch(registry: SearchRegistry, type: string, query: RawQuery, options: SearchOptions): SearchRequest {
  const req: SearchRequest = {
    filter: {},
    sort: { lu: 1, _id: 1 },
    count: options.defaultCount,
    offset: 0,
    total: 'accurate',
    summaryCount: false,
    warnings: [],
    applied: [],
    joins: [],
    includes: [],
  };
  const conditions: Filter[] = [];
  const reject = (msg: string) => {
    if (options.strict) throw badRequest(msg);
    req.warnings.push(msg);
  };

  checkSize(query);
  for (const [rawKey, rawValue] of Object.entries(query)) {
    if (rawValue === undefined) continue;
    const values = (Array.isArray(rawValue) ? rawValue : [rawValue]).map(String);
    const [code, modifier] = splitKey(rawKey);
    if (CONTROL.has(code)) {
      applyControl(req, code, values[values.length - 1], registry, type, options);
      continue;
    }
    if (code === '_include' || code === '_revinclude') {
      if (modifier && modifier !== 'iterate' && modifier !== 'recurse') {
        reject(`Modifier ':${modifier}' is not supported for ${code}`);
        continue;
      }
      for (const value of values) {
        const include = parseInclude(registry, code === '_revinclude', !!modifier, value, type);
        if (typeof include === 'string') reject(include);
        else {
          req.includes.push(include);
          req.applied.push([rawKey, value]);
        }
      }
      continue;
    }
    if (code === '_has') {
      // _has:Type:param:rest=value
      const m = rawKey.match(/^_has:([A-Z][A-Za-z]+):([a-z][a-z0-9-]*):(.+)$/);
      const on = m && registry.get(m[1], m[2]);
      if (!m || !on || on.type !== 'reference') {
        reject(`'${rawKey}' is not a _has this server takes (_has:Type:reference-parameter:parameter=value)`);
        continue;
      }
      for (const value of values) {
        req.joins.push({ kind: 'has', type: m[1], code: m[2], query: { [m[3]]: value } });
        req.applied.push([rawKey, value]);
      }
      continue;
    }
    if (rawKey.includes('.')) {
      const dot = rawKey.indexOf('.');
      const [head, headModifier] = splitKey(rawKey.slice(0, dot));
      const def = registry.get(type, head);
      if (!def || def.type !== 'reference') {
        reject(`Chained search parameter '${rawKey}': '${head}' is not a reference parameter of ${type}`);
        continue;
      }
      const targets = headModifier ? [headModifier] : def.targets.filter((t) => (RESOURCE_TYPES as readonly string[]).includes(t));
      if (headModifier && !def.targets.includes(headModifier)) {
        reject(`Chained search parameter '${rawKey}': '${head}' does not point to ${headModifier}`);
        continue;
      }
      for (const value of values) {
        req.joins.push({ kind: 'chain', code: head, targets, query: { [rawKey.slice(dot + 1)]: value } });
        req.applied.push([rawKey, value]);
      }
      continue;
    }
    const def = registry.get(type, code);
    if (!def) {
      reject(`Unknown search parameter '${code}' for ${type}`);
      continue;
    }
    for (const value of values) {
      const cond = compileParam(def, modifier, value);
      if (cond === null) {
        reject(`Modifier ':${modifier}' is not supported for search parameter '${code}' (${def.type})`);
        break;
      }
      conditions.push(cond);
      req.applied.push([rawKey, value]);
    }
  }
  if (conditions.length === 1) req.filter = conditions[0];
  else if (conditions.length > 1) req.filter = { $and: conditions };
  return req;
}

/** One `_include` or `_revinclude` value, or why it is not taken. */
function parseInclude(registry: SearchRegistry, rev: boolean, iterate: boolean, value: string, type: string): Include | string {
  if (value === '*' && !rev) return { rev, iterate, type, code: '*' };
  const [from, code, target] = value.split(':');
  if (!rev && from !== type && !iterate) return `_include=${value}: the source type must be ${type}`;
  if (code === '*' && rev) return `_revinclude=${value}: name the reference parameter`;
  const def = code === '*' ? undefined : registry.get(from, code);
  if (code !== '*' && (!def || def.type !== 'reference')) return `${rev ? '_revinclude' : '_include'}=${value}: '${code}' is not a reference parameter of ${from}`;
  if (target !== undefined && !(RESOURCE_TYPES as readonly string[]).includes(target)) return `${rev ? '_revinclude' : '_include'}=${value}: ${target} is not served`;
  return { rev, iterate, type: from, code, target };
}

function splitKey(key: string): [string, string | undefined] {
  const i = key.indexOf(':');
  return i < 0 ? [key, undefined] : [key.slice(0, i), key.slice(i + 1)];
}

function applyControl(req: SearchRequest, code: string, value: string, registry: SearchRegistry, type: string, options: SearchOptions) {
  switch (code) {
    case '_count': {
      const n = Number(value);
      if (!Number.isInteger(n) || n < 0) throw badRequest(`_count must be a non-negative integer, got '${value}'`);
      req.count = Math.min(n, options.maxCount);
      req.applied.push([code, String(req.count)]);
      break;
    }
    case '_offset': {
      const n = Number(value);
      if (!Number.isInteger(n) || n < 0) throw badRequest(`_offset must be a non-negative integer, got '${value}'`);
      req.offset = n;
      break;
    }
    case '_total':
      if (!['none', 'estimate', 'accurate'].includes(value)) throw badRequest(`_total must be none, estimate or accurate`);
      req.total = value === 'none' ? 'none' : 'accurate';
      req.applied.push([code, value]);
      break;
    case '_summary':
      if (value === 'count') req.summaryCount = true;
      else if (value !== 'false') throw badRequest(`_summary=${value} is not supported (use count or false)`);
      req.applied.push([code, value]);
      break;
    case '_elements':
      req.elements = value.split(',').map((s) => s.trim()).filter(Boolean);
      req.applied.push([code, value]);
      break;
    case '_sort': {
      const sort: SortSpec = {};
      for (const part of value.split(',').map((s) => s.trim()).filter(Boolean)) {
        const desc = part.startsWith('-');
        const name = desc ? part.slice(1) : part;
        const dir = desc ? -1 : 1;
        if (name === '_id') sort._id = dir;
        else if (name === '_lastUpdated') sort.lu = dir;
        else if (registry.get(type, name)) sort[`k.${name}`] = dir;
        else throw badRequest(`Cannot sort on unknown search parameter '${name}' for ${type}`);
      }
      if (!('_id' in sort)) sort._id = 1;
      req.sort = sort;
      req.applied.push([code, value]);
      break;
    }
    default:
      break; // _format and _pretty: JSON is the only format served
  }
}

/** At most this many comma-separated alternatives in one parameter. */
const MAX_ALTERNATIVES = 1000;
/**
 * At most this many parameter occurrences in one search (`a=1&a=2&b=3` is three; `_count` and the
 * other result parameters are not counted), and this many alternatives in all of them together:
 * each is a condition of one SQL statement (1,000 AND-ed ones went over SQLite's expression depth).
 */
export const MAX_SEARCH_PARAMETERS = 100;
export const MAX_SEARCH_ALTERNATIVES = 2000;

/** Refuses a search with more parameters, or more alternatives in all, than the limits. */
function checkSize(query: RawQuery): void {
  let occurrences = 0;
  let alternatives = 0;
  for (const [rawKey, rawValue] of Object.entries(query)) {
    if (rawValue === undefined || CONTROL.has(splitKey(rawKey)[0])) continue;
    for (const value of Array.isArray(rawValue) ? rawValue : [rawValue]) {
      occurrences++;
      alternatives += String(value).split(/(?<!\\),/).length;
    }
  }
  if (occurrences > MAX_SEARCH_PARAMETERS) throw badRequest(`A search may have at most ${MAX_SEARCH_PARAMETERS} parameters (this one has ${occurrences}); _count, _sort and the other result parameters are not counted`);
  if (alternatives > MAX_SEARCH_ALTERNATIVES) throw badRequest(`A search may list at most ${MAX_SEARCH_ALTERNATIVES} values in all its parameters together (this one lists ${alternatives})`);
}

function splitOr(value: string): string[] {
  // Commas separate alternatives; "\," is a literal comma.
  const alternatives = value.split(/(?<!\\),/).map((v) => v.replace(/\\,/g, ','));
  if (alternatives.length > MAX_ALTERNATIVES) throw badRequest(`A search parameter may list at most ${MAX_ALTERNATIVES} alternatives`);
  return alternatives;
}

/** Returns the filter for one occurrence of a parameter, or null when the modifier is not supported. */
function compileParam(def: SearchParamDef, modifier: string | undefined, value: string): Filter | null {
  if (def.code === '_id') {
    if (modifier && modifier !== 'missing') return null;
    return modifier ? (value === 'false' ? {} : { _id: { $exists: false } }) : { _id: { $in: splitOr(value).filter((v) => v !== '') } };
  }
  const field = `s.${def.code}`;
  if (modifier === 'missing') {
    if (value !== 'true' && value !== 'false') throw badRequest(`:missing takes true or false`);
    return value === 'true' ? { [field]: { $exists: false } } : { [field]: { $exists: true } };
  }
  const alternatives = splitOr(value).filter((v) => v !== '');
  if (alternatives.length === 0) throw badRequest(`Search parameter '${def.code}' has an empty value`);
  const anyOf = (conds: Filter[]): Filter => (conds.length === 1 ? conds[0] : { $or: conds });

  switch (def.type) {
    case 'token': {
      if (modifier) return null;
      const exact: string[] = [];
      const conds: Filter[] = [];
      for (const v of alternatives) {
        if (v.endsWith('|') && v.length > 1) conds.push({ [field]: { $regex: new RegExp(`^${escapeRegex(v)}`) } });
        else exact.push(v);
      }
      if (exact.length) conds.push({ [field]: { $in: exact } });
      return anyOf(conds);
    }
    case 'string': {
      if (modifier && modifier !== 'contains') return null;
      return anyOf(
        alternatives.map((v) => {
          const n = escapeRegex(normalizeString(v));
          return { [field]: { $regex: new RegExp(modifier === 'contains' ? n : `^${n}`) } };
        }),
      );
    }
    case 'uri':
      if (modifier) return null;
      return { [field]: { $in: alternatives } };
    case 'reference': {
      if (modifier && !/^[A-Z][A-Za-z]+$/.test(modifier)) return null;
      // A bare id names a resource of any type the parameter may point to.
      const targets = modifier ? [modifier] : def.targets.length ? def.targets : RESOURCE_TYPES;
      const refs = alternatives.flatMap((v) => (v.includes('/') ? [v] : targets.map((t) => `${t}/${v}`)));
      return { [field]: { $in: refs } };
    }
    case 'date':
      if (modifier) return null;
      return anyOf(alternatives.map((v) => dateCondition(field, def.code, v)));
    case 'number':
    case 'quantity':
      if (modifier) return null;
      return anyOf(alternatives.map((v) => numberCondition(field, def.code, v)));
  }
}

function splitPrefix(value: string): [Prefix, string] {
  const p = value.slice(0, 2) as Prefix;
  if (PREFIXES.includes(p) && /^[a-z]{2}[-+\d]/.test(value)) return [p, value.slice(2)];
  return ['eq', value];
}

function dateCondition(field: string, code: string, value: string): Filter {
  const [prefix, raw] = splitPrefix(value);
  const r = parseFhirDate(raw);
  if (!r) throw badRequest(`Search parameter '${code}': '${raw}' is not a valid FHIR date`);
  const within: Filter = { lo: { $gte: r.lo }, hi: { $lte: r.hi } };
  const cond: Record<Prefix, Filter> = {
    eq: within,
    ne: { $or: [{ lo: { $lt: r.lo } }, { hi: { $gt: r.hi } }] },
    gt: { hi: { $gt: r.hi } },
    lt: { lo: { $lt: r.lo } },
    ge: { hi: { $gte: r.lo } },
    le: { lo: { $lte: r.hi } },
    sa: { lo: { $gt: r.hi } },
    eb: { hi: { $lt: r.lo } },
    ap: { lo: { $lte: r.hi }, hi: { $gte: r.lo } },
  };
  return { [field]: { $elemMatch: cond[prefix] } };
}

function numberCondition(field: string, code: string, value: string): Filter {
  const [prefix, raw] = splitPrefix(value);
  const n = Number(raw.split('|')[0]);
  if (!Number.isFinite(n)) throw badRequest(`Search parameter '${code}': '${raw}' is not a number`);
  const ops: Record<Prefix, unknown> = {
    eq: n,
    ne: { $ne: n },
    gt: { $gt: n },
    lt: { $lt: n },
    ge: { $gte: n },
    le: { $lte: n },
    sa: { $gt: n },
    eb: { $lt: n },
    ap: { $gte: n * 0.9, $lte: n * 1.1 },
  };
  return { [field]: ops[prefix] };
}
