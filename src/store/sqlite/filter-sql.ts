import { Filter, SortSpec } from '../types';

/**
 * Compiles the store's MongoDB-style filters to SQLite, for a collection stored as
 * `(rid INTEGER PRIMARY KEY, id TEXT UNIQUE, doc TEXT)` with, for each wildcard-indexed subtree
 * (`s.$**`), a side table of `(rid, p, v, h)` rows: one per value of each field `p` under it (`v` the
 * value, or the low end of a `{lo, hi}` range with `h` its high end), as MongoDB's multikey and
 * wildcard indexes hold them. Conditions on such a field become `rid IN (SELECT rid FROM side …)`,
 * served by the side table's `(p, v)` index; other fields are read from the document as scalars with
 * `json_extract` (served by an expression index where one was created).
 */
export interface CollectionLayout {
  table: string;
  /** Wildcard-indexed subtrees, e.g. `s`, and their side tables. */
  wildcards: Map<string, string>;
}

export interface Compiled {
  sql: string;
  params: unknown[];
}

const SIMPLE_KEY = /^[A-Za-z_][A-Za-z0-9_]*$/;

/** `a.b.c-d` as a JSON path for json_extract: `$.a.b."c-d"`. */
export function jsonPath(field: string): string {
  return '$' + field.split('.').map((k) => (SIMPLE_KEY.test(k) ? `.${k}` : `."${k.replace(/"/g, '""')}"`)).join('');
}

export const quoteIdent = (name: string) => `"${name.replace(/"/g, '""')}"`;

/** A value as SQLite binds it: booleans as 1/0 (json_extract reads JSON true/false so), the rest as is. */
export function sqlValue(v: unknown): unknown {
  if (typeof v === 'boolean') return v ? 1 : 0;
  if (v === undefined) return null;
  return v;
}

/** The literal prefix of a regular expression `^literal`, or undefined when it is not one. */
export function regexPrefix(re: RegExp): string | undefined {
  if (re.flags.replace(/[gu]/g, '')) return undefined;
  const m = re.source.match(/^\^((?:\\[^A-Za-z0-9]|[^\\^$.*+?()[\]{}|])*)$/);
  return m ? m[1].replace(/\\(.)/g, '$1') : undefined;
}

/** Just past every string that starts with `prefix` (in SQLite's binary order of UTF-8). */
export const PREFIX_END = '\u{10FFFF}';

/** Lists longer than this are bound as one JSON array (SQLite takes at most 32,766 parameters a statement). */
const LONG_LIST = 100;

/** The members of an IN: one parameter each, or, for a long list, one JSON array read with json_each. */
function inList(list: unknown[]): { sql: string; params: unknown[] } {
  const values = list.map(sqlValue);
  if (values.length <= LONG_LIST) return { sql: `(${values.map(() => '?').join(', ')})`, params: values };
  return { sql: '(SELECT value FROM json_each(?))', params: [JSON.stringify(values)] };
}

type Ops = Record<string, unknown>;

/** The longest `_id` list that makes a filter driven by its ids. */
const PINNED_IDS = 1000;

/** Terms of one AND or OR, at most this many in a group. */
const TERMS_PER_GROUP = 50;

/**
 * Terms joined by AND or OR, in parentheses; more than TERMS_PER_GROUP of them in nested groups:
 * SQLite parses a chain of N terms as an expression tree N deep and refuses one deeper than 1,000
 * (a search of 1,000 alternatives), where groups of 50 are a tree of about 50 per level of nesting.
 */
export function joinTerms(terms: string[], op: 'AND' | 'OR'): string {
  if (terms.length <= TERMS_PER_GROUP) return `(${terms.join(` ${op} `)})`;
  const groups: string[] = [];
  for (let i = 0; i < terms.length; i += TERMS_PER_GROUP) groups.push(joinTerms(terms.slice(i, i + TERMS_PER_GROUP), op));
  return joinTerms(groups, op);
}

/** Whether a filter holds `_id: {$in: [...]}` (at most PINNED_IDS) at its top level or in a top-level `$and`. */
function pinsIds(filter: Filter): boolean {
  const pinned = (f: Filter) => {
    const id = f._id as { $in?: unknown[] } | undefined;
    return !!id && typeof id === 'object' && Array.isArray(id.$in) && id.$in.length <= PINNED_IDS;
  };
  return pinned(filter) || (Array.isArray(filter.$and) && (filter.$and as Filter[]).some(pinned));
}
const isOps = (v: unknown): v is Ops => !!v && typeof v === 'object' && !Array.isArray(v) && !(v instanceof RegExp) && Object.keys(v).length > 0 && Object.keys(v).every((k) => k.startsWith('$'));

