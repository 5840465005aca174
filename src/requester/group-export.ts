import fs from 'node:fs';
import path from 'node:path';
import { createHash, Hash } from 'node:crypto';
import { sleep } from '../jobs/job-runner';
import type { Logger } from '../logger';
import type { RemotePayer } from './remote-payer-client';
import { allPages, CheckedManifest, checkManifest } from './manifest';
import { downloadTo, sourceErrorOf, validateReceived } from './downloader';
import { readResources } from './ndjson';
import { ExchangeFailed, LimitReached } from './exchange-errors';
import type { DownloadedFile, ExchangeLimits } from './exchange-job';
import { elementsAt, isMemberReference, MemberScope, patientIdOf, screenReferences } from './member-references';

export interface GroupExportDeps {
  limits: ExchangeLimits;
  pollMinMs: number;
  pollMaxMs: number;
  logger: Logger;
  /** This server's own FHIR base: a record from a source may not refer to it. */
  localBaseUrl?: () => string;
}

export interface GroupExportRequest {
  remote: RemotePayer;
  /** The source's MatchedMembers Group. */
  groupId: string;
  params: Record<string, string[]>;
  /** Each matched member's id at the source, and the child exchange (its Task id) that imports it. */
  members: Map<string, string>;
  /** Where the group's files and each child's share are written: `{workDir}/{child}/` is the child's own work folder. */
  workDir: string;
  groupDir: string;
  deadline: number;
  signal: AbortSignal;
  /** A status URL of an export started before a restart, and where to record a new one. */
  statusUrl?: string;
  started: (statusUrl: string) => Promise<void>;
  /** Throws (TaskCancelled) when the exchange is no longer wanted. */
  check: () => Promise<void>;
  progress: (text: string) => Promise<void>;
}

export interface GroupExportResult {
  manifest: CheckedManifest;
  /** Each child's files, in its work folder, as if it had downloaded them itself. */
  shares: Map<string, DownloadedFile[]>;
  bytes: number;
  sourceErrors: string[];
  /** Directory records (no member's) that no member's data refers to: not passed on. */
  unclaimed: number;
  /** Records left out of every member's import (attribute): about a person outside the group, or about more than one member. */
  leftOut: Record<LeftOut, number>;
  statusUrl: string;
}

const REF = /^(?:(.+)\/)?([A-Z][A-Za-z]+)\/([A-Za-z0-9\-.]{1,64})(?:\/_history\/[^/]+)?$/;

/** Every `reference` string in a resource, contained resources included. */
function referencesOf(value: unknown, out: string[] = []): string[] {
  if (Array.isArray(value)) for (const v of value) referencesOf(v, out);
  else if (value && typeof value === 'object') {
    for (const [k, v] of Object.entries(value)) {
      if (k === 'reference' && typeof v === 'string') out.push(v);
      else if (typeof v === 'object') referencesOf(v, out);
    }
  }
  return out;
}

/** Why a record of a group's files went to no member. */
export type LeftOut = 'outside' | 'several';

/**
 * Which member a resource from a group export belongs to, together with the source records it
 * refers to (`Type/id`):
 * - a Patient: the member it is (another person's Patient goes to nobody: `outside`);
 * - a record naming someone at its about positions (member-references.ts positionsOf: an
 *   Observation's subject, a Coverage's beneficiary): the one member named there; a plain reference
 *   to a patient outside the group there (`outside`), or two members (`several`), and it goes to nobody;
 * - a record with nothing at its about positions: the one member it refers to anywhere; none, and
 *   it is a directory record (a Practitioner, an Organization…) unless it names a patient outside
 *   the group (`outside`); two members, `several`.
 * A record goes to one member at most; what it mentions of anyone else (a dependent's
 * Coverage.subscriber, another member as an Observation's performer) is kept out of that member's
 * import by the member's own check (local-form.ts). A record left out is counted, never named, and
 * the others import. Any other spelling of a patient, a Patient inside a record, or a record of
 * this server refuses the group's files, as a member's own import would refuse them.
 */
