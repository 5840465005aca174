import type { Readable } from 'node:stream';
import { isServedType, SERVER_WRITTEN_TYPES } from '../fhir/resource-types';
import type { ResourceStore } from '../store/resource-store';
import type { ImportJournal } from './import-journal';
import { IMPORT_TAG_SYSTEM } from './local-form';
import { readResources } from './ndjson';
import { localIdFor } from './reference-rewriter';
import { LimitReached } from './exchange-errors';

/**
 * Bulk Data 2.0's `deleted` files: each line a Bundle whose entries are DELETE requests naming
 * records the source deleted (`request.url` `Type/id`). Each one removes the member's earlier
 * imported copy of that record, and nothing else: the local copy must exist under the id an import
 * from this source gives it (reference-rewriter.ts `localIdFor`), carry this source's import tag and
 * origin, and refer to this member. Anything else named (a Patient, a record of another member or
 * of no member, a local record, a record of another server, a record this same export sends again)
 * is left alone and counted by reason for the Task.
 */

/** Why a named record was left alone; the Task reports counts per reason, never ids. */
export const IGNORED = {
  notDelete: 'not a DELETE request',
  notTypeId: 'not a Type/id of the source',
  patient: 'a Patient (the local member is never deleted by a source)',
  type: 'a type this server does not store',
  resent: 'sent again by this same export',
  missing: 'not imported here',
  otherOrigin: 'not imported from this source',
  otherMember: "not the member's record",
} as const;

export interface DeletionTally {
  /** Records removed, by type. */
  removed: Record<string, number>;
  /** Entries left alone, by reason (IGNORED's texts). */
  ignored: Record<string, number>;
}

export interface DeletionScope {
  taskId: string;
  issuer: string;
  sourceBase: string;
  localPatientId: string;
  /** What this exchange imported (`Type/localId`): a record the export sends again stays. */
  importedNow: ReadonlySet<string>;
  deadline: number;
  signal?: AbortSignal;
  maxLineLength: number;
  /** Called between entries, to stop when the Task is cancelled. */
  check?: () => Promise<void>;
}

const TYPE_ID = /^([A-Z][A-Za-z]{0,63})\/([A-Za-z0-9\-.]{1,64})(?:\/_history\/[A-Za-z0-9\-.]{1,64})?$/;

/** Whether the resource refers to the local member anywhere (contained resources included). */
export function refersTo(value: unknown, reference: string, key?: string): boolean {
  if (typeof value === 'string') return key === 'reference' && value === reference;
  if (Array.isArray(value)) return value.some((v) => refersTo(v, reference));
  if (value && typeof value === 'object') return Object.entries(value).some(([k, v]) => refersTo(v, reference, k));
  return false;
}

/** The `Type/id` a DELETE entry's url names at the source, or why it names nothing deletable. */
function named(url: unknown, sourceBase: string): { type: string; id: string } | { ignored: string } {
  if (typeof url !== 'string') return { ignored: IGNORED.notTypeId };
  const base = sourceBase.replace(/\/+$/, '');
  let rest = url.trim();
  if (/^[a-z][a-z0-9+.-]*:/i.test(rest)) {
    if (!rest.startsWith(`${base}/`)) return { ignored: IGNORED.notTypeId };
    rest = rest.slice(base.length + 1);
  }
  const m = rest.match(TYPE_ID);
  return m ? { type: m[1], id: m[2] } : { ignored: IGNORED.notTypeId };
}

export class DeletionApplier {
  constructor(private readonly store: ResourceStore, private readonly journal: ImportJournal) {}

  /** Applies one downloaded `deleted` file (already bounded by the exchange's download limits); adds to `tally`. */
  async apply(bytes: Readable, label: string, s: DeletionScope, tally: DeletionTally): Promise<void> {
    const ignore = (why: string) => (tally.ignored[why] = (tally.ignored[why] ?? 0) + 1);
    const member = `Patient/${s.localPatientId}`;
    let seen = 0;
    for await (const { resource } of readResources(bytes, { expectedType: 'Bundle', maxLineLength: s.maxLineLength, label })) {
      const entries = Array.isArray(resource.entry) ? (resource.entry as unknown[]) : [];
      for (const entry of entries) {
        if (++seen % 100 === 0) {
          await new Promise<void>((resolve) => setImmediate(resolve));
          if (s.signal?.aborted) throw s.signal.reason;
          if (Date.now() > s.deadline) throw new LimitReached(`the exchange's deadline passed while applying ${label}`);
          await s.check?.();
        }
        const request = (entry as { request?: { method?: unknown; url?: unknown } } | null)?.request;
        if (request?.method !== 'DELETE') {
          ignore(IGNORED.notDelete);
          continue;
        }
        const target = named(request.url, s.sourceBase);
        if ('ignored' in target) {
          ignore(target.ignored);
          continue;
        }
        if (target.type === 'Patient') {
          ignore(IGNORED.patient);
          continue;
        }
        if (!isServedType(target.type) || SERVER_WRITTEN_TYPES.includes(target.type)) {
          ignore(IGNORED.type);
          continue;
        }
        const localId = localIdFor(s.issuer, target.type, target.id);
        if (s.importedNow.has(`${target.type}/${localId}`)) {
          ignore(IGNORED.resent);
          continue;
        }
        const local = (await this.store.readIfExists(target.type, localId)) as ({ meta?: { source?: string; tag?: { system?: string; code?: string }[] } } & Record<string, unknown>) | undefined;
        if (!local) {
          ignore(IGNORED.missing);
          continue;
        }
        const tagged = (local.meta?.tag ?? []).some((t) => t?.system === IMPORT_TAG_SYSTEM && t.code === s.issuer);
        if (!tagged || local.meta?.source !== `${s.sourceBase}/${target.type}/${target.id}`) {
          ignore(IGNORED.otherOrigin);
          continue;
        }
        if (!refersTo(local, member)) {
          ignore(IGNORED.otherMember);
          continue;
        }
        if (await this.journal.deleteOne(s.taskId, target.type, localId)) tally.removed[target.type] = (tally.removed[target.type] ?? 0) + 1;
        else ignore(IGNORED.missing);
      }
    }
  }
}

/** What the Task says of the deletions. */
export function deletionText(t: DeletionTally): string {
  const removed = Object.entries(t.removed);
  const ignored = Object.entries(t.ignored);
  const n = removed.reduce((a, [, c]) => a + c, 0);
  const head = `The source listed deleted records: ${n} of the member's imported record(s) removed${removed.length ? ` (${removed.map(([k, c]) => `${k} ${c}`).join(', ')})` : ''}`;
  return ignored.length ? `${head}; left alone: ${ignored.map(([why, c]) => `${c} ${why}`).join('; ')}` : head;
}
