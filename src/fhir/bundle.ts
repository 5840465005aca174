import type { Bundle, BundleEntry, BundleLink, FhirResource, Resource } from 'fhir/r4';
import { HistoryEntry } from '../store/resource-store';
import { outcome } from './outcome';

export function searchBundle(args: {
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
}): Bundle {
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
  const entry: BundleEntry[] = args.resources.map((r) => ({
    fullUrl: `${args.base}/${r.resourceType}/${r.id}`,
    resource: r as FhirResource,
    search: { mode: 'match' },
  }));
  for (const r of args.included ?? []) entry.push({ fullUrl: `${args.base}/${r.resourceType}/${r.id}`, resource: r as FhirResource, search: { mode: 'include' } });
  if (args.warnings.length) {
    const oo = outcome('warning', 'not-supported', args.warnings.join('; '));
    entry.push({ resource: oo, search: { mode: 'outcome' } });
  }
  const bundle: Bundle = { resourceType: 'Bundle', type: 'searchset', link, entry };
  if (args.total !== undefined) bundle.total = args.total;
  return bundle;
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
