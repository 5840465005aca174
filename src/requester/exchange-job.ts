import fs from 'node:fs';
import path from 'node:path';
import { createHash } from 'node:crypto';
import { once } from 'node:events';
import type { Binary, DocumentReference, Identifier, Parameters, Provenance, Reference, TaskOutput } from 'fhir/r4';
import { ResourceStore } from '../store/resource-store';
import { JobContext, RetryLater } from '../jobs/job-runner';
import type { Logger } from '../logger';
import { BulkManifest, RemoteError, RemotePayerClient } from './remote-payer-client';
import { SourcePayer } from './source-payers';
import { TaskCancelled, TaskTracker } from './task-tracker';
import { Importer } from './importer';
import { NdjsonError, readResources } from './ndjson';
import { IdMapping, localIdFor } from './reference-rewriter';

export const EXCHANGE_JOB = 'p2p-exchange';

export interface DownloadedFile {
  name: string;
  type: string;
  file: string;
  count: number;
  size: number;
  sha1: string;
}

/** An exchange's durable state: each step's result is checkpointed, so a restarted exchange resumes where it was. */
export interface ExchangeJobData {
  taskId: string;
  issuer: string;
  localPatientId: string;
  /** What the source's $member-match receives. Kept in the job store only, never logged or put on the Task. */
  memberMatch: Parameters;
  exportParams: Record<string, string[]>;
  ownerReference: string;
  startedAt: number;
  started?: boolean;
  matched?: { memberId: string; identifier?: Identifier };
  statusUrl?: string;
  lastProgress?: string;
  manifest?: BulkManifest;
  downloaded?: DownloadedFile[];
  sourceErrors?: string[];
  imported?: string[];
  counts?: Record<string, number>;
  targets?: string[];
}

export interface ExchangeDeps {
  store: ResourceStore;
  tracker: TaskTracker;
  importer: Importer;
  clientFor: (issuer: string) => RemotePayerClient | undefined;
  payerFor: (issuer: string) => SourcePayer | undefined;
  workDir: string;
  pollMinMs: number;
  pollMaxMs: number;
  timeoutMs: number;
  maxLineLength: number;
  archiveInlineLimitBytes: number;
  requesterDisplay: string;
  releaseLock: (taskId: string) => Promise<void>;
  logger: Logger;
}

class ExchangeFailed extends Error {}

const NO_MEMBER_DATA: Parameters = { resourceType: 'Parameters', parameter: [] };

const sleep = (ms: number, signal: AbortSignal) =>
  new Promise<void>((resolve, reject) => {
    const t = setTimeout(resolve, ms);
    signal.addEventListener('abort', () => {
      clearTimeout(t);
      reject(signal.reason);
    }, { once: true });
  });

/**
 * The requesting payer's exchange, run in the background: token → $member-match → export of the
 * member → poll → download (validated) → import with Provenance → Task completed. Every step is
 * checkpointed; transient faults at the source are retried later; a cancelled Task stops it.
 */
export class ExchangeJobHandler {
  constructor(private readonly d: ExchangeDeps) {}

  run = async (ctx: JobContext<ExchangeJobData>): Promise<void> => {
    const data = ctx.job.data;
    const { tracker } = this.d;
    const client = this.d.clientFor(data.issuer);
    const payer = this.d.payerFor(data.issuer);
    try {
      if (await tracker.isCancelled(data.taskId)) throw new TaskCancelled();
      if (!client || !payer) throw new ExchangeFailed(`the source payer ${data.issuer} is no longer registered`);
      if (!data.started) {
        await tracker.change(data.taskId, { status: 'in-progress', step: 'matching', note: `Started; asking ${payer.name ?? data.issuer} to match the member` });
        await ctx.checkpoint({ started: true });
      }
      await this.match(ctx, client);
      await this.kickoff(ctx, client);
      await this.poll(ctx, client);
      await this.download(ctx, client);
      await this.importAll(ctx, payer);
      await this.finish(ctx, client, payer);
    } catch (err) {
      await this.handleError(ctx, client, err);
    }
  };

