import fs from 'node:fs';
import path from 'node:path';
import type { Identifier, OperationOutcome, Parameters, Patient, Reference, Resource, TaskOutput } from 'fhir/r4';
import { RESULT_SYSTEM } from '../fhir/pdex';
import { ResourceStore } from '../store/resource-store';
import { JobContext, JobDoc, RetryLater, sleep } from '../jobs/job-runner';
import type { Logger } from '../logger';
import { KickoffRoute, logTextOf, parseRetryAfter, RemoteError, RemotePayer } from './remote-payer-client';
import { allPages, CheckedManifest, checkManifest, skippedText } from './manifest';
import { DeletionApplier, deletionText, DeletionTally } from './deletions';
export type { CheckedManifest } from './manifest';
import { SourcePayer } from './source-payers';
import { TaskCancelled, TaskTracker } from './task-tracker';
import { Importer } from './importer';
import { IdMapping } from './reference-rewriter';
import { ImportJournal } from './import-journal';
import { limited } from './downloader';
import { RecordChecker } from './record-checker';
import { archiveFolder, archiveOf, provenanceOf } from './archive';
import type { BlobStore } from '../store/blobs/blob-store';
import type { AuditLog } from '../audit/audit-log';
import { classify, ExchangeFailed, LimitReached } from './exchange-errors';
import { NdjsonError } from './ndjson';
import { findMember } from './member-lookup';
import type { MemberDigest } from './member-demographics';
import { redactKnown, termsOf } from './source-text';
import { awaitBulkMatch, memberBundles } from './bulk-match';
import type { GroupExporter } from './group-export';
import { DIRECTORY_TYPES, ExchangeIngest, memberIdentifiersToAdd } from './directory-match';
import type { PayerOrganization } from '../responder/transmitter-provenance';

export const EXCHANGE_JOB = 'p2p-exchange';

/**
 * How an exchange reached the member's data, chosen once from the source's CapabilityStatement
 * and said on the Task (output `exchange-path`):
 * - `bulk-of-one`: the source declares `$bulk-member-match` and `$davinci-data-export` (PDex 2.2
 *   lets a source serve only those, §pdex-191, §pdex-129): one MemberBundle, then an export of the
 *   MatchedMembers Group for the member;
 * - `member-match`: `$member-match`, then the Bulk Data kick-offs (KICKOFF_ROUTES);
 * - `run-off-davinci-data-export` / `run-off-export`: a run-off, through the Group of the earlier
 *   match where the source declares `$davinci-data-export`, else through the kick-offs.
 */
export type ExchangePath = 'bulk-of-one' | 'member-match' | 'run-off-davinci-data-export' | 'run-off-export';
/** The Task output naming the path. */
export const PATH_OUTPUT = 'exchange-path';
/** The Task output naming the source's MatchedMembers Group (absolute), for a later run-off through `$davinci-data-export`. */
export const MATCH_GROUP_OUTPUT = 'MatchedMembersGroup';

/** Step 1's result: who the member is at the source. */
export interface Matched {
  memberId: string;
  identifier?: Identifier;
}

export interface DownloadedFile {
  /** Our own name for it: its position in the manifest. */
  name: string;
  type: string;
  kind: 'output' | 'error';
  file: string;
  /** The same records in their local form (local-form.ts's preparedLine), made as the file downloaded; absent in older checkpoints and members' shares of a group export. */
  prepared?: string;
  count: number;
  size: number;
  sha1: string;
}

/** An exchange's durable state: each step's result is checkpointed, so a restarted exchange resumes where it was. */
export interface ExchangeJobData {
  taskId: string;
  issuer: string;
  localPatientId: string;
  /** What the source's $member-match receives. Kept in the job store only, never logged or put on the Task; emptied once matched. */
  memberMatch: Parameters;
  /** The submitted MemberPatient's family names and birth date, hashed (member-demographics.ts), to compare the source's Patient with; kept after the match. */
  member?: MemberDigest;
  exportParams: Record<string, string[]>;
  ownerReference: string;
  startedAt: number;
  started?: boolean;
  matched?: Matched;
  exportStarted?: { statusUrl: string; lastProgress?: string; route?: KickoffRoute };
  manifest?: CheckedManifest;
  downloads?: { files: DownloadedFile[]; bytes: number; sourceErrors: string[]; done?: boolean };
  imports?: { files: string[]; counts: Record<string, number>; othersRemoved?: number };
  /** The manifest's `deleted` files applied so far (in order), what they removed and left alone, and the bytes they took. */
  deletions?: { files: number; bytes: number; tally: DeletionTally };
  /** The path chosen (ExchangePath); unset until chosen (a member of a bulk exchange matched in bulk never chooses). */
  path?: ExchangePath;
  /** A run-off: the completed exchange it follows. */
  runOff?: { previous: string };
  /**
   * The bulk steps: the `$bulk-member-match` under way, the MatchedMembers Group it named (or, for a
   * run-off, the earlier match's), the `$davinci-data-export` under way, and whether the exchange
   * fell back to the kick-offs after the group export failed.
   */
  bulk?: { matchStatusUrl?: string; groupId?: string; exportStatusUrl?: string; fellBack?: boolean };
}

export interface ExchangeLimits {
  maxFileBytes: number;
  maxExchangeBytes: number;
  idleTimeoutMs: number;
  maxManifestPages: number;
  maxManifestFiles: number;
  maxLineLength: number;
}

