import type { Group, ParametersParameter, Patient, Task } from 'fhir/r4';
import { JobContext, JobRunner, sleep } from '../jobs/job-runner';
import { RESULT_SYSTEM } from '../fhir/pdex';
import { ResourceStore } from '../store/resource-store';
import type { Logger } from '../logger';
import { patientIdOf } from '../fhir/reference';
import { isTaskEnded, TaskCancelled, TaskTracker } from './task-tracker';
import type { RemotePayer } from './remote-payer-client';
import { readResources } from './ndjson';
import { CheckedManifest, DEFAULT_TYPES, ExchangeJobData, NO_MEMBER_DATA } from './exchange-job';
import { GroupExporter, GroupExportResult } from './group-export';
import fs from 'node:fs';
import path from 'node:path';

/** How long the parent waits for the source's $bulk-member-match before matching member by member. */
const BULK_MATCH_TIMEOUT_MS = 10 * 60_000;

export const BULK_EXCHANGE_JOB = 'p2p-bulk-exchange';

export interface BulkExchangeJobData {
  parentId: string;
  /** The members' Tasks (their exchange jobs have the same ids, parked until dispatched). */
  children: string[];
  issuer?: string;
  /** What the source's $bulk-member-match answered, kept so that a restart does not ask again. */
  match?: BulkMatch;
  /** The group's $davinci-data-export, once started. */
  groupExport?: { statusUrl: string };
  /** Set once every child has been matched by the source's $bulk-member-match, failed, or let run. */
  dispatched?: boolean;
}

type MatchOutcome = { memberId: string } | { failed: string };

/** Each child's outcome at the source's $bulk-member-match, and the id of the MatchedMembers Group there. */
export interface BulkMatch {
  outcomes: [string, MatchOutcome][];
  groupId?: string;
}

export interface BulkExchangeDeps {
  store: ResourceStore;
  tracker: TaskTracker;
  runner: JobRunner;
  remoteFor: (issuer: string) => RemotePayer | undefined;
  releaseLock: (taskId: string) => Promise<void>;
  groupExporter: GroupExporter;
  /** The exchanges' work folder: each child's is `{workDir}/{child}`. */
  workDir: string;
  /** How long the group's export may take. */
  timeoutMs: number;
  logger: Logger;
}

/** The demographics that tell a submitted member from the others, for finding it again among the source's contained Patients. */
const demographics = (p: Patient | undefined) => JSON.stringify({ name: p?.name, birthDate: p?.birthDate, gender: p?.gender });

/** How often the parent looks at its children, and at most how often it reports their progress. */
const FOLLOW_MS = 1000;
const PROGRESS_MS = 5000;

/**
 * The parent Task of a bulk exchange follows its children: `in-progress` with "n of m ended" while
 * they run, `completed` once all have ended (its output counts how each ended), and when a client
 * cancels it, every child still running is cancelled (each rolls back its own imports).
 */
export class BulkExchangeJob {
  private readonly store: ResourceStore;
  private readonly tracker: TaskTracker;
  private readonly logger: Logger;

  constructor(private readonly d: BulkExchangeDeps) {
    this.store = d.store;
    this.tracker = d.tracker;
    this.logger = d.logger;
  }