  private async match(ctx: JobContext<ExchangeJobData>, client: RemotePayerClient) {
    const data = ctx.job.data;
    if (data.matched) return;
    let matched: { memberId: string; identifier?: Identifier };
    try {
      matched = await client.memberMatch(data.memberMatch);
    } catch (err) {
      if (err instanceof RemoteError && err.status === 422) throw new ExchangeFailed(`The source payer found no unique match: ${err.message.replace(/^.*?: /, '')}`);
      throw err;
    }
    // The member's demographics are needed for nothing after the match: keep them no longer.
    await ctx.checkpoint({ matched, memberMatch: NO_MEMBER_DATA });
    const output: TaskOutput[] = [{ type: { text: 'MemberId' }, valueReference: { reference: `${client.payer.fhirBaseUrl}/Patient/${matched.memberId}` } }];
    if (matched.identifier) output.unshift({ type: { text: 'MemberIdentifier' }, valueIdentifier: matched.identifier });
    await this.d.tracker.change(data.taskId, { step: 'exporting', note: 'The source payer matched the member; starting the export', output });
  }

  private async kickoff(ctx: JobContext<ExchangeJobData>, client: RemotePayerClient) {
    const data = ctx.job.data;
    if (data.statusUrl || data.manifest) return;
    const statusUrl = await client.kickoff(data.matched?.memberId as string, data.exportParams);
    await ctx.checkpoint({ statusUrl });
    await this.d.tracker.change(data.taskId, { note: 'Export started at the source payer' });
  }

  private async poll(ctx: JobContext<ExchangeJobData>, client: RemotePayerClient) {
    const data = ctx.job.data;
    while (!data.manifest) {
      if (await this.d.tracker.isCancelled(data.taskId)) throw new TaskCancelled();
      if (Date.now() - data.startedAt > this.d.timeoutMs) throw new ExchangeFailed(`Gave up: the source's export did not finish within ${Math.round(this.d.timeoutMs / 1000)} s`);
      const status = await client.status(data.statusUrl as string);
      if (status.done) {
        let manifest = status.manifest;
        // Follow paged manifests (link next), staying on the source's origin.
        for (let next = manifest.link?.find((l) => l.relation === 'next')?.url; next; ) {
          const page = await client.status(next);
          if (!page.done) break;
          manifest = { ...manifest, output: [...manifest.output, ...page.manifest.output], error: [...(manifest.error ?? []), ...(page.manifest.error ?? [])] };
          next = page.manifest.link?.find((l) => l.relation === 'next')?.url;
        }
        await ctx.checkpoint({ manifest });
        await this.d.tracker.change(data.taskId, { step: 'downloading', note: `Export ready: ${manifest.output.length} file(s)` });
        return;
      }
      if (status.progress && status.progress !== data.lastProgress) {
        await this.d.tracker.change(data.taskId, { step: 'exporting', detail: status.progress });
        await ctx.checkpoint({ lastProgress: status.progress });
      }
      const wait = Math.min(this.d.pollMaxMs, Math.max(this.d.pollMinMs, status.retryAfterMs ?? this.d.pollMinMs));
      await sleep(wait, ctx.signal);
    }
  }

  private async download(ctx: JobContext<ExchangeJobData>, client: RemotePayerClient) {
    const data = ctx.job.data;
    const manifest = data.manifest as BulkManifest;
    const downloaded = [...(data.downloaded ?? [])];
    const sourceErrors = [...(data.sourceErrors ?? [])];
    const dir = path.join(this.d.workDir, data.taskId);
    await fs.promises.mkdir(dir, { recursive: true });
    const entries = [...manifest.output.map((o) => ({ ...o, kind: 'output' as const })), ...(manifest.error ?? []).map((o) => ({ ...o, kind: 'error' as const }))];
    for (const [i, entry] of entries.entries()) {
      const name = `${String(i).padStart(3, '0')}-${entry.kind}-${entry.type}.ndjson`;
      if (downloaded.some((f) => f.name === name)) continue;
      if (!client.ownsUrl(entry.url)) throw new ExchangeFailed(`Refused to download ${entry.type} from ${safeOrigin(entry.url)}: not the source payer's origin`);
      if (await this.d.tracker.isCancelled(data.taskId)) throw new TaskCancelled();
      const file = path.join(dir, name);
      const stream = await client.download(entry.url, manifest.requiresAccessToken !== false, ctx.signal);
      const out = fs.createWriteStream(file);
      const hash = createHash('sha1');
      let count = 0;
      let size = 0;
      try {
        for await (const { resource, raw } of readResources(stream, { expectedType: entry.kind === 'error' ? 'OperationOutcome' : entry.type, maxLineLength: this.d.maxLineLength, label: `the ${entry.type} file` })) {
          const line = `${raw}\n`;
          hash.update(line);
          size += Buffer.byteLength(line);
          count++;
          if (entry.kind === 'error') sourceErrors.push(String((resource.issue as { diagnostics?: string }[] | undefined)?.[0]?.diagnostics ?? 'unspecified error'));
          if (!out.write(line)) await once(out, 'drain');
        }
      } finally {
        await new Promise<void>((resolve) => out.end(() => resolve()));
      }
      const expected = (entry as { count?: number }).count;
      if (entry.kind === 'output' && typeof expected === 'number' && expected !== count) {
        throw new NdjsonError(`the ${entry.type} file holds ${count} resources, the manifest announced ${expected} (truncated download?)`);
      }
      downloaded.push({ name, type: entry.kind === 'error' ? 'OperationOutcome' : entry.type, file, count, size, sha1: hash.digest('base64') });
      await ctx.checkpoint({ downloaded, sourceErrors });
    }
    await this.d.tracker.change(data.taskId, { step: 'importing', note: `Downloaded ${downloaded.length} file(s), ${downloaded.reduce((n, f) => n + f.count, 0)} resources` + (sourceErrors.length ? `; the source reported ${sourceErrors.length} error(s)` : '') });
  }