/** How many side rows a condition selects, counted up to `cap`: to pick which of several drives a query. */
export type Estimate = (side: string, where: string, params: unknown[], cap: number) => number;

/** The most side rows counted for a condition when choosing which drives a conjunction. */
const ESTIMATE_CAP = 5000;
/** The first cap of a choice, and how much it grows while no condition is below it. */
const FIRST_CAP = 16;
const CAP_GROWTH = 8;

/**
 * Which of several conditions selects the fewest rows. Each is counted only a little beyond the
 * fewest so far (caps growing from FIRST_CAP), so a selective condition beside a broad one costs
 * what the selective one selects, not ESTIMATE_CAP rows of the broad one.
 */
function narrowest(count: ((cap: number) => number)[]): number {
  for (let cap = FIRST_CAP; ; cap = Math.min(cap * CAP_GROWTH, ESTIMATE_CAP)) {
    const sizes = count.map((c) => c(cap));
    const least = Math.min(...sizes);
    if (least < cap || cap >= ESTIMATE_CAP) return sizes.indexOf(least);
  }
}

export class FilterCompiler {
  /** The `rid IN (…)` conditions compiled so far, by their SQL: candidates to drive a conjunction. */
  private readonly driving = new Map<string, { side: string; where: string; whereParams: unknown[] }>();

  constructor(private readonly layout: CollectionLayout, private readonly estimate?: Estimate) {}

  /** Whether this compilation checks side-table conditions row by row (see `compile`). */
  private correlated = false;

  compile(filter: Filter): Compiled {
    this.driving.clear(); // what one compilation learns serves it alone
    // A filter that pins `_id` to a short list (a page of known ids being re-checked) is driven by
    // those ids: its side-table conditions are checked per row (EXISTS by rid) instead of each
    // listing every row it matches, which would cost the whole match for every page.
    this.correlated = pinsIds(filter);
    const params: unknown[] = [];
    const sql = this.node(filter, params);
    return { sql, params };
  }

  /** What a sort orders by: each field's SQL expression and direction. */
  sortKeys(sort: SortSpec | undefined): { expr: string; dir: 'ASC' | 'DESC' }[] {
    return Object.entries(sort ?? {}).map(([f, dir]) => ({ expr: f === '_id' ? 'id' : `json_extract(doc, '${jsonPath(f)}')`, dir: dir === -1 ? 'DESC' : 'ASC' }));
  }

  private node(filter: Filter, params: unknown[]): string {
    const parts: { sql: string; params: unknown[] }[] = [];
    for (const [key, value] of Object.entries(filter)) {
      const local: unknown[] = [];
      if (key === '$and') {
        const list = value as Filter[];
        parts.push(list.length === 0 ? { sql: '1', params: [] } : this.conjunction(list.map((f) => { const p: unknown[] = []; return { sql: this.node(f, p), params: p }; })));
        continue;
      }
      if (key === '$or') {
        const list = value as Filter[];
        parts.push({ sql: list.length === 0 ? '0' : joinTerms(list.map((f) => this.node(f, local)), 'OR'), params: local });
      } else if (key === '$nor') {
        parts.push({ sql: `NOT ${joinTerms((value as Filter[]).map((f) => this.node(f, local)), 'OR')}`, params: local });
      } else if (key.startsWith('$')) {
        throw new Error(`unsupported filter operator ${key}`);
      } else {
        parts.push({ sql: this.field(key, value, local), params: local });
      }
    }
    const joined = parts.length === 0 ? { sql: '1', params: [] } : parts.length === 1 ? parts[0] : this.conjunction(parts);
    params.push(...joined.params);
    return joined.sql;
  }

  /**
   * Several conditions that must all hold. When two or more are lookups in a side table, the one
   * selecting the fewest rows drives (`rid IN (…)`) and the others are checked per candidate
   * (`EXISTS`, by rid): a search on two parameters then costs what its narrower one selects, not
   * its broader one, whatever the store's size.
   */
  private conjunction(parts: { sql: string; params: unknown[] }[]): { sql: string; params: unknown[] } {
    const lookups = parts.map((p) => this.driving.get(p.sql)).map((d, i) => (d ? { d, i } : undefined)).filter((x): x is { d: { side: string; where: string; whereParams: unknown[] }; i: number } => !!x);
    if (lookups.length >= 2 && this.estimate) {
      const estimate = this.estimate;
      const driver = lookups[narrowest(lookups.map(({ d }) => (cap: number) => estimate(d.side, d.where, d.whereParams, cap)))].i;
      parts = parts.map((p, i) => {
        const d = this.driving.get(p.sql);
        if (!d || i === driver) return p;
        return { sql: this.byRow(d.side, d.where), params: p.params };
      });
    }
    const params: unknown[] = [];
    for (const p of parts) params.push(...p.params);
    return { sql: parts.length === 1 ? parts[0].sql : joinTerms(parts.map((p) => p.sql), 'AND'), params };
  }