  /**
   * Lets the parked children run. Where the source declares `$bulk-member-match` (and its
   * registration does not say `bulkMemberMatch: false`), all members are matched in that one
   * request first: matched members skip their own `$member-match`, the others end failed with the
   * source's answer (no match, consent constraint). If the source also declares `$davinci-data-export`, the matched members' data comes
   * in one export of the MatchedMembers Group, split by member into each child's work folder; each
   * child then only imports its share. Whatever of this fails, each child does the rest itself.
   */
  private async dispatch(ctx: JobContext<BulkExchangeJobData>): Promise<void> {
    const { children, issuer, parentId } = ctx.job.data;
    const remote = issuer ? this.d.remoteFor(issuer) : undefined;
    const ops = remote && remote.payer.bulkMemberMatch !== false && remote.groupOperations ? await remote.groupOperations() : new Set<string>();
    const match = ctx.job.data.match ?? (ops.has('bulk-member-match') && remote ? await this.bulkMatch(ctx, remote) : undefined);
    const outcomes = new Map(match?.outcomes ?? []);
    const matched = new Map([...outcomes].flatMap(([child, o]) => ('memberId' in o ? [[o.memberId, child] as [string, string]] : [])));
    let received: GroupExportResult | undefined;
    if (remote && match?.groupId && matched.size > 0 && ops.has('davinci-data-export')) {
      try {
        const first = await this.d.runner.get<ExchangeJobData>(children[0]);
        const params = first?.data.exportParams ?? {};
        received = await this.d.groupExporter.run({
          remote,
          groupId: match.groupId,
          params: params._type ? params : { ...params, _type: [DEFAULT_TYPES.join(',')] },
          members: matched,
          workDir: this.d.workDir,
          groupDir: path.join(this.d.workDir, parentId),
          deadline: Date.now() + this.d.timeoutMs,
          signal: ctx.signal,
          statusUrl: ctx.job.data.groupExport?.statusUrl,
          started: (statusUrl) => ctx.checkpoint({ groupExport: { statusUrl } }),
          check: async () => {
            if (await this.tracker.isCancelled(parentId)) throw new TaskCancelled();
          },
          progress: (detail) => this.tracker.change(parentId, { status: 'in-progress', step: 'exporting', detail }).then(() => undefined),
        });
        await remote.cancel(received.statusUrl);
        this.logger.info('group export received', { task: parentId, issuer, members: matched.size, bytes: received.bytes, unclaimed: received.unclaimed });
      } catch (err) {
        if (ctx.signal.aborted) throw ctx.signal.reason;
        const reason = (err as Error).message;
        if (!(err instanceof TaskCancelled)) {
          this.logger.warn("the group's $davinci-data-export failed; exporting member by member", { task: parentId, issuer, error: reason });
          await this.tracker.change(parentId, { note: `The group's $davinci-data-export failed (${reason}); each member is exported on its own` }).catch(() => undefined);
        }
        if (ctx.job.data.groupExport && remote) await remote.cancel(ctx.job.data.groupExport.statusUrl);
        await fs.promises.rm(path.join(this.d.workDir, parentId), { recursive: true, force: true });
        received = undefined;
      }
    }
    for (const id of children) {
      const outcome = outcomes.get(id);
      if (outcome && 'failed' in outcome) {
        await this.d.runner.cancel(id);
        await this.d.runner.update(id, { 'data.memberMatch': NO_MEMBER_DATA });
        await this.tracker.change(id, { status: 'failed', step: 'failed', statusReason: outcome.failed, note: `Failed: ${outcome.failed}` }).catch((e) => (e instanceof TaskCancelled ? undefined : Promise.reject(e)));
        await this.d.releaseLock(id);
      } else if (outcome) {
        const files = received?.shares.get(id);
        const note = files ? "The source payer matched the member ($bulk-member-match); its data came with the group's $davinci-data-export" : 'The source payer matched the member ($bulk-member-match)';
        await this.tracker.change(id, { note, output: [{ type: { text: 'MemberId' }, valueReference: { reference: `${remote?.payer.fhirBaseUrl}/Patient/${outcome.memberId}` } }] }).catch((e) => (e instanceof TaskCancelled ? undefined : Promise.reject(e)));
        const given = received && files
          ? {
              manifest: { requiresAccessToken: received.manifest.requiresAccessToken, files: [], skipped: received.manifest.skipped, transactionTime: received.manifest.transactionTime } satisfies CheckedManifest,
              downloads: { files, bytes: files.reduce((n, f) => n + f.size, 0), sourceErrors: received.sourceErrors, done: true },
            }
          : {};
        await this.d.runner.release(id, { matched: { memberId: outcome.memberId }, memberMatch: NO_MEMBER_DATA, ...given });
      } else {
        await this.d.runner.release(id);
      }
    }
    await ctx.checkpoint({ dispatched: true });
  }