  private mapping(data: ExchangeJobData, payer: SourcePayer): IdMapping {
    return { sourcePatientId: data.matched?.memberId as string, localPatientId: data.localPatientId, sourceBase: payer.fhirBaseUrl, issuer: data.issuer };
  }

  private async importAll(ctx: JobContext<ExchangeJobData>, payer: SourcePayer) {
    const data = ctx.job.data;
    const imported = [...(data.imported ?? [])];
    const counts = { ...(data.counts ?? {}) };
    const targets = [...(data.targets ?? [])];
    const system = payer.responderIdentifierSystem ?? `${payer.issuer}/resource-id`;
    for (const f of data.downloaded ?? []) {
      if (f.type === 'OperationOutcome' || imported.includes(f.name)) continue;
      if (await this.d.tracker.isCancelled(data.taskId)) throw new TaskCancelled();
      const result = await this.d.importer.importFile(f.file, f.type, this.mapping(data, payer), system, ctx.signal);
      if (result.targets.length) counts[f.type] = (counts[f.type] ?? 0) + result.targets.length;
      targets.push(...result.targets);
      imported.push(f.name);
      await ctx.checkpoint({ imported, counts, targets });
    }
  }

  private async finish(ctx: JobContext<ExchangeJobData>, client: RemotePayerClient, payer: SourcePayer) {
    const data = ctx.job.data;
    const { store } = this.d;
    const now = new Date().toISOString();
    const archived: Reference[] = [];
    for (const f of data.downloaded ?? []) {
      const binaryId = localIdFor('archive', data.taskId, `${f.name}#binary`);
      const docId = localIdFor('archive', data.taskId, f.name);
      const inline = f.size <= this.d.archiveInlineLimitBytes;
      if (inline) {
        const binary: Binary = { resourceType: 'Binary', id: binaryId, contentType: 'application/fhir+ndjson', data: (await fs.promises.readFile(f.file)).toString('base64') };
        await store.update('Binary', binaryId, binary);
      }
      const doc: DocumentReference = {
        resourceType: 'DocumentReference',
        id: docId,
        status: 'current',
        type: { text: 'Payer-to-payer data as received' },
        category: [{ coding: [{ system: 'urn:p2p-fhir-server:document', code: 'p2p-received-file' }] }],
        subject: { reference: `Patient/${data.localPatientId}` },
        date: now,
        author: [{ reference: data.ownerReference, display: payer.name ?? payer.issuer }],
        description: `${f.type} file from ${payer.issuer}: ${f.count} resources${inline ? '' : ' (over the inline archive limit: hash and size only)'}`,
        content: [{ attachment: { contentType: 'application/fhir+ndjson', ...(inline ? { url: `Binary/${binaryId}` } : {}), size: f.size, hash: f.sha1, title: f.name } }],
        context: { related: [{ reference: `Task/${data.taskId}` }] },
      };
      await store.update('DocumentReference', docId, doc);
      archived.push({ reference: `DocumentReference/${docId}` });
    }

    const provenanceId = localIdFor('provenance', data.taskId, data.issuer);
    const targets = data.targets?.length ? data.targets : [`Patient/${data.localPatientId}`];
    const provenance: Provenance = {
      resourceType: 'Provenance',
      id: provenanceId,
      target: targets.map((reference) => ({ reference })),
      recorded: now,
      activity: { coding: [{ system: 'http://terminology.hl7.org/CodeSystem/v3-DataOperation', code: 'CREATE', display: 'create' }], text: 'Payer-to-payer import' },
      reason: [{ text: 'Da Vinci PDex payer-to-payer exchange' }],
      agent: [
        { type: { coding: [{ system: 'http://terminology.hl7.org/CodeSystem/provenance-participant-type', code: 'author' }] }, who: { reference: data.ownerReference, display: payer.name ?? payer.issuer } },
        { type: { coding: [{ system: 'http://terminology.hl7.org/CodeSystem/provenance-participant-type', code: 'performer' }] }, who: { display: this.d.requesterDisplay } },
      ],
      entity: [{ role: 'source', what: { reference: `Task/${data.taskId}` } }, ...archived.map((what) => ({ role: 'source' as const, what }))],
    };
    await store.update('Provenance', provenanceId, provenance);

    const output: TaskOutput[] = [
      ...Object.entries(data.counts ?? {}).map(([type, n]) => ({ type: { text: `count:${type}` }, valueInteger: n })),
      { type: { text: 'Provenance' }, valueReference: { reference: `Provenance/${provenanceId}` } },
      ...archived.map((r) => ({ type: { text: 'received-file' }, valueReference: r })),
      ...(data.sourceErrors ?? []).map((e) => ({ type: { text: 'source-error' }, valueString: e })),
    ];
    const total = Object.values(data.counts ?? {}).reduce((a, b) => a + b, 0);
    await this.d.tracker.change(data.taskId, { status: 'completed', step: 'completed', note: `Imported ${total} resources`, output });
    if (data.statusUrl) await client.cancel(data.statusUrl);
    await this.cleanup(ctx);
  }