  /** A side-table condition checked for the row at hand (by its rid), not listed for every row. */
  private byRow(side: string, where: string): string {
    return `EXISTS (SELECT 1 FROM ${quoteIdent(side)} AS w WHERE w.rid = ${quoteIdent(this.layout.table)}.rid AND ${where})`;
  }

  private wildcardOf(field: string): { side: string; p: string } | undefined {
    const dot = field.indexOf('.');
    if (dot < 0) return undefined;
    const side = this.layout.wildcards.get(field.slice(0, dot));
    return side ? { side, p: field.slice(dot + 1) } : undefined;
  }

  private field(field: string, value: unknown, params: unknown[]): string {
    const wc = this.wildcardOf(field);
    if (wc) return this.wildcardField(wc.side, wc.p, value, params);
    const expr = field === '_id' ? 'id' : `json_extract(doc, '${jsonPath(field)}')`;
    return this.scalar(expr, field, value, params);
  }

  /** A condition on a scalar expression (MongoDB semantics for scalars; a missing field is NULL). */
  private scalar(expr: string, field: string, value: unknown, params: unknown[]): string {
    if (value instanceof RegExp) return this.regex(expr, value, params);
    if (!isOps(value)) {
      if (value === null) return `${expr} IS NULL`;
      if (typeof value === 'object') throw new Error(`unsupported equality on an object for ${field}`);
      params.push(sqlValue(value));
      return `${expr} = ?`;
    }
    const parts: string[] = [];
    for (const [op, arg] of Object.entries(value)) {
      switch (op) {
        case '$in':
        case '$nin': {
          const list = arg as unknown[];
          if (list.length === 0) {
            parts.push(op === '$in' ? '0' : '1');
            break;
          }
          const { sql: members, params: memberParams } = inList(list);
          params.push(...memberParams);
          const membership = `${expr} IN ${members}`;
          parts.push(op === '$in' ? membership : `(${expr} IS NULL OR NOT ${membership})`);
          break;
        }
        case '$ne':
          if (arg === null) parts.push(`${expr} IS NOT NULL`);
          else {
            params.push(sqlValue(arg));
            parts.push(`(${expr} IS NULL OR ${expr} <> ?)`);
          }
          break;
        case '$gt':
        case '$gte':
        case '$lt':
        case '$lte':
          params.push(sqlValue(arg));
          parts.push(`${expr} ${{ $gt: '>', $gte: '>=', $lt: '<', $lte: '<=' }[op]} ?`);
          break;
        case '$exists':
          parts.push(field === '_id' ? (arg ? '1' : '0') : `json_type(doc, '${jsonPath(field)}') IS ${arg ? 'NOT ' : ''}NULL`);
          break;
        case '$regex':
          parts.push(this.regex(expr, arg instanceof RegExp ? arg : new RegExp(String(arg)), params));
          break;
        default:
          throw new Error(`unsupported operator ${op} on ${field}`);
      }
    }
    return parts.length === 1 ? parts[0] : joinTerms(parts, 'AND');
  }

  private regex(expr: string, re: RegExp, params: unknown[]): string {
    const prefix = regexPrefix(re);
    if (prefix !== undefined) {
      params.push(prefix, prefix + PREFIX_END);
      return `(${expr} >= ? AND ${expr} < ?)`;
    }
    params.push(re.source, re.flags);
    return `regexp_match(?, ?, ${expr})`;
  }