function attribute(resource: { resourceType: string; id?: string } & Record<string, unknown>, members: Map<string, string>, scope: MemberScope): { child?: string; refs: string[]; leftOut?: LeftOut } {
  const base = scope.sourceBase.replace(/\/+$/, '');
  const refs: string[] = [];
  if (resource.resourceType === 'Patient') {
    const child = members.get(String(resource.id));
    return child ? { child, refs } : { refs, leftOut: 'outside' };
  }
  const screen = screenReferences(resource, scope, { tolerateAbout: true });
  if (screen.refused) throw new ExchangeFailed(screen.refused.replace('from the source', "in the group's files").replace('the member', 'a matched member'));
  const everywhere = new Set<string>();
  for (const ref of referencesOf(resource)) {
    const m = ref.match(REF);
    if (!m) continue;
    const [, prefix, type, id] = m;
    const own = prefix === undefined || prefix.replace(/\/+$/, '') === base;
    if (!own) continue;
    if (type === 'Patient') {
      if (members.has(id)) everywhere.add(id);
    } else refs.push(`${type}/${id}`);
  }
  if (screen.aboutOthers.length > 0) return { refs, leftOut: 'outside' };
  const about = new Set<string>();
  for (const el of elementsAt(resource).about) {
    const ref = (el as { reference?: unknown }).reference;
    const id = typeof ref === 'string' && isMemberReference(ref, scope) ? patientIdOf(ref, scope) : undefined;
    if (id) about.add(id);
  }
  const named = about.size > 0 ? about : everywhere;
  if (named.size > 1) return { refs, leftOut: 'several' };
  if (named.size === 1) return { child: members.get([...named][0]), refs };
  return screen.others.length > 0 ? { refs, leftOut: 'outside' } : { refs };
}

/** One child's share of one received file, written as it is split. */
interface Share {
  file: string;
  count: number;
  size: number;
  hash: Hash;
  pending: string[];
}

/**
 * The group's `$davinci-data-export`, on the requesting side: one export for every matched member
 * of a bulk exchange. It kicks off, polls, downloads each file within the exchange's limits
 * (validating every record, as a single exchange does), then splits the files by member into each
 * child exchange's work folder: a member's records go to that member alone; a directory record
 * goes to every member whose records refer to it (directly or through another directory record);
 * a record about a person outside the group, or about two members, goes to nobody and is counted
 * (attribute); a hostile spelling refuses the group's files. Each child then imports its share, with the same checks,
 * all-or-nothing and idempotency as if it had downloaded it.
 */
export class GroupExporter {
  constructor(private readonly d: GroupExportDeps) {}

  async run(r: GroupExportRequest): Promise<GroupExportResult> {
    const { remote } = r;
    const { limits } = this.d;
    if (!remote.kickoffGroupExport) throw new ExchangeFailed('the source client cannot start a $davinci-data-export');
    const scope: MemberScope = { sourcePatientId: '', members: new Set(r.members.keys()), sourceBase: remote.payer.fhirBaseUrl, localBase: this.d.localBaseUrl?.() };
    const statusUrl = r.statusUrl ?? (await remote.kickoffGroupExport(r.groupId, r.params));
    if (!r.statusUrl) await r.started(statusUrl);
    const manifest = await this.poll(r, statusUrl);

    // 1. Download and check every file; learn what each directory record refers to.
    await fs.promises.rm(r.groupDir, { recursive: true, force: true });
    await fs.promises.mkdir(r.groupDir, { recursive: true });
    const received: { name: string; type: string; file: string; kind: 'output' | 'error' }[] = [];
    const directory = new Map<string, string[]>();
    const sourceErrors: string[] = [];
    let bytes = 0;
    for (const [i, entry] of manifest.files.entries()) {
      await r.check();
      if (Date.now() > r.deadline) throw new LimitReached(`the group's export did not finish in time (while downloading ${entry.type})`);
      const name = `${String(i).padStart(5, '0')}.ndjson`;
      const label = `the group's ${entry.type} ${entry.kind === 'error' ? 'error ' : ''}file`;
      const expectedType = entry.kind === 'error' ? 'OperationOutcome' : entry.type;
      const file = path.join(r.groupDir, name);
      const got = await downloadTo(await remote.download(entry.url, manifest.requiresAccessToken, r.signal), file, {
        label,
        expectedType,
        limits: { ...limits, remainingBytes: limits.maxExchangeBytes - bytes, deadline: r.deadline },
        check: (resource, line) => {
          validateReceived(resource, expectedType, label, line);
          if (entry.kind === 'error') {
            if (sourceErrors.length < 100) sourceErrors.push(sourceErrorOf(resource));
            return;
          }
          if (typeof resource.id !== 'string') throw new ExchangeFailed(`${label} line ${line} is a ${entry.type} without an id`);
          const { child, refs, leftOut } = attribute(resource as { resourceType: string; id?: string }, r.members, scope);
          if (!child && !leftOut) directory.set(`${resource.resourceType}/${resource.id}`, refs);
        },
      });
      if (entry.kind === 'output' && entry.count !== undefined && entry.count !== got.count) throw new ExchangeFailed(`${label} holds ${got.count} resources, the manifest announced ${entry.count} (truncated download?)`);
      bytes += got.size;
      received.push({ name, type: expectedType, file, kind: entry.kind });
    }
    await r.progress(`Received the group's ${received.length} file(s); splitting them by member`);

    // 2. Each member's records to that member; note which members refer to which directory records.
    const shares = new Map<string, Map<string, Share>>();
    const claims = new Map<string, Set<string>>([...directory.keys()].map((k) => [k, new Set<string>()]));
    const outputs = received.filter((f) => f.kind === 'output');
    const leftOut: Record<LeftOut, number> = { outside: 0, several: 0 };
    for (const f of outputs) {
      await this.split(r, f, shares, (resource) => {
        const { child, refs, leftOut: why } = attribute(resource, r.members, scope);
        if (why) leftOut[why]++;
        if (!child) return [];
        for (const ref of refs) claims.get(ref)?.add(child);
        return [child];
      });
    }
    // A directory record another one refers to (a Location's Organization) goes where the first goes.
    for (let changed = true; changed; ) {
      changed = false;
      for (const [key, refs] of directory) {
        const from = claims.get(key) as Set<string>;
        for (const ref of refs) {
          const to = claims.get(ref);
          if (!to) continue;
          for (const c of from) if (!to.has(c)) (to.add(c), (changed = true));
        }
      }
    }
    // 3. Directory records to every member that refers to them.
    const directoryFiles = outputs.filter((f) => [...directory.keys()].some((k) => k.startsWith(`${f.type}/`)));
    for (const f of directoryFiles) await this.split(r, f, shares, (resource) => (resource.id && resource.resourceType !== 'Patient' ? [...(claims.get(`${resource.resourceType}/${resource.id}`) ?? [])] : []));
    const unclaimed = [...claims.values()].filter((s) => s.size === 0).length;

    const result = new Map<string, DownloadedFile[]>();
    for (const child of r.members.values()) {
      const files: DownloadedFile[] = [];
      for (const [name, s] of [...(shares.get(child) ?? new Map<string, Share>())].sort(([a], [b]) => a.localeCompare(b))) {
        files.push({ name, type: received.find((f) => f.name === name)?.type as string, kind: 'output', file: s.file, count: s.count, size: s.size, sha1: s.hash.digest('base64') });
      }
      result.set(child, files);
    }
    await fs.promises.rm(r.groupDir, { recursive: true, force: true });
    return { manifest, shares: result, bytes, sourceErrors, unclaimed, leftOut, statusUrl };
  }

