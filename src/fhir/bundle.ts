import type { Bundle, BundleEntry, BundleLink, FhirResource, Resource } from 'fhir/r4';
import { HistoryEntry } from '../store/resource-store';
import { outcome } from './outcome';

interface SearchBundleArgs {
  base: string;
  type: string;
  resources: Resource[];
  /** Resources added by _include/_revinclude (search mode `include`). */
  included?: Resource[];
  total?: number;
  selfParams: [string, string][];
  offset: number;
  count: number;
  hasMore: boolean;
  warnings: string[];
}

/** A searchset's paging links: self, first and previous past the first page, next when there is more. */
function searchLinks(args: Omit<SearchBundleArgs, 'resources' | 'included'>): BundleLink[] {
  const link: BundleLink[] = [];
  const url = (offset: number) => {
    const qs = new URLSearchParams(args.selfParams);
    if (offset > 0) qs.set('_offset', String(offset));
    const q = qs.toString();
    return `${args.base}/${args.type}${q ? `?${q}` : ''}`;
  };
  link.push({ relation: 'self', url: url(args.offset) });
  if (args.offset > 0) {
    link.push({ relation: 'first', url: url(0) });
    link.push({ relation: 'previous', url: url(Math.max(0, args.offset - args.count)) });
  }
  if (args.hasMore) link.push({ relation: 'next', url: url(args.offset + args.count) });
  return link;
}

/** The entry that carries a search's warnings (parameters not supported, ignored). */
function warningEntry(warnings: string[]): BundleEntry {
  return { resource: outcome('warning', 'not-supported', warnings.join('; ')), search: { mode: 'outcome' } };
}

export function searchBundle(args: SearchBundleArgs): Bundle {
  const entry: BundleEntry[] = args.resources.map((r) => ({
    fullUrl: `${args.base}/${r.resourceType}/${r.id}`,
    resource: r as FhirResource,
    search: { mode: 'match' },
  }));
  for (const r of args.included ?? []) entry.push({ fullUrl: `${args.base}/${r.resourceType}/${r.id}`, resource: r as FhirResource, search: { mode: 'include' } });
  if (args.warnings.length) entry.push(warningEntry(args.warnings));
  const bundle: Bundle = { resourceType: 'Bundle', type: 'searchset', link: searchLinks(args), entry };
  if (args.total !== undefined) bundle.total = args.total;
  return bundle;
}

/**
 * The same searchset as JSON text, its matches (of `type`, nothing included) given as their ids and
 * stored JSON text, put in as they are: `JSON.stringify(searchBundle(…))` of the parsed resources.
 */
export function searchBundleText(args: Omit<SearchBundleArgs, 'resources' | 'included'> & { matches: { id: string; text: string }[] }): string {
  const entries = args.matches.map((m) => `{"fullUrl":${JSON.stringify(`${args.base}/${args.type}/${m.id}`)},"resource":${m.text},"search":{"mode":"match"}}`);
  if (args.warnings.length) entries.push(JSON.stringify(warningEntry(args.warnings)));
  const total = args.total !== undefined ? `,"total":${args.total}` : '';
  return `{"resourceType":"Bundle","type":"searchset","link":${JSON.stringify(searchLinks(args))},"entry":[${entries.join(',')}]${total}}`;
}

export function historyBundle(base: string, entries: HistoryEntry[], total: number): Bundle {
  return {
    resourceType: 'Bundle',
    type: 'history',
    total,
    entry: entries.map((e) => ({
      fullUrl: `${base}/${e.type}/${e.id}`,
      ...(e.resource ? { resource: e.resource as FhirResource } : {}),
      request: { method: e.method, url: e.method === 'POST' ? e.type : `${e.type}/${e.id}` },
      response: { status: e.method === 'POST' ? '201' : e.method === 'DELETE' ? '204' : '200', etag: `W/"${e.versionId}"`, lastModified: e.lastUpdated },
    })),
  };
}
