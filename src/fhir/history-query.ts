import type { HistoryEntry, ResourceStore } from '../store/resource-store';
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

/**
 * A page of history as a caller with a restricted scope may see it, with a total that counts only
 * those versions: the versions are read newest first in chunks and each is judged by `shows`, so
 * hidden ones are neither listed nor counted. Reads every version of `ids` (a partner's own records).
 */
export async function visibleHistory(
  store: ResourceStore,
  type: string,
  which: { id?: string; ids?: string[] },
  opts: { since?: number; offset: number; count: number },
  shows: (entry: HistoryEntry) => boolean,
): Promise<{ entries: HistoryEntry[]; total: number }> {
  const entries: HistoryEntry[] = [];
  let total = 0;
  if (which.ids && which.ids.length === 0) return { entries, total };
  for (let at = 0; ; at += HISTORY_CHUNK) {
    const chunk = await store.historyOf(type, which.id, { since: opts.since, count: HISTORY_CHUNK, offset: at, ids: which.ids });
    for (const e of chunk.entries) {
      if (!shows(e)) continue;
      if (total >= opts.offset && entries.length < opts.count) entries.push(e);
      total++;
    }
    if (chunk.entries.length < HISTORY_CHUNK) return { entries, total };
  }
}

const HISTORY_CHUNK = 500;