  private async poll(r: GroupExportRequest, statusUrl: string): Promise<CheckedManifest> {
    for (;;) {
      await r.check();
      if (Date.now() > r.deadline) throw new LimitReached("the source did not finish the group's $davinci-data-export in time");
      const status = await r.remote.status(statusUrl);
      if (status.done) return checkManifest(r.remote, await allPages(r.remote, status.manifest, statusUrl, this.d.limits), this.d.limits);
      if (status.progress) await r.progress(`The source is exporting the group: ${status.progress}`);
      await sleep(Math.min(this.d.pollMaxMs, Math.max(this.d.pollMinMs, status.retryAfterMs ?? this.d.pollMinMs)), r.signal);
    }
  }

  /** Copies each line of a received file to the shares `to` names, buffering lines and appending them in batches. */
  private async split(r: GroupExportRequest, f: { name: string; type: string; file: string }, shares: Map<string, Map<string, Share>>, to: (resource: { resourceType: string; id?: string } & Record<string, unknown>) => string[]): Promise<void> {
    const touched = new Set<Share>();
    let buffered = 0;
    const flush = async () => {
      for (const s of touched) {
        if (s.pending.length === 0) continue;
        const text = s.pending.join('');
        s.pending = [];
        await fs.promises.appendFile(s.file, text, { mode: 0o600 });
      }
      touched.clear();
      buffered = 0;
    };
    for await (const { resource, raw } of readResources(fs.createReadStream(f.file), { expectedType: f.type, maxLineLength: this.d.limits.maxLineLength, label: f.type })) {
      if (r.signal.aborted) throw r.signal.reason;
      for (const child of to(resource)) {
        let mine = shares.get(child);
        if (!mine) {
          mine = new Map();
          shares.set(child, mine);
          await fs.promises.rm(path.join(r.workDir, child), { recursive: true, force: true });
          await fs.promises.mkdir(path.join(r.workDir, child), { recursive: true });
        }
        let s = mine.get(f.name);
        if (!s) {
          s = { file: path.join(r.workDir, child, f.name), count: 0, size: 0, hash: createHash('sha1'), pending: [] };
          mine.set(f.name, s);
        }
        const text = `${raw}\n`;
        s.pending.push(text);
        s.hash.update(text);
        s.count++;
        s.size += Buffer.byteLength(text);
        buffered += text.length;
        touched.add(s);
      }
      if (buffered > 8 << 20) await flush();
    }
    await flush();
  }
}
