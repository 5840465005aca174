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
import { MemberScope, refusedReference } from './member-references';

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

/**
 * Which member a resource from a group export belongs to: the one member it (or its contained
 * resources) refers to, its own id for a Patient, or none (a directory record: a Practitioner, an
 * Organization…), together with the source records it refers to (`Type/id`). A resource that
 * refers to a patient outside the group, or to two members, belongs to nobody we can name: the
 * group's files are refused. So is one that refers to a patient in any spelling but the two a
 * member is linked by (`Patient/{id}`, `{sourceBase}/Patient/{id}`), or to a record of this server:
 * each member's own import would refuse it (member-references.ts).
 */
function attribute(resource: { resourceType: string; id?: string } & Record<string, unknown>, members: Map<string, string>, scope: MemberScope): { child?: string; refs: string[] } {
  const base = scope.sourceBase.replace(/\/+$/, '');
  const patients = new Set<string>();
  const refs: string[] = [];
  if (resource.resourceType === 'Patient') patients.add(String(resource.id));
  for (const ref of referencesOf(resource)) {
    const m = ref.match(REF);
    if (!m) continue;
    const [, prefix, type, id] = m;
    const own = prefix === undefined || prefix.replace(/\/+$/, '') === base;
    if (type === 'Patient') {
      if (own) patients.add(id);
    } else if (own) refs.push(`${type}/${id}`);
  }
  if (patients.size > 0) {
    const children = new Set([...patients].map((p) => members.get(p)));
    if (children.has(undefined)) throw new ExchangeFailed(`a ${resource.resourceType} in the group's files belongs to a patient who is not one of the matched members`);
    if (children.size > 1) throw new ExchangeFailed(`a ${resource.resourceType} in the group's files refers to more than one member`);
  }
  // Any other spelling of a Patient, a Patient inside it, a record of this server: refused as a member's own import would.
  const refused = resource.resourceType === 'Patient' ? undefined : refusedReference(resource, scope);
  if (refused) throw new ExchangeFailed(refused.replace('from the source', "in the group's files").replace('the member', 'a matched member'));
  return patients.size > 0 ? { child: members.get([...patients][0]), refs } : { refs };
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
 * one it cannot place is refused. Each child then imports its share, with the same checks,
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
          const { child, refs } = attribute(resource as { resourceType: string; id?: string }, r.members, scope);
          if (!child) directory.set(`${resource.resourceType}/${resource.id}`, refs);
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
    for (const f of outputs) {
      await this.split(r, f, shares, (resource) => {
        const { child, refs } = attribute(resource, r.members, scope);
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
    return { manifest, shares: result, bytes, sourceErrors, unclaimed, statusUrl };
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
