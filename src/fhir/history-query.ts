import { badRequest } from './outcome';
import { parseInstant } from './search/fhir-date';

/** `_count`, `_offset` and `_since` of a history interaction (type, instance or system), checked as search checks them. */
export function parseHistoryQuery(query: Record<string, unknown>, defaultPageSize: number, maxPageSize: number): { count: number; offset: number; since?: number } {
  const one = (name: string): string | undefined => {
    const v = query[name];
    if (v === undefined) return undefined;
    if (typeof v !== 'string') throw badRequest(`${name} may be given once`);
    return v;
  };
  const integer = (name: string, fallback: number): number => {
    const v = one(name);
    if (v === undefined) return fallback;
    if (!/^\d{1,9}$/.test(v)) throw badRequest(`${name} must be a non-negative integer, got '${v}'`);
    return Number(v);
  };
  const sinceText = one('_since');
  const since = sinceText === undefined ? undefined : parseInstant(sinceText);
  if (sinceText !== undefined && since === undefined) throw badRequest(`_since must be an instant, got '${sinceText}'`);
  return { count: Math.min(integer('_count', defaultPageSize), maxPageSize), offset: integer('_offset', 0), since };
}
