import { isServedType, SERVER_WRITTEN_TYPES } from '../fhir/resource-types';
import { isFhirResourceType } from '../fhir/validator';
import { ExchangeFailed, LimitReached } from './exchange-errors';
import type { BulkManifest, RemotePayer } from './remote-payer-client';
import { plainText } from './source-text';

/** A manifest, checked: every type a FHIR type, every URL on the source's origin (or its fileOrigins). */
export interface CheckedManifest {
  requiresAccessToken: boolean;
  /** Files to download, in order; `kind: error` ones hold the source's OperationOutcomes. */
  files: { type: string; url: string; count?: number; kind: 'output' | 'error' }[];
  /** Types this server does not store, with the resources the manifest announced for each (0 where it gave no count). */
  skipped: Record<string, number>;
  /** The files of each skipped type, and how many of them came without a count. */
  skippedFiles?: Record<string, { files: number; uncounted: number }>;
  /** Bulk Data 2.0 `deleted`: files of Bundles of DELETE requests (applied to the member's imported records only). */
  deleted?: { url: string; count?: number }[];
  /** The source's transactionTime: a later run-off asks for what changed since. */
  transactionTime?: string;
}

/** What a Task says of the types the source sent that this server cannot store: each with its count, never dropped silently. */
export function skippedText(m: Pick<CheckedManifest, 'skipped' | 'skippedFiles'>): string | undefined {
  const types = Object.keys(m.skipped);
  if (types.length === 0) return undefined;
  const each = types.map((t) => {
    const f = m.skippedFiles?.[t];
    const n = m.skipped[t];
    if (!f) return `${t} (${n})`;
    if (f.uncounted === f.files) return `${t} (${f.files} file(s), count not given)`;
    return `${t} (${n} resource(s)${f.uncounted ? ` and ${f.uncounted} file(s) without a count` : ''})`;
  });
  return `the source sent types this server cannot store, not imported: ${each.join(', ')}`;
}

export interface ManifestLimits {
  maxManifestPages: number;
  maxManifestFiles: number;
}

function safeOrigin(url: unknown): string {
  try {
    return new URL(String(url)).origin;
  } catch {
    return 'an invalid URL';
  }
}

function nextLink(m: BulkManifest): string | undefined {
  const link = Array.isArray(m.link) ? m.link.find((l) => l?.relation === 'next')?.url : undefined;
  return typeof link === 'string' ? link : undefined;
}

/** Follows `link next` within the page limit, never the same page twice. */
export async function allPages(remote: RemotePayer, first: BulkManifest, statusUrl: string, limits: ManifestLimits): Promise<BulkManifest> {
  let manifest = first;
  const seen = new Set([statusUrl]);
  for (let next = nextLink(first); next; next = nextLink(manifest)) {
    if (seen.has(next)) throw new ExchangeFailed('The manifest pages link back to a page already read');
    if (seen.size >= limits.maxManifestPages) throw new LimitReached(`The manifest has more than ${limits.maxManifestPages} pages`);
    seen.add(next);
    const page = await remote.status(next);
    if (!page.done) throw new ExchangeFailed('A manifest page answered as if the export were still running');
    const deleted = [...(Array.isArray(manifest.deleted) ? manifest.deleted : []), ...(Array.isArray(page.manifest.deleted) ? page.manifest.deleted : [])];
    manifest = { ...manifest, output: [...manifest.output, ...page.manifest.output], error: [...(manifest.error ?? []), ...(page.manifest.error ?? [])], ...(deleted.length ? { deleted } : {}), link: page.manifest.link };
    if (manifest.output.length + (manifest.error?.length ?? 0) + deleted.length > limits.maxManifestFiles) break;
  }
  return manifest;
}

/**
 * Checks every entry of a manifest; types this server does not store are set aside as skipped
 * (counted, for the Task). `deleted` entries count against the same file limit; each must be a
 * Bundle file on an allowed origin.
 */
export function checkManifest(remote: RemotePayer, manifest: BulkManifest, limits: ManifestLimits): CheckedManifest {
  type Entry = { type?: unknown; url?: unknown; count?: unknown; kind: 'output' | 'error' };
  const entries: Entry[] = [...(Array.isArray(manifest.output) ? manifest.output : []).map((o) => ({ ...o, kind: 'output' as const })), ...(Array.isArray(manifest.error) ? manifest.error : []).map((o) => ({ ...o, kind: 'error' as const }))];
  const deleted: { type?: unknown; url?: unknown; count?: unknown }[] = Array.isArray(manifest.deleted) ? manifest.deleted : [];
  if (entries.length + deleted.length > limits.maxManifestFiles) throw new LimitReached(`The manifest lists more than ${limits.maxManifestFiles} files`);
  const checked: CheckedManifest = { requiresAccessToken: manifest.requiresAccessToken !== false, files: [], skipped: {} };
  if (typeof manifest.transactionTime === 'string' && !Number.isNaN(Date.parse(manifest.transactionTime))) checked.transactionTime = new Date(manifest.transactionTime).toISOString();
  for (const e of entries) {
    if (!e || typeof e !== 'object' || !isFhirResourceType(e.type)) throw new ExchangeFailed(`The manifest names a file type that is not a FHIR resource type: ${JSON.stringify(plainText(e?.type, 60))}`);
    if (typeof e.url !== 'string' || !remote.mayDownload(e.url)) throw new ExchangeFailed(`Refused to download ${e.type} from ${safeOrigin(e.url)}: not the source payer's origin or one of its fileOrigins`);
    const count = typeof e.count === 'number' && Number.isInteger(e.count) && e.count >= 0 ? e.count : undefined;
    if (e.kind === 'output' && (!isServedType(e.type) || SERVER_WRITTEN_TYPES.includes(e.type))) {
      checked.skipped[e.type] = (checked.skipped[e.type] ?? 0) + (count ?? 0);
      const files = ((checked.skippedFiles ??= {})[e.type] ??= { files: 0, uncounted: 0 });
      files.files++;
      if (count === undefined) files.uncounted++;
      continue;
    }
    checked.files.push({ type: e.type, url: e.url, count, kind: e.kind });
  }
  for (const e of deleted) {
    if (!e || typeof e !== 'object' || e.type !== 'Bundle') throw new ExchangeFailed(`The manifest lists a deleted file whose type is not Bundle: ${JSON.stringify(plainText(e?.type, 60))}`);
    if (typeof e.url !== 'string' || !remote.mayDownload(e.url)) throw new ExchangeFailed(`Refused to download a deleted file from ${safeOrigin(e.url)}: not the source payer's origin or one of its fileOrigins`);
    const count = typeof e.count === 'number' && Number.isInteger(e.count) && e.count >= 0 ? e.count : undefined;
    (checked.deleted ??= []).push({ url: e.url, ...(count !== undefined ? { count } : {}) });
  }
  return checked;
}