  /**
   * A condition on a field of a wildcard-indexed subtree, where a document matches when one of the
   * field's values does (MongoDB's array semantics); `$nin`, `$ne` and `$exists: false` match when
   * none does.
   */
  private wildcardField(side: string, p: string, value: unknown, params: unknown[]): string {
    const t = quoteIdent(side);
    const some = (cond: string, condParams: unknown[]) => {
      params.push(p, ...condParams);
      const where = `p = ?${cond ? ` AND ${cond}` : ''}`;
      if (this.correlated) return this.byRow(side, where);
      const sql = `rid IN (SELECT rid FROM ${t} WHERE ${where})`;
      this.driving.set(sql, { side, where, whereParams: [p, ...condParams] });
      return sql;
    };
    const none = (cond: string, condParams: unknown[]) => {
      params.push(p, ...condParams);
      const where = `p = ?${cond ? ` AND ${cond}` : ''}`;
      return this.correlated ? `NOT ${this.byRow(side, where)}` : `rid NOT IN (SELECT rid FROM ${t} WHERE ${where})`;
    };
    if (value instanceof RegExp) {
      const local: unknown[] = [];
      const cond = this.regex('v', value, local);
      return some(cond, local);
    }
    if (!isOps(value)) {
      if (value === null) return none('', []);
      return some('v = ?', [sqlValue(value)]);
    }
    const parts: string[] = [];
    const ranges: string[] = [];
    const rangeParams: unknown[] = [];
    for (const [op, arg] of Object.entries(value)) {
      switch (op) {
        case '$in': {
          const list = arg as unknown[];
          if (!list.length) parts.push('0');
          else {
            const { sql: members, params: memberParams } = inList(list);
            parts.push(some(`v IN ${members}`, memberParams));
          }
          break;
        }
        case '$nin': {
          const list = arg as unknown[];
          if (list.length) {
            const { sql: members, params: memberParams } = inList(list);
            parts.push(none(`v IN ${members}`, memberParams));
          }
          break;
        }
        case '$ne':
          parts.push(arg === null ? some('', []) : none('v = ?', [sqlValue(arg)]));
          break;
        case '$exists':
          parts.push(arg ? some('', []) : none('', []));
          break;
        case '$gt':
        case '$gte':
        case '$lt':
        case '$lte':
          // Several bounds in one operator object hold for one and the same value.
          ranges.push(`v ${{ $gt: '>', $gte: '>=', $lt: '<', $lte: '<=' }[op]} ?`);
          rangeParams.push(sqlValue(arg));
          break;
        case '$regex': {
          const local: unknown[] = [];
          const cond = this.regex('v', arg instanceof RegExp ? arg : new RegExp(String(arg)), local);
          parts.push(some(cond, local));
          break;
        }
        case '$elemMatch': {
          // A range value {lo, hi}: conditions on lo read v, on hi read h, all on one value.
          const conds: string[] = [];
          const local: unknown[] = [];
          const walk = (f: Filter) => {
            for (const [k, c] of Object.entries(f)) {
              if (k === '$or') {
                const branches = (c as Filter[]).map((b) => {
                  const before = conds.length;
                  walk(b);
                  return conds.splice(before).join(' AND ') || '1';
                });
                conds.push(joinTerms(branches, 'OR'));
              } else if (k === 'lo' || k === 'hi') {
                const col = k === 'lo' ? 'v' : 'h';
                for (const [o, bound] of Object.entries(c as Ops)) {
                  const sqlOp = { $gt: '>', $gte: '>=', $lt: '<', $lte: '<=' }[o];
                  if (!sqlOp) throw new Error(`unsupported operator ${o} in $elemMatch`);
                  conds.push(`${col} ${sqlOp} ?`);
                  local.push(sqlValue(bound));
                  // A range's low end is never above its high end: an upper bound on hi bounds the index scan on lo too.
                  if (k === 'hi' && (o === '$lt' || o === '$lte')) {
                    conds.push(`v ${sqlOp} ?`);
                    local.push(sqlValue(bound));
                  }
                }
              } else if (k === '$regex') {
                // Conditions on the value itself (an array of strings): `{ $elemMatch: { $regex, $in, $nin } }`, all on one value.
                conds.push(this.regex('v', c instanceof RegExp ? c : new RegExp(String(c)), local));
              } else if (k === '$in' || k === '$nin') {
                const list = c as unknown[];
                if (!list.length) conds.push(k === '$in' ? '0' : '1');
                else {
                  const { sql: members, params: memberParams } = inList(list);
                  conds.push(`v ${k === '$in' ? 'IN' : 'NOT IN'} ${members}`);
                  local.push(...memberParams);
                }
              } else throw new Error(`unsupported $elemMatch field ${k}`);
            }
          };
          walk(arg as Filter);
          parts.push(some(conds.join(' AND '), local));
          break;
        }
        default:
          throw new Error(`unsupported operator ${op} on ${p}`);
      }
    }
    if (ranges.length) parts.push(some(ranges.join(' AND '), rangeParams));
    return parts.length === 1 ? parts[0] : joinTerms(parts, 'AND');
  }
}