export interface ExchangeDeps {
  store: ResourceStore;
  tracker: TaskTracker;
  importer: Importer;
  /** Checks each downloaded record and makes its local form (a large file's on a worker thread). */
  checker: RecordChecker;
  journal: ImportJournal;
  remoteFor: (issuer: string) => RemotePayer | undefined;
  payerFor: (issuer: string) => SourcePayer | undefined;
  workDir: string;
  pollMinMs: number;
  pollMaxMs: number;
  timeoutMs: number;
  /** Transient faults are retried (by the job, with backoff) until this many attempts. */
  maxAttempts: number;
  limits: ExchangeLimits;
  /** Where received files are archived. */
  blobs: BlobStore;
  requesterDisplay: string;
  releaseLock: (taskId: string) => Promise<void>;
  logger: Logger;
  audit?: AuditLog;
  /** This server's own FHIR base: a record from a source may not refer to it. */
  localBaseUrl?: () => string;
  /** Exports a MatchedMembers Group ($davinci-data-export) and keeps the member's share: the `bulk-of-one` path and run-offs through the Group. Without it, only `$member-match` and the kick-offs. */
  groupExporter?: GroupExporter;
  /** This payer's Organization (the custodian agent of its import Provenance) and identifiers (PAYER_IDENTIFIERS). */
  payerOrganization?: PayerOrganization;
  payerIdentifiers?: readonly { system: string; value: string }[];
}

/**
 * Directory records first (Organization, then Practitioner, then Location, as each may refer to the
 * one before), the rest in their order: references to them can then be rewritten to the records
 * they were matched to.
 */
export function directoryFirst<T extends { type: string }>(files: readonly T[]): T[] {
  const rank = (t: string) => (DIRECTORY_ORDER.indexOf(t) + DIRECTORY_ORDER.length + 1) % (DIRECTORY_ORDER.length + 1);
  return files.map((f, i) => ({ f, i })).sort((a, b) => rank(a.f.type) - rank(b.f.type) || a.i - b.i).map(({ f }) => f);
}
const DIRECTORY_ORDER = ['Organization', 'Practitioner', 'Location'];

/** What a job keeps of the member's demographics once they are no longer needed. */
export const NO_MEMBER_DATA: Parameters = { resourceType: 'Parameters', parameter: [] };

/**
 * The requesting payer's exchange, run in the background:
 *   match → kick off the export → poll for the manifest → download and check every file →
 *   import with the undo journal → archive and Provenance → Task completed.
 * Each step's result is checkpointed; a transient fault at the source is retried later by the job;
 * a cancelled Task stops it; a failed or cancelled exchange rolls back whatever it imported.
 */
export class ExchangeJobHandler {
  private readonly deletions: DeletionApplier;

  constructor(private readonly d: ExchangeDeps) {
    this.deletions = new DeletionApplier(d.store, d.journal);
  }

  run = async (ctx: JobContext<ExchangeJobData>): Promise<void> => {
    const data = ctx.job.data;
    const remote = this.d.remoteFor(data.issuer);
    const payer = this.d.payerFor(data.issuer);
    try {
      if (await this.d.tracker.isCancelled(data.taskId)) throw new TaskCancelled();
      if (!remote || !payer) throw new ExchangeFailed(`the source payer ${data.issuer} is no longer registered`);
      if (!data.started) {
        await this.d.tracker.change(data.taskId, data.matched ? { status: 'in-progress', step: data.manifest ? 'importing' : 'exporting', note: 'Started' } : { status: 'in-progress', step: 'matching', note: `Started; asking ${payer.name ?? data.issuer} to match the member` });
        await ctx.checkpoint({ started: true });
      }
      if (!data.path && !data.manifest && (!data.matched || data.runOff)) await this.choosePath(ctx, remote);
      const matched = data.matched ?? (data.path === 'bulk-of-one' ? await this.bulkMatchOne(ctx, remote) : await this.match(ctx, remote));
      // A member of a bulk exchange may come with its files already received (the group's $davinci-data-export).
      const manifest = data.manifest ?? (await this.viaGroup(ctx, remote, matched)) ?? (await this.poll(ctx, remote, (data.exportStarted ?? (await this.kickoff(ctx, remote, matched))).statusUrl));
      const mapping: IdMapping = {
        sourcePatientId: matched.memberId,
        localPatientId: data.localPatientId,
        sourceBase: payer.fhirBaseUrl,
        issuer: data.issuer,
        localBase: this.d.localBaseUrl?.(),
        memberIdentifiers: matched.identifier ? [{ system: matched.identifier.system, value: matched.identifier.value }] : [],
        member: data.member,
      };
      // Each file is imported once it is downloaded and checked, while the next one downloads.
      // Each imported file's local references, for the Provenance (a file imported before a restart is read again).
      const imported = new Map<string, string[]>();
      const ingest = this.ingestFor(data, payer);
      // Directory files are resolved again in every run (their matches are not checkpointed), before any other file.
      const resolved = new Set<string>();
      const imports = new ImportQueue((f) => this.importOne(ctx, f, mapping, payer, imported, ingest, resolved));
      let files: DownloadedFile[];
      try {
        for (const f of directoryFirst(data.downloads?.files ?? [])) if (DIRECTORY_TYPES.has(f.type)) imports.add(f);
        files = data.downloads?.done ? data.downloads.files : await this.download(ctx, remote, manifest, mapping, payer, imports);
        for (const f of directoryFirst(files)) imports.add(f);
      } finally {
        await imports.settled();
      }
      await imports.drain();
      const targets = await this.targetsOf(files, mapping, imported, ingest);
      if (manifest.deleted?.length) await this.applyDeletions(ctx, remote, manifest, new Set(targets));
      await this.finish(ctx, remote, payer, files, targets, ingest);
    } catch (err) {
      await this.handleError(ctx, remote, err);
    }
  };

  /** The exchange's ingestion rules (directory-match.ts): the source payer is the Tasks' owner, this payer is never a source's payor. */
  private ingestFor(data: ExchangeJobData, payer: SourcePayer): ExchangeIngest {
    return new ExchangeIngest({
      store: this.d.store,
      journal: this.d.journal,
      taskId: data.taskId,
      originSystem: payer.responderIdentifierSystem ?? `${payer.issuer}/resource-id`,
      sourcePayer: { reference: data.ownerReference, identifiers: payer.identifiers ?? [] },
      thisPayer: { reference: this.d.payerOrganization?.reference, identifiers: this.d.payerIdentifiers ?? [] },
    });
  }

  private deadline(data: ExchangeJobData): number {
    return data.startedAt + this.d.timeoutMs;
  }

