import type { Task } from 'fhir/r4';
import { JobContext } from '../jobs/job-runner';
import { ResourceStore } from '../store/resource-store';
import type { Logger } from '../logger';
import { isTaskEnded, TaskCancelled, TaskTracker } from './task-tracker';

export const BULK_EXCHANGE_JOB = 'p2p-bulk-exchange';

export interface BulkExchangeJobData {
  parentId: string;
  /** The members' Tasks. */
  children: string[];
}

/** How often the parent looks at its children. */
const FOLLOW_MS = 1000;

const sleep = (ms: number, signal: AbortSignal) =>
  new Promise<void>((resolve, reject) => {
    if (signal.aborted) return reject(signal.reason);
    const t = setTimeout(() => {
      signal.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    const onAbort = () => {
      clearTimeout(t);
      reject(signal.reason);
    };
    signal.addEventListener('abort', onAbort, { once: true });
  });

/**
 * The parent Task of a bulk exchange follows its children: `in-progress` with "n of m ended" while
 * they run, `completed` once all have ended (its output counts how each ended), and when a client
 * cancels it, every child still running is cancelled (each rolls back its own imports).
 */
export class BulkExchangeJob {
  constructor(private readonly store: ResourceStore, private readonly tracker: TaskTracker, private readonly logger: Logger) {}

  run = async (ctx: JobContext<BulkExchangeJobData>): Promise<void> => {
    const { parentId, children } = ctx.job.data;
    let cancelling = false;
    let reported = -1;
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
      const states = await Promise.all(children.map(async (id) => ((await this.store.readIfExists('Task', id)) as Task | undefined)?.status ?? 'cancelled'));
      const ended = states.filter((s) => ['completed', 'failed', 'cancelled', 'rejected'].includes(s));
      const tally = (s: string) => states.filter((x) => x === s).length;
      if (ended.length === children.length) {
        const summary = `${tally('completed')} completed, ${tally('failed')} failed, ${tally('cancelled')} cancelled`;
        if (parent.status !== 'cancelled') {
          await this.tracker.change(parentId, {
            status: 'completed',
            step: 'completed',
            note: `All ${children.length} member exchange(s) ended: ${summary}`,
            output: [
              ...(parent.output ?? []).filter((o) => o.type?.text === 'member-task'),
              ...(['completed', 'failed', 'cancelled'] as const).map((s) => ({ type: { text: `members:${s}` }, valueInteger: tally(s) })),
            ],
          });
        }
        this.logger.info('bulk exchange ended', { task: parentId, members: children.length, completed: tally('completed'), failed: tally('failed'), cancelled: tally('cancelled') });
        return;
      }
      if (ended.length !== reported && parent.status !== 'cancelled') {
        reported = ended.length;
        await this.tracker.change(parentId, { ...(parent.status === 'requested' ? { status: 'in-progress' as const } : {}), step: 'exporting', detail: `${ended.length} of ${children.length} member exchanges ended` }).catch((e) => (e instanceof TaskCancelled ? undefined : Promise.reject(e)));
      }
      await sleep(FOLLOW_MS, ctx.signal);
    }
  };
}
