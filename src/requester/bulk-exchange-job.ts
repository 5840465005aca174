import type { Task } from 'fhir/r4';
import { JobContext, JobRunner, sleep } from '../jobs/job-runner';
import { ResourceStore } from '../store/resource-store';
import type { Logger } from '../logger';
import { isTaskEnded, TaskCancelled, TaskTracker } from './task-tracker';
import { AnswerTooLarge, logTextOf, RemotePayer } from './remote-payer-client';
import { NdjsonError } from './ndjson';
import { CheckedManifest, ExchangeJobData, ExchangeLimits, MATCH_GROUP_OUTPUT, NO_MEMBER_DATA } from './exchange-job';
import { LimitReached } from './exchange-errors';
import { redactKnown, termsOf } from './source-text';
import { GroupExporter, GroupExportResult } from './group-export';
import { MatchOutcome } from './match-result';
import { awaitBulkMatch, MatchInput, memberBundles } from './bulk-match';
import fs from 'node:fs';
import path from 'node:path';

/** How long the parent waits for the source's $bulk-member-match before matching member by member (and never past the exchange's deadline). */
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
  /** How long the whole exchange may take from the request (EXCHANGE_TIMEOUT_SECONDS): the match, the group's export and every member's import. */
  timeoutMs: number;
  /** The limits on what the exchange takes from the source: the match result files are read under them too. */
  limits: ExchangeLimits;
  logger: Logger;
}

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
    const deadline = await this.deadline(children);
    const ops = remote && remote.payer.bulkMemberMatch !== false && remote.capabilities ? await remote.capabilities() : undefined;
    const match = ctx.job.data.match ?? (ops?.bulkMemberMatch && remote ? await this.bulkMatch(ctx, remote, deadline) : undefined);
    const outcomes = new Map(match?.outcomes ?? []);
    const matched = new Map([...outcomes].flatMap(([child, o]) => ('memberId' in o ? [[o.memberId, child] as [string, string]] : [])));
    let received: GroupExportResult | undefined;
    if (remote && match?.groupId && matched.size > 0 && ops?.davinciDataExport) {
      try {
        const first = await this.d.runner.get<ExchangeJobData>(children[0]);
        const params = first?.data.exportParams ?? {};
        received = await this.d.groupExporter.run({
          remote,
          groupId: match.groupId,
          params, // no `_type` unless the operator chose: the source sends all it has
          members: matched,
          workDir: this.d.workDir,
          groupDir: path.join(this.d.workDir, parentId),
          deadline,
          signal: ctx.signal,
          statusUrl: ctx.job.data.groupExport?.statusUrl,
          started: (statusUrl) => ctx.checkpoint({ groupExport: { statusUrl } }),
          check: async () => {
            if (await this.tracker.isCancelled(parentId)) throw new TaskCancelled();
          },
          progress: (detail) => this.tracker.change(parentId, { status: 'in-progress', step: 'exporting', detail }).then(() => undefined),
        });
        await remote.cancel(received.statusUrl);
        this.logger.info('group export received', { task: parentId, issuer, members: matched.size, bytes: received.bytes, unclaimed: received.unclaimed, leftOut: received.leftOut });
        // Counted, never named: whom those records were about is not said.
        const { outside, several } = received.leftOut;
        if (outside || several) {
          const parts = [outside ? `${outside} about a person who is not one of the matched members` : '', several ? `${several} about more than one member` : ''].filter(Boolean);
          await this.tracker.change(parentId, {
            note: `${outside + several} record(s) in the group's files were left out of every member's import (${parts.join(', ')}); the other records were imported`,
            output: [{ type: { text: 'group-records-left-out' }, valueInteger: outside + several }],
          });
        }
      } catch (err) {
        if (ctx.signal.aborted) throw ctx.signal.reason;
        const reason = (err as Error).message;
        if (!(err instanceof TaskCancelled)) {
          this.logger.warn("the group's $davinci-data-export failed; exporting member by member", { task: parentId, issuer, error: logTextOf(err) });
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
        // The MatchedMembers Group is named too: a later run-off of this member asks for it again ($davinci-data-export with _since).
        const group = match?.groupId && remote ? [{ type: { text: MATCH_GROUP_OUTPUT }, valueReference: { reference: `${remote.payer.fhirBaseUrl}/Group/${match.groupId}` } }] : [];
        await this.tracker.change(id, { note, output: [{ type: { text: 'MemberId' }, valueReference: { reference: `${remote?.payer.fhirBaseUrl}/Patient/${outcome.memberId}` } }, ...group] }).catch((e) => (e instanceof TaskCancelled ? undefined : Promise.reject(e)));
        const given = received && files
          ? {
              manifest: { requiresAccessToken: received.manifest.requiresAccessToken, files: [], skipped: received.manifest.skipped, transactionTime: received.manifest.transactionTime } satisfies CheckedManifest,
              downloads: { files, bytes: files.reduce((n, f) => n + f.size, 0), sourceErrors: received.sourceErrors, done: true },
            }
          : {};
        await this.d.runner.release(id, { matched: { memberId: outcome.memberId }, memberMatch: NO_MEMBER_DATA, ...given });
      } else {
        // Not matched in bulk (no bulk operations, or the bulk match failed): this member matches itself with $member-match.
        await this.d.runner.release(id, { path: 'member-match' });
      }
    }
    await ctx.checkpoint({ dispatched: true });
  }

  /** The exchange's deadline: EXCHANGE_TIMEOUT_SECONDS from the request (when the children were made). */
  private async deadline(children: string[]): Promise<number> {
    let startedAt = Date.now();
    for (const id of children) {
      const at = (await this.d.runner.get<ExchangeJobData>(id))?.data.startedAt;
      if (typeof at === 'number' && at < startedAt) startedAt = at;
    }
    return startedAt + this.d.timeoutMs;
  }

  /**
   * Matches every member with the source's `$bulk-member-match`; undefined (each member then matches
   * itself) if that fails. Each MemberPatient goes with its member's Task id as its id, by which the
   * answer is correlated (see MatchResultReader). The answer is read in either form: the Group NDJSON
   * files (PDex 2.2, preferred where both come, §pdex-138b), else the Parameters file (PDex 2.1).
   * The result files are read like export files: within the exchange's limits on bytes, idle time,
   * deadline and line length, line by line, keeping of each Group only each member's outcome. A
   * source that breaks one of those limits (or sends a JSON answer over REMOTE_MAX_JSON_BYTES) is not
   * asked again member by member: every member fails, saying which.
   */
  private async bulkMatch(ctx: JobContext<BulkExchangeJobData>, remote: RemotePayer, exchangeDeadline: number): Promise<BulkMatch | undefined> {
    const { children, issuer, parentId } = ctx.job.data;
    if (!remote.bulkMemberMatch) return undefined;
    let statusUrl: string | undefined;
    const inputs: MatchInput[] = [];
    try {
      for (const id of children) {
        const job = await this.d.runner.get<ExchangeJobData>(id);
        const parts = job?.data.memberMatch?.parameter ?? [];
        if (parts.length) inputs.push({ id, parts });
      }
      statusUrl = await remote.bulkMemberMatch(memberBundles(inputs));
      const deadline = Math.min(exchangeDeadline, Date.now() + BULK_MATCH_TIMEOUT_MS);
      const late = () => new LimitReached(`the source did not finish $bulk-member-match within the exchange's ${Math.round(this.d.timeoutMs / 1000)} s`);
      const { outcomes, groupId } = await awaitBulkMatch(remote, statusUrl, inputs.map((i) => i.id), {
        limits: this.d.limits,
        deadline,
        signal: ctx.signal,
        late,
        pollDelay: (retryAfterMs) => Math.min(5000, Math.max(200, retryAfterMs ?? 1000)),
      });
      await remote.cancel(statusUrl);
      this.logger.info('bulk member match', { task: parentId, issuer, members: inputs.length, matched: [...outcomes.values()].filter((o) => 'memberId' in o).length });
      const match: BulkMatch = { outcomes: [...outcomes], groupId };
      await ctx.checkpoint({ match });
      return match;
    } catch (err) {
      if (ctx.signal.aborted) throw ctx.signal.reason;
      const overLimit = err instanceof LimitReached || err instanceof AnswerTooLarge || (err instanceof NdjsonError && /longer than/.test(err.message));
      if (statusUrl && overLimit) await remote.cancel(statusUrl);
      const known = inputs.flatMap((i) => termsOf(i.parts));
      if (!overLimit) {
        this.logger.warn('$bulk-member-match failed; matching member by member', { task: parentId, issuer, error: redactKnown(logTextOf(err), known) });
        return undefined;
      }
      const reason = `The source payer's $bulk-member-match went over a limit: ${redactKnown((err as Error).message, known)}`;
      this.logger.warn('$bulk-member-match went over a limit; every member fails', { task: parentId, issuer, error: redactKnown(logTextOf(err), known) });
      const match: BulkMatch = { outcomes: inputs.map((i) => [i.id, { failed: reason }]) };
      await ctx.checkpoint({ match });
      return match;
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