  private checkDeadline(data: ExchangeJobData, doing: string) {
    if (Date.now() > this.deadline(data)) throw new LimitReached(`Gave up: the exchange did not finish within ${Math.round(this.d.timeoutMs / 1000)} s (while ${doing})`);
  }

  /**
   * Chooses the exchange's path from what the source's CapabilityStatement declares (operations by
   * canonical or name, source-capabilities.ts), once, and says it on the Task. Where the source
   * declares both bulk operations (and its registration does not say `bulkMemberMatch: false`), one
   * member is a bulk request of one, whatever else it declares: PDex 2.2 requires those two of a
   * source, not `$member-match` or `Patient/{id}/$export`. A source without a readable
   * CapabilityStatement is asked `$member-match` and the kick-offs, as before. A run-off goes
   * through the earlier match's Group where the source declares `$davinci-data-export`.
   */
  private async choosePath(ctx: JobContext<ExchangeJobData>, remote: RemotePayer): Promise<void> {
    const data = ctx.job.data;
    const ops = remote.capabilities ? await remote.capabilities() : undefined;
    // The path is chosen once: not while the source cannot be reached (the job tries again later).
    if (ops?.unreachable) throw new RemoteError('reading the source payer\'s CapabilityStatement failed: the source could not be reached', undefined, true);
    const bulk = !!(ops?.bulkMemberMatch && ops.davinciDataExport && remote.payer.bulkMemberMatch !== false && remote.bulkMemberMatch && remote.kickoffGroupExport && this.d.groupExporter);
    let path: ExchangePath;
    let why: string;
    if (data.runOff) {
      const group = !!(data.bulk?.groupId && ops?.davinciDataExport && remote.kickoffGroupExport && this.d.groupExporter);
      path = group ? 'run-off-davinci-data-export' : 'run-off-export';
      why = group
        ? `Run-off through $davinci-data-export of the source's Group/${data.bulk?.groupId} from the earlier match, with _since`
        : `Run-off through the Bulk Data export kick-off, with _since (${data.bulk?.groupId ? 'the source no longer declares $davinci-data-export' : 'the earlier exchange named no MatchedMembers Group'})`;
    } else if (bulk) {
      path = 'bulk-of-one';
      why = 'Exchange path bulk-of-one: the source declares $bulk-member-match and $davinci-data-export, so the member is matched with one MemberBundle and exported with the MatchedMembers Group';
    } else {
      path = 'member-match';
      const declared = !ops?.known ? 'the source has no readable CapabilityStatement' : remote.payer.bulkMemberMatch === false && ops.bulkMemberMatch ? 'its registration says bulkMemberMatch: false' : 'the source does not declare both $bulk-member-match and $davinci-data-export';
      why = `Exchange path member-match: $member-match, then the Bulk Data export kick-off (${declared})`;
    }
    await ctx.checkpoint({ path });
    await this.d.tracker.change(data.taskId, { note: why, output: [{ type: { text: PATH_OUTPUT }, valueString: path }] });
    this.d.logger.info('exchange path', { task: data.taskId, issuer: data.issuer, path });
  }

  /**
   * The `bulk-of-one` match: the source's `$bulk-member-match` with one MemberBundle, the
   * MemberPatient under this Task's id, its answer read as the bulk exchange reads it
   * (awaitBulkMatch: either form, the same limits). The status URL is checkpointed, so a restart
   * polls on rather than asking again. A member the answer does not match fails with the bulk
   * exchange's reasons (no match, consent constraint, ambiguous).
   */
  private async bulkMatchOne(ctx: JobContext<ExchangeJobData>, remote: RemotePayer): Promise<Matched> {
    const data = ctx.job.data;
    if (!remote.bulkMemberMatch) throw new ExchangeFailed('the source client cannot send $bulk-member-match');
    let statusUrl = data.bulk?.matchStatusUrl;
    if (!statusUrl) {
      statusUrl = await remote.bulkMemberMatch(memberBundles([{ id: data.taskId, parts: data.memberMatch.parameter ?? [] }]));
      await ctx.checkpoint({ bulk: { ...data.bulk, matchStatusUrl: statusUrl } });
      await this.d.tracker.change(data.taskId, { note: 'Asked the source payer to match the member ($bulk-member-match, one MemberBundle)' });
    }
    const { outcomes, groupId } = await awaitBulkMatch(remote, statusUrl, [data.taskId], {
      limits: this.d.limits,
      deadline: this.deadline(data),
      signal: ctx.signal,
      late: () => new LimitReached(`Gave up: the source did not finish $bulk-member-match within the exchange's ${Math.round(this.d.timeoutMs / 1000)} s`),
      pollDelay: (retryAfterMs) => Math.min(this.d.pollMaxMs, Math.max(this.d.pollMinMs, retryAfterMs ?? this.d.pollMinMs)),
      check: async () => {
        if (await this.d.tracker.isCancelled(data.taskId)) throw new TaskCancelled();
      },
      progress: async (text) => void (await this.d.tracker.change(data.taskId, { step: 'matching', detail: redactKnown(text, await this.memberTerms(data)) })),
    });
    await remote.cancel(statusUrl);
    const outcome = outcomes.get(data.taskId);
    if (!outcome) throw new ExchangeFailed("The source payer's $bulk-member-match answer does not name the member");
    if ('failed' in outcome) throw new ExchangeFailed(outcome.failed);
    const matched: Matched = { memberId: outcome.memberId };
    await ctx.checkpoint({ matched, memberMatch: NO_MEMBER_DATA, bulk: { groupId } });
    const output: TaskOutput[] = [{ type: { text: 'MemberId' }, valueReference: { reference: `${remote.payer.fhirBaseUrl}/Patient/${matched.memberId}` } }];
    if (groupId) output.push({ type: { text: MATCH_GROUP_OUTPUT }, valueReference: { reference: `${remote.payer.fhirBaseUrl}/Group/${groupId}` } });
    await this.d.tracker.change(data.taskId, { step: 'exporting', note: 'The source payer matched the member ($bulk-member-match); starting $davinci-data-export of the MatchedMembers Group', output });
    return matched;
  }