  /** Matches every member with the source's `$bulk-member-match`; undefined (each member then matches itself) if that fails. */
  private async bulkMatch(ctx: JobContext<BulkExchangeJobData>, remote: RemotePayer): Promise<BulkMatch | undefined> {
    const { children, issuer, parentId } = ctx.job.data;
    if (!remote.bulkMemberMatch) return undefined;
    try {
      const inputs: { id: string; patient?: Patient; parts: ParametersParameter[] }[] = [];
      for (const id of children) {
        const job = await this.d.runner.get<ExchangeJobData>(id);
        const parts = job?.data.memberMatch?.parameter ?? [];
        if (parts.length) inputs.push({ id, patient: parts.find((p) => p.name === 'MemberPatient')?.resource as Patient, parts });
      }
      const statusUrl = await remote.bulkMemberMatch(inputs.map((i) => ({ name: 'MemberBundle', part: i.parts })));
      const deadline = Date.now() + BULK_MATCH_TIMEOUT_MS;
      let status = await remote.status(statusUrl);
      while (!status.done) {
        if (Date.now() > deadline) throw new Error('the source did not finish $bulk-member-match in time');
        await sleep(Math.min(5000, Math.max(200, status.retryAfterMs ?? 1000)), ctx.signal);
        status = await remote.status(statusUrl);
      }
      const groups: Group[] = [];
      for (const o of status.manifest.output.filter((x) => x.type === 'Group')) {
        if (!remote.mayDownload(o.url)) continue;
        for await (const { resource } of readResources(await remote.download(o.url, status.manifest.requiresAccessToken !== false, ctx.signal), { expectedType: 'Group', maxLineLength: 64 << 20, label: 'the result Groups' })) groups.push(resource as unknown as Group);
      }
      await remote.cancel(statusUrl);
      const outcomes = new Map<string, MatchOutcome>();
      let groupId: string | undefined;
      const byDemographics = new Map(inputs.map((i) => [demographics(i.patient), i.id]));
      for (const g of groups) {
        const code = g.characteristic?.flatMap((c) => c.code?.coding ?? []).find((c) => c.system === RESULT_SYSTEM)?.code;
        if (code === 'match' && typeof g.id === 'string' && /^[A-Za-z0-9\-.]{1,64}$/.test(g.id)) groupId = g.id;
        const contained = new Map((g.contained ?? []).map((c) => [`#${c.id}`, c as Patient]));
        for (const m of g.member ?? []) {
          const pointer = code === 'match' ? m.entity.extension?.find((e) => e.valueReference)?.valueReference?.reference : m.entity.reference;
          const child = byDemographics.get(demographics(contained.get(pointer ?? '')));
          if (!child || outcomes.has(child)) continue;
          const memberId = patientIdOf(m.entity.reference);
          if (code === 'match' && memberId) outcomes.set(child, { memberId });
          else if (code === 'nomatch') outcomes.set(child, { failed: 'The source payer found no unique match ($bulk-member-match)' });
          else if (code === 'consentconstraint') outcomes.set(child, { failed: "The source payer cannot honour the member's consent ($bulk-member-match)" });
        }
      }
      this.logger.info('bulk member match', { task: parentId, issuer, members: inputs.length, matched: [...outcomes.values()].filter((o) => 'memberId' in o).length });
      const match: BulkMatch = { outcomes: [...outcomes], groupId };
      await ctx.checkpoint({ match });
      return match;
    } catch (err) {
      if (ctx.signal.aborted) throw ctx.signal.reason;
      this.logger.warn('$bulk-member-match failed; matching member by member', { task: parentId, issuer, error: (err as Error).message });
      return undefined;
    }
  }

  run = async (ctx: JobContext<BulkExchangeJobData>): Promise<void> => {
    const { parentId, children } = ctx.job.data;
    if (!ctx.job.data.dispatched) await this.dispatch(ctx);
    let cancelling = false;
    let reported = -1;
    let reportedAt = 0;
    const final = new Map<string, string>();
    for (;;) {
      const parent = (await this.store.readIfExists('Task', parentId)) as Task | undefined;
      if (!parent) return;
      if (parent.status === 'cancelled' && !cancelling) {
        cancelling = true;
        for (const id of children) {
          const child = (await this.store.readIfExists('Task', id)) as Task | undefined;
          if (child && !isTaskEnded(child)) await this.tracker.change(id, { status: 'cancelled', step: 'cancelled', note: 'Cancelled with its parent Task' }).catch((e) => (e instanceof TaskCancelled ? undefined : Promise.reject(e)));
        }
      }
      // Only the children still running are read again: an ended one stays ended.
      for (const id of children) {
        if (final.has(id)) continue;
        const status = ((await this.store.readIfExists('Task', id)) as Task | undefined)?.status ?? 'cancelled';
        if (['completed', 'failed', 'cancelled', 'rejected'].includes(status)) final.set(id, status);
      }
      const tally = (s: string) => [...final.values()].filter((x) => x === s).length;
      if (final.size === children.length) {
        const summary = `${tally('completed')} completed, ${tally('failed')} failed, ${tally('cancelled')} cancelled`;
        if (parent.status !== 'cancelled') {
          await this.tracker.change(parentId, {
            status: 'completed',
            step: 'completed',
            note: `All ${children.length} member exchange(s) ended: ${summary}`,
            output: (['completed', 'failed', 'cancelled'] as const).map((s) => ({ type: { text: `members:${s}` }, valueInteger: tally(s) })),
          });
        }
        this.logger.info('bulk exchange ended', { task: parentId, members: children.length, completed: tally('completed'), failed: tally('failed'), cancelled: tally('cancelled') });
        return;
      }
      // Progress on the parent at most every few seconds: it is a large Task (one output per member).
      if (final.size !== reported && parent.status !== 'cancelled' && Date.now() - reportedAt >= PROGRESS_MS) {
        reported = final.size;
        reportedAt = Date.now();
        await this.tracker.change(parentId, { ...(parent.status === 'requested' ? { status: 'in-progress' as const } : {}), step: 'exporting', detail: `${final.size} of ${children.length} member exchanges ended` }).catch((e) => (e instanceof TaskCancelled ? undefined : Promise.reject(e)));
      }
      await sleep(FOLLOW_MS, ctx.signal);
    }
  };
}