  /** The exchange is over: drop its work files, free the member's lock, and forget the member's demographics. */
  private async cleanup(ctx: JobContext<ExchangeJobData>) {
    const data = ctx.job.data;
    await fs.promises.rm(path.join(this.d.workDir, data.taskId), { recursive: true, force: true });
    await this.d.releaseLock(data.taskId);
    await ctx.checkpoint({ memberMatch: NO_MEMBER_DATA });
  }

  private async handleError(ctx: JobContext<ExchangeJobData>, client: RemotePayerClient | undefined, err: unknown): Promise<void> {
    const data = ctx.job.data;
    if (ctx.signal.aborted) throw ctx.signal.reason; // stopping or lease lost: another run resumes
    if (err instanceof TaskCancelled) {
      if (data.statusUrl && client) await client.cancel(data.statusUrl);
      await this.d.tracker.change(data.taskId, { status: 'cancelled', step: 'cancelled', note: 'Cancelled; the export at the source was deleted' }).catch(() => undefined);
      await this.cleanup(ctx);
      return;
    }
    if (err instanceof RemoteError && err.transient && Date.now() - data.startedAt < this.d.timeoutMs) {
      const delay = Math.min(this.d.pollMaxMs, Math.max(this.d.pollMinMs, 1000 * 2 ** Math.min(ctx.job.attempts, 6)));
      this.d.logger.warn('exchange will retry', { task: data.taskId, status: err.status });
      await this.d.tracker.change(data.taskId, { note: `The source payer is unavailable (${err.status ? `HTTP ${err.status}` : 'network error'}); retrying` }).catch(() => undefined);
      throw new RetryLater(delay, err.message);
    }
    const reason = err instanceof ExchangeFailed || err instanceof NdjsonError || err instanceof RemoteError ? err.message : 'internal error';
    if (!(err instanceof ExchangeFailed || err instanceof NdjsonError || err instanceof RemoteError)) {
      this.d.logger.error('exchange failed', { task: data.taskId, error: (err as Error).message, stack: (err as Error).stack });
    }
    if (data.statusUrl && client) await client.cancel(data.statusUrl);
    await this.d.tracker
      .change(data.taskId, { status: 'failed', step: 'failed', statusReason: reason, note: `Failed: ${reason}` })
      .catch((e) => (e instanceof TaskCancelled ? undefined : Promise.reject(e)));
    await this.cleanup(ctx);
  }
}

function safeOrigin(url: string): string {
  try {
    return new URL(url).origin;
  } catch {
    return 'an invalid URL';
  }
}