  /**
   * The member's data through `$davinci-data-export` of the source's MatchedMembers Group, `patient`
   * the member (the `bulk-of-one` path and a run-off through the Group): kicked off, polled and
   * downloaded by the GroupExporter within this exchange's limits and deadline, every record
   * attributed to the member (one that is another person's refuses the files), the member's share
   * written into this exchange's work folder and checkpointed as its downloads; the import that
   * follows is the same as for any other export (member-only checks, all-or-nothing). Undefined when
   * this exchange does not go through a Group. Where the source refuses the group export, or its
   * files cannot be split by member, the exchange falls back to the kick-offs if the source declares
   * a Patient-level `$export` (a run-off always may, as before); otherwise it fails with the reason.
   */
  private async viaGroup(ctx: JobContext<ExchangeJobData>, remote: RemotePayer, matched: Matched): Promise<CheckedManifest | undefined> {
    const data = ctx.job.data;
    const groupId = data.bulk?.groupId;
    const exporter = this.d.groupExporter;
    if (!groupId || data.bulk?.fellBack || !exporter || (data.path !== 'bulk-of-one' && data.path !== 'run-off-davinci-data-export')) return undefined;
    const groupDir = path.join(this.d.workDir, `${data.taskId}.group`);
    try {
      const received = await exporter.run({
        remote,
        groupId,
        params: { ...data.exportParams, patient: [`Patient/${matched.memberId}`] }, // no `_type` unless the operator chose
        members: new Map([[matched.memberId, data.taskId]]),
        workDir: this.d.workDir,
        groupDir,
        deadline: this.deadline(data),
        signal: ctx.signal,
        statusUrl: data.bulk?.exportStatusUrl,
        started: async (statusUrl) => {
          await ctx.checkpoint({ bulk: { ...data.bulk, exportStatusUrl: statusUrl } });
          await this.d.tracker.change(data.taskId, { note: `Export started at the source payer ($davinci-data-export of Group/${groupId})`, output: [{ type: { text: 'export-route' }, valueString: 'POST Group/{id}/$davinci-data-export' }] });
        },
        check: async () => {
          if (await this.d.tracker.isCancelled(data.taskId)) throw new TaskCancelled();
        },
        progress: async (detail) => void (await this.d.tracker.change(data.taskId, { step: 'exporting', detail: redactKnown(detail, await this.memberTerms(data)) })),
      });
      await remote.cancel(received.statusUrl);
      const files = received.shares.get(data.taskId) ?? [];
      const manifest: CheckedManifest = { requiresAccessToken: received.manifest.requiresAccessToken, files: [], skipped: received.manifest.skipped, transactionTime: received.manifest.transactionTime };
      const downloads = { files, bytes: files.reduce((n, f) => n + f.size, 0), sourceErrors: received.sourceErrors, done: true };
      await ctx.checkpoint({ manifest, downloads, bulk: { ...data.bulk, exportStatusUrl: undefined } });
      const total = files.reduce((n, f) => n + f.count, 0);
      const skipped = skippedText(received.manifest);
      await this.d.tracker.change(data.taskId, { step: 'importing', note: `Received the Group's export: ${files.length} file(s), ${total} resources of the member` + (received.sourceErrors.length ? `; the source reported ${received.sourceErrors.length} error(s)` : '') + (skipped ? `; ${skipped}` : '') });
      return manifest;
    } catch (err) {
      await fs.promises.rm(groupDir, { recursive: true, force: true });
      if (ctx.signal.aborted || err instanceof TaskCancelled || err instanceof LimitReached) throw err;
      const refused = (err instanceof RemoteError && !err.transient) || (err instanceof ExchangeFailed && !(err instanceof LimitReached));
      if (!refused) throw err;
      const ops = data.path === 'bulk-of-one' ? (remote.capabilities ? await remote.capabilities() : undefined) : undefined;
      if (data.path === 'bulk-of-one' && !ops?.patientExport) throw err;
      if (data.bulk?.exportStatusUrl) await remote.cancel(data.bulk.exportStatusUrl);
      await fs.promises.rm(path.join(this.d.workDir, data.taskId), { recursive: true, force: true });
      await ctx.checkpoint({ bulk: { ...data.bulk, exportStatusUrl: undefined, fellBack: true } });
      this.d.logger.warn("the Group's $davinci-data-export failed; exporting the member by the kick-off", { task: data.taskId, issuer: data.issuer, error: redactKnown(logTextOf(err), await this.memberTerms(data)) });
      await this.d.tracker.change(data.taskId, { note: `The Group's $davinci-data-export failed (${redactKnown((err as Error).message, await this.memberTerms(data))}); exporting the member by the Bulk Data kick-off` });
      return undefined;
    }
  }

  private async match(ctx: JobContext<ExchangeJobData>, remote: RemotePayer): Promise<Matched> {
    const data = ctx.job.data;
    let answer: Awaited<ReturnType<RemotePayer['memberMatch']>>;
    try {
      answer = await remote.memberMatch(data.memberMatch);
    } catch (err) {
      if (err instanceof RemoteError && err.status === 422) {
        // PDex: a Consent the source cannot honour is told apart by the match-result code consentconstraint.
        const what = isConsentConstraint(err.outcome) ? 'The source payer cannot honour the consent' : 'The source payer found no unique match';
        throw new ExchangeFailed(`${what}: ${err.message.replace(/^.*?: /, '')}`, `${what}: ${err.logText}`);
      }
      throw err;
    }
    const matched: Matched = { memberId: answer.memberId ?? (await findMember(remote, answer.identifier as Identifier)), identifier: answer.identifier };
    // The member's demographics are needed for nothing after the match: keep them no longer.
    await ctx.checkpoint({ matched, memberMatch: NO_MEMBER_DATA });
    const output: TaskOutput[] = [{ type: { text: 'MemberId' }, valueReference: { reference: `${remote.payer.fhirBaseUrl}/Patient/${matched.memberId}` } }];
    if (matched.identifier) output.unshift({ type: { text: 'MemberIdentifier' }, valueIdentifier: matched.identifier });
    await this.d.tracker.change(data.taskId, { step: 'exporting', note: 'The source payer matched the member; starting the export', output });
    return matched;
  }

  private async kickoff(ctx: JobContext<ExchangeJobData>, remote: RemotePayer, matched: Matched) {
    const data = ctx.job.data;
    // No `_type` unless the operator chose: the source sends all it has, and what cannot be stored here is reported.
    const { statusUrl, route } = await remote.kickoff(matched.memberId, data.exportParams);
    const exportStarted = { statusUrl, route };
    await ctx.checkpoint({ exportStarted });
    const unscoped = route === 'GET Patient/$export' ? "; that route may not limit the export to the member: any record of anyone else fails the exchange" : '';
    await this.d.tracker.change(data.taskId, { note: `Export started at the source payer (${route})${unscoped}`, output: [{ type: { text: 'export-route' }, valueString: route }] });
    return exportStarted;
  }

  private async poll(ctx: JobContext<ExchangeJobData>, remote: RemotePayer, statusUrl: string): Promise<CheckedManifest> {
    const data = ctx.job.data;
    for (;;) {
      if (await this.d.tracker.isCancelled(data.taskId)) throw new TaskCancelled();
      this.checkDeadline(data, 'waiting for the export');
      const status = await remote.status(statusUrl);
      if (status.done) {
        const manifest = checkManifest(remote, await allPages(remote, status.manifest, statusUrl, this.d.limits), this.d.limits);
        await ctx.checkpoint({ manifest });
        const skipped = skippedText(manifest);
        const deleted = manifest.deleted?.length ? `, ${manifest.deleted.length} file(s) of deleted records` : '';
        await this.d.tracker.change(data.taskId, {
          step: 'downloading',
          note: `Export ready: ${manifest.files.length} file(s)${deleted}` + (skipped ? `; ${skipped}` : ''),
        });
        return manifest;
      }
      if (status.progress && status.progress !== data.exportStarted?.lastProgress) {
        await this.d.tracker.change(data.taskId, { step: 'exporting', detail: redactKnown(status.progress, await this.memberTerms(data)) });
        await ctx.checkpoint({ exportStarted: { statusUrl, lastProgress: status.progress } });
      }
      const wait = Math.min(this.d.pollMaxMs, Math.max(this.d.pollMinMs, status.retryAfterMs ?? this.d.pollMinMs));
      await sleep(Math.min(wait, Math.max(0, this.deadline(data) - Date.now()) + 1), ctx.signal);
    }
  }

  /** Downloads every file, checking each resource before it is kept; nothing is stored yet. */
  private async download(ctx: JobContext<ExchangeJobData>, remote: RemotePayer, manifest: CheckedManifest, mapping: IdMapping, payer: SourcePayer, imports: ImportQueue): Promise<DownloadedFile[]> {
    const data = ctx.job.data;
    const state = { files: [...(data.downloads?.files ?? [])], bytes: data.downloads?.bytes ?? 0, sourceErrors: [...(data.downloads?.sourceErrors ?? [])] };
    const dir = path.join(this.d.workDir, data.taskId);
    await fs.promises.mkdir(dir, { recursive: true });
    const identifierSystem = payer.responderIdentifierSystem ?? `${payer.issuer}/resource-id`;
    this.d.checker.warmUp(manifest.files.filter((f) => f.kind === 'output').map((f) => f.count));
    // Directory files first (their names stay their places in the manifest), so they are imported before the records that refer to them.
    for (const [i, entry] of directoryFirst([...manifest.files.entries()].map(([i, e]) => ({ i, e, type: e.type }))).map(({ i, e }) => [i, e] as const)) {
      const name = `${String(i).padStart(5, '0')}.ndjson`;
      if (state.files.some((f) => f.name === name)) continue;
      imports.check();
      if (await this.d.tracker.isCancelled(data.taskId)) throw new TaskCancelled();
      this.checkDeadline(data, `downloading ${entry.type}`);
      const label = `the ${entry.type} ${entry.kind === 'error' ? 'error ' : ''}file`;
      const expectedType = entry.kind === 'error' ? 'OperationOutcome' : entry.type;
      const stream = await remote.download(entry.url, manifest.requiresAccessToken, ctx.signal);
      const prepared = entry.kind === 'output' ? path.join(dir, `${String(i).padStart(5, '0')}.local`) : undefined;
      const limits = { ...this.d.limits, remainingBytes: this.d.limits.maxExchangeBytes - state.bytes - (data.deletions?.bytes ?? 0), deadline: this.deadline(data) };
      const { sourceErrors: errors, ...got } = await this.d.checker.check(limited(stream, label, limits), {
        file: path.join(dir, name),
        prepared,
        label,
        kind: entry.kind,
        expectedType,
        maxLineLength: this.d.limits.maxLineLength,
        mapping,
        identifierSystem,
      }, entry.count);
      if (entry.kind === 'output' && entry.count !== undefined && entry.count !== got.count) {
        throw new NdjsonError(`${label} holds ${got.count} resources, the manifest announced ${entry.count} (truncated download?)`);
      }
      const downloaded: DownloadedFile = { name, type: expectedType, kind: entry.kind, file: path.join(dir, name), ...(prepared ? { prepared } : {}), ...got };
      state.files.push(downloaded);
      state.bytes += got.size;
      state.sourceErrors.push(...errors.slice(0, 100));
      await ctx.checkpoint({ downloads: state });
      imports.add(downloaded);
    }
    await ctx.checkpoint({ downloads: { ...state, done: true } });
    const total = state.files.filter((f) => f.kind === 'output').reduce((n, f) => n + f.count, 0);
    await this.d.tracker.change(data.taskId, { step: 'importing', note: `Downloaded and checked ${state.files.length} file(s), ${total} resources` + (state.sourceErrors.length ? `; the source reported ${state.sourceErrors.length} error(s)` : '') });
    return state.files;
  }

  /**
   * Imports one downloaded file (once: a file imported before is skipped; a directory file is
   * imported again once per run, which writes nothing new, to rebuild its matches) and checkpoints it.
   */
  private async importOne(ctx: JobContext<ExchangeJobData>, f: DownloadedFile, mapping: IdMapping, payer: SourcePayer, imported: Map<string, string[]>, ingest: ExchangeIngest, resolved: Set<string>): Promise<void> {
    const data = ctx.job.data;
    const state = { files: [...(data.imports?.files ?? [])], counts: { ...(data.imports?.counts ?? {}) }, othersRemoved: data.imports?.othersRemoved ?? 0 };
    const directory = DIRECTORY_TYPES.has(f.type);
    const done = state.files.includes(f.name);
    if (f.kind === 'error' || (directory ? resolved.has(f.name) : done)) return;
    if (await this.d.tracker.isCancelled(data.taskId)) throw new TaskCancelled();
    const system = payer.responderIdentifierSystem ?? `${payer.issuer}/resource-id`;
    const opts = { taskId: data.taskId, signal: ctx.signal, deadline: this.deadline(data), ingest };
    const result = f.prepared ? await this.d.importer.importPrepared(f.prepared, f.type, opts) : await this.d.importer.importFile(f.file, f.type, mapping, system, opts);
    if (directory) resolved.add(f.name);
    imported.set(f.name, result.references);
    if (done) return;
    if (result.count) state.counts[f.type] = (state.counts[f.type] ?? 0) + result.count;
    state.othersRemoved += result.othersRemoved ?? 0;
    state.files.push(f.name);
    await ctx.checkpoint({ imports: state });
  }

  /** Every local reference the exchange imported (a file imported before a restart is read again). */
  private async targetsOf(files: DownloadedFile[], mapping: IdMapping, imported: Map<string, string[]>, ingest: ExchangeIngest): Promise<string[]> {
    // Each once: a received record matched to an existing one names that one, and a record left out is none.
    const targets = new Set<string>();
    const add = (ref: string) => {
      const to = ingest.resolved(ref);
      if (to !== undefined) targets.add(to);
    };
    for (const f of files) {
      if (f.kind !== 'output') continue;
      const known = imported.get(f.name);
      if (known) {
        for (const ref of known) add(ref);
        continue;
      }
      for await (const ref of f.prepared ? this.d.importer.preparedReferences(f.prepared) : this.d.importer.localReferences(f.file, f.type, mapping)) add(ref);
    }
    return [...targets];
  }

  /**
   * Applies the manifest's `deleted` files, one after another, after every import: each is
   * downloaded under the exchange's limits (its bytes count towards the exchange's), and removes
   * the member's earlier imported copies of the records it names, through the undo journal
   * (deletions.ts says what is left alone). Checkpointed per file.
   */
  private async applyDeletions(ctx: JobContext<ExchangeJobData>, remote: RemotePayer, manifest: CheckedManifest, importedNow: Set<string>) {
    const data = ctx.job.data;
    const files = manifest.deleted ?? [];
    const state = { files: data.deletions?.files ?? 0, bytes: data.deletions?.bytes ?? 0, tally: data.deletions?.tally ?? { removed: {}, ignored: {} } };
    for (let i = state.files; i < files.length; i++) {
      if (await this.d.tracker.isCancelled(data.taskId)) throw new TaskCancelled();
      this.checkDeadline(data, 'applying deleted records');
      const label = `deleted file ${i + 1}`;
      const limits = { ...this.d.limits, remainingBytes: this.d.limits.maxExchangeBytes - (data.downloads?.bytes ?? 0) - state.bytes, deadline: this.deadline(data) };
      const bytes = limited(await remote.download(files[i].url, manifest.requiresAccessToken, ctx.signal), label, limits);
      let size = 0;
      bytes.on('data', (chunk: Buffer) => (size += chunk.length));
      await this.deletions.apply(bytes, label, {
        taskId: data.taskId,
        issuer: data.issuer,
        sourceBase: remote.payer.fhirBaseUrl,
        localPatientId: data.localPatientId,
        importedNow,
        deadline: this.deadline(data),
        signal: ctx.signal,
        maxLineLength: this.d.limits.maxLineLength,
        check: async () => {
          if (await this.d.tracker.isCancelled(data.taskId)) throw new TaskCancelled();
        },
      }, state.tally);
      state.files = i + 1;
      state.bytes += size;
      await ctx.checkpoint({ deletions: state });
    }
    await this.d.tracker.change(data.taskId, { note: deletionText(state.tally) });
  }

  /**
   * The member's identifiers at the source added to the local Patient (data-mapping step 2): the
   * MemberIdentifier the match answered and the member's id at the source (under the source's
   * responderIdentifierSystem), each once, through the journal (`memberIdentifiersToAdd` says which).
   */
  private async addMemberIdentifiers(data: ExchangeJobData, payer: SourcePayer): Promise<void> {
    if (!data.matched) return;
    const { store, journal } = this.d;
    const local = (await store.readIfExists('Patient', data.localPatientId)) as Patient | undefined;
    if (!local) return;
    const origin = { system: payer.responderIdentifierSystem ?? `${payer.issuer}/resource-id`, value: data.matched.memberId };
    const add = memberIdentifiersToAdd(local, [data.matched.identifier, origin]);
    if (add.length === 0) return;
    const { versionId: _v, lastUpdated: _l, ...meta } = local.meta ?? {};
    const updated: Patient = { ...local, meta, identifier: [...(local.identifier ?? []), ...add] };
    await journal.writeMany(data.taskId, 'Patient', await store.planWrites('Patient', [updated]));
  }

  private async finish(ctx: JobContext<ExchangeJobData>, remote: RemotePayer, payer: SourcePayer, files: DownloadedFile[], imported: string[], ingest: ExchangeIngest) {
    const data = ctx.job.data;
    const { store, journal } = this.d;
    const now = new Date().toISOString();
    const sourceName = payer.name ?? payer.issuer;
    const archived: Reference[] = [];
    const binaries: Resource[] = [];
    const docs: Resource[] = [];
    for (const f of files) {
      // The file as received, into the blob store (linked, or streamed into GridFS), never held in memory.
      const blobKey = `${archiveFolder(data.taskId)}${f.name}`;
      await this.d.blobs.store(blobKey, 'application/fhir+ndjson', f.file);
      const { binary, doc } = archiveOf({ taskId: data.taskId, name: f.name, type: f.type, count: f.count, size: f.size, sha1: f.sha1, blobKey, localPatientId: data.localPatientId, ownerReference: data.ownerReference, sourceName, issuer: data.issuer, now });
      binaries.push(binary);
      docs.push(doc);
      archived.push({ reference: `DocumentReference/${doc.id}` });
    }
    // Their Binaries and DocumentReferences, each type in one batch through the undo journal.
    await journal.writeMany(data.taskId, 'Binary', await store.planWrites('Binary', binaries));
    await journal.writeMany(data.taskId, 'DocumentReference', await store.planWrites('DocumentReference', docs));

    await this.addMemberIdentifiers(data, payer);
    const targets = [...imported];
    if (targets.length === 0) targets.push(`Patient/${data.localPatientId}`);
    // This payer as the custodian agent: its Organization, written when missing.
    const us = this.d.payerOrganization;
    if (us) await us.ensure();
    const custodian = us ? { reference: us.reference, display: us.name } : { display: this.d.requesterDisplay };
    const provenances = provenanceOf({ taskId: data.taskId, issuer: data.issuer, targets, archived, ownerReference: data.ownerReference, sourceName, custodian, now });
    for (const p of provenances) await journal.write(data.taskId, 'Provenance', p.id as string, () => store.update('Provenance', p.id as string, p));
    const provenance = provenances[0];

    const counts = data.imports?.counts ?? {};
    const othersRemoved = data.imports?.othersRemoved ?? 0;
    const output: TaskOutput[] = [
      ...Object.entries(counts).map(([type, n]) => ({ type: { text: `count:${type}` }, valueInteger: n })),
      ...Object.entries(data.manifest?.skipped ?? {}).map(([type, n]) => ({ type: { text: `skipped:${type}` }, valueInteger: n })),
      ...Object.entries(data.deletions?.tally.removed ?? {}).map(([type, n]) => ({ type: { text: `deleted:${type}` }, valueInteger: n })),
      ...Object.entries(data.deletions?.tally.ignored ?? {}).map(([why, n]) => ({ type: { text: 'deleted-ignored' }, valueString: `${n} ${why}` })),
      ...(othersRemoved ? [{ type: { text: 'references-not-kept' }, valueInteger: othersRemoved }] : []),
      ...Object.entries(ingest.leftOut).map(([why, n]) => ({ type: { text: 'left-out' }, valueString: `${n} ${why}` })),
      ...provenances.map((p) => ({ type: { text: 'Provenance' }, valueReference: { reference: `Provenance/${p.id}` } })),
      ...(data.manifest?.transactionTime ? [{ type: { text: 'transactionTime' }, valueInstant: data.manifest.transactionTime }] : []),
      ...archived.map((r) => ({ type: { text: 'received-file' }, valueReference: r })),
      ...(await this.redacted(data, data.downloads?.sourceErrors ?? [])).map((e) => ({ type: { text: 'source-error' }, valueString: e })),
    ];
    const total = Object.values(counts).reduce((a, b) => a + b, 0);
    // Every Patient the source may send is the member's (any other fails the exchange), and it was compared with the submitted demographics.
    const compared = files.some((f) => f.kind === 'output' && f.type === 'Patient' && f.count > 0);
    const uncompared = data.member && !compared ? "; the source sent no Patient record, so the member's demographics were not compared with the source's" : '';
    const skipped = data.manifest ? skippedText(data.manifest) : undefined;
    // Counted, never named: no id or demographics of the other person.
    const others = othersRemoved ? `; ${othersRemoved} record(s) referred to a person other than the member; those references were not kept` : '';
    const leftOut = Object.entries(ingest.leftOut).map(([why, n]) => `${n} ${why} left out`).join(', ');
    const matchedHere = ingest.aliases.size ? `; ${ingest.aliases.size} directory record(s) matched to records already here` : '';
    await this.d.tracker.change(data.taskId, { status: 'completed', step: 'completed', note: `Imported ${total} resources${matchedHere}${uncompared}${others}${skipped ? `; ${skipped}` : ''}${leftOut ? `; ${leftOut}` : ''}`, output });
    await journal.forget(data.taskId);
    this.d.logger.info('exchange ended', { task: data.taskId, issuer: data.issuer, outcome: 'completed', files: files.length, counts, skipped: data.manifest?.skipped ?? {} });
    await this.d.audit?.record({ kind: 'exchange', action: 'C', outcome: 'success', patients: [data.localPatientId], what: [`Task/${data.taskId}`, `Provenance/${provenance.id}`], description: `exchange from ${data.issuer} completed: ${total} resources imported` });
    if (data.exportStarted) await remote.cancel(data.exportStarted.statusUrl);
    await this.cleanup(ctx.job);
    await ctx.checkpoint({ memberMatch: NO_MEMBER_DATA });
  }

  /**
   * What the exchange knows of the member, to keep out of whatever the source writes back: the
   * submitted demographics and identifiers while it still holds them, and the local Patient's
   * names, birth date, identifiers, telecom and address (source-text.ts `redactKnown`).
   */
  private async memberTerms(data: ExchangeJobData): Promise<string[]> {
    const local = (await this.d.store.readIfExists('Patient', data.localPatientId).catch(() => undefined)) as Record<string, unknown> | undefined;
    const { name, birthDate, identifier, telecom, address } = local ?? {};
    return [...termsOf(data.memberMatch?.parameter), ...termsOf({ name, birthDate, identifier, telecom, address })];
  }

  private async redacted(data: ExchangeJobData, texts: string[]): Promise<string[]> {
    if (texts.length === 0) return texts;
    const known = await this.memberTerms(data);
    return texts.map((t) => redactKnown(t, known));
  }

  /** The exchange is over: drop its work files, free the member's lock, and forget the member's demographics. */
  private async cleanup(job: JobDoc<ExchangeJobData>) {
    await fs.promises.rm(path.join(this.d.workDir, job.data.taskId), { recursive: true, force: true });
    await this.d.releaseLock(job.data.taskId);
  }

  /** Ends the exchange as failed or cancelled: nothing it imported stays, and the Task says why. */
  private async end(job: JobDoc<ExchangeJobData>, remote: RemotePayer | undefined, outcome: 'failed' | 'cancelled', reason: string, logReason = reason) {
    const data = job.data;
    if (data.exportStarted && remote) await remote.cancel(data.exportStarted.statusUrl).catch(() => undefined);
    // A $bulk-member-match or $davinci-data-export still under way at the source is deleted too.
    for (const statusUrl of [data.matched ? undefined : data.bulk?.matchStatusUrl, data.bulk?.exportStatusUrl]) if (statusUrl && remote) await remote.cancel(statusUrl).catch(() => undefined);
    await fs.promises.rm(path.join(this.d.workDir, `${data.taskId}.group`), { recursive: true, force: true });
    const removed = await this.d.journal.rollback(data.taskId);
    await this.d.blobs.removeAll(archiveFolder(data.taskId));
    const undone = removed ? `; ${removed} imported resource(s) removed` : '';
    const change =
      outcome === 'cancelled'
        ? { status: 'cancelled' as const, step: 'cancelled' as const, note: `Cancelled; the export at the source was deleted${undone}` }
        : { status: 'failed' as const, step: 'failed' as const, statusReason: reason, note: `Failed: ${reason}${undone}` };
    await this.d.tracker.change(data.taskId, change).catch((e) => (e instanceof TaskCancelled ? undefined : Promise.reject(e)));
    const files = data.downloads?.files.length ?? 0;
    this.d.logger.info('exchange ended', { task: data.taskId, issuer: data.issuer, outcome, reason: outcome === 'failed' ? logReason : undefined, files, counts: data.imports?.counts ?? {}, removed });
    await this.d.audit?.record({ kind: 'exchange', action: 'C', outcome: 'failure', patients: [data.localPatientId], what: [`Task/${data.taskId}`], description: `exchange from ${data.issuer} ${outcome}${removed ? `; ${removed} imported resource(s) removed` : ''}` });
    await this.cleanup(job);
  }

  private async handleError(ctx: JobContext<ExchangeJobData>, remote: RemotePayer | undefined, err: unknown): Promise<void> {
    const data = ctx.job.data;
    if (ctx.signal.aborted) throw ctx.signal.reason; // stopping or lease lost: another run resumes
    if (err instanceof TaskCancelled) {
      await this.end(ctx.job, remote, 'cancelled', 'cancelled');
      await ctx.checkpoint({ memberMatch: NO_MEMBER_DATA });
      return;
    }
    const verdict = classify(err);
    // A source may echo what it was sent, or what it holds of the member: none of the member's demographics reaches the Task or the log.
    const known = await this.memberTerms(data);
    verdict.reason = redactKnown(verdict.reason, known);
    verdict.logReason = redactKnown(verdict.logReason, known);
    if (verdict.kind === 'transient' && Date.now() < this.deadline(data) && ctx.job.attempts < this.d.maxAttempts) {
      const hinted = err instanceof RemoteError ? parseRetryAfter(err.retryAfter) : undefined;
      const delay = Math.min(this.d.pollMaxMs, Math.max(this.d.pollMinMs, hinted ?? 1000 * 2 ** Math.min(ctx.job.attempts, 6)));
      this.d.logger.warn('exchange will retry', { task: data.taskId, status: verdict.status });
      const what = verdict.status ? `HTTP ${verdict.status}` : 'network error';
      await this.d.tracker.change(data.taskId, { detail: `waiting for the source: ${what}, retrying`, note: `The source payer is unavailable (${what}); retrying in ${Math.round(delay / 1000)} s` }).catch(() => undefined);
      throw new RetryLater(delay, verdict.logReason);
    }
    const gaveUp = verdict.kind === 'transient' ? ` (gave up after ${ctx.job.attempts} attempts)` : '';
    if (verdict.kind === 'failed' && !verdict.expected) this.d.logger.error('exchange failed', { task: data.taskId, error: (err as Error)?.message, stack: (err as Error)?.stack });
    await this.end(ctx.job, remote, 'failed', `${verdict.reason}${gaveUp}`, `${verdict.logReason}${gaveUp}`);
    await ctx.checkpoint({ memberMatch: NO_MEMBER_DATA });
  }

  /** The job runner gave the exchange up (it kept failing, or kept taking its process down). */
  giveUp = async (job: JobDoc<ExchangeJobData>, reason: string): Promise<void> => {
    await this.end(job, this.d.remoteFor(job.data.issuer), 'failed', reason);
  };
}

/**
 * Imports files one after another, in the background of the downloads: `add` queues a file,
 * `check` throws an import's failure at once (so downloading stops), `settled` waits for the import
 * under way (before anything is rolled back), `drain` waits for all and throws a failure.
 */
class ImportQueue {
  private chain: Promise<void> = Promise.resolve();
  private failure?: { error: unknown };

  constructor(private readonly importOne: (f: DownloadedFile) => Promise<void>) {}

  add(f: DownloadedFile): void {
    this.chain = this.chain.then(async () => {
      if (this.failure) return;
      try {
        await this.importOne(f);
      } catch (error) {
        this.failure = { error };
      }
    });
  }

  check(): void {
    if (this.failure) throw this.failure.error;
  }

  settled(): Promise<void> {
    return this.chain;
  }

  async drain(): Promise<void> {
    await this.chain;
    this.check();
  }
}

/** Whether a source's OperationOutcome codes its refusal as PDex's `consentconstraint` (a Consent it cannot honour, not a missing member). */
function isConsentConstraint(outcome: OperationOutcome | undefined): boolean {
  return (outcome?.issue ?? []).some((i) => (i.details?.coding ?? []).some((c) => c.system === RESULT_SYSTEM && c.code === 'consentconstraint'));
}
