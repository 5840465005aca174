import { isDeepStrictEqual } from 'node:util';
import type { Resource, Task, TaskOutput } from 'fhir/r4';
import { ResourceStore } from '../store/resource-store';
import { conflict, FhirError, unprocessable } from '../fhir/outcome';
import { plainText } from './source-text';

export const DATA_REQUEST_CODE = { coding: [{ system: 'http://hl7.org/fhir/us/davinci-hrex/CodeSystem/hrex-temp', code: 'data-request' }] };
/** Marks the Tasks the exchange manages, so they can be searched apart from other Tasks (`_tag=`). */
export const EXCHANGE_TAG = { system: 'urn:p2p-fhir-server:task', code: 'payer-to-payer-exchange' };
export const STEP_SYSTEM = 'urn:p2p-fhir-server:exchange-step';

export type Step = 'queued' | 'matching' | 'exporting' | 'downloading' | 'importing' | 'completed' | 'failed' | 'cancelled';

export class TaskCancelled extends Error {
  constructor() {
    super('the Task was cancelled');
  }
}

export interface TaskChange {
  status?: Task['status'];
  step?: Step;
  /** Shown beside the step, e.g. the source's X-Progress. */
  detail?: string;
  note?: string;
  statusReason?: string;
  output?: TaskOutput[];
}

/**
 * The only writer of an exchange Task's status. Every change is a read-modify-write on the version
 * read (If-Match), so a client's concurrent update, such as a cancel, is never overwritten: once
 * the Task is cancelled, the tracker refuses further changes and the exchange stops.
 */
export class TaskTracker {
  constructor(private readonly store: ResourceStore, private readonly now: () => Date = () => new Date()) {}

  async create(task: Task): Promise<Task> {
    const { resource } = await this.store.update('Task', task.id as string, task);
    return resource as Task;
  }

  async read(id: string): Promise<Task> {
    return (await this.store.read('Task', id)) as Task;
  }

  async isCancelled(id: string): Promise<boolean> {
    const task = (await this.store.readIfExists('Task', id)) as Task | undefined;
    return !task || task.status === 'cancelled';
  }

  async change(id: string, change: TaskChange): Promise<Task> {
    for (let attempt = 0; attempt < 10; attempt++) {
      const task = await this.read(id);
      if (task.status === 'cancelled' && change.status !== 'cancelled') throw new TaskCancelled();
      const time = this.now().toISOString();
      const next: Task = { ...task, lastModified: time };
      if (change.status) next.status = change.status;
      // The last line of defence for a source's text (source-text.ts): whatever a Task says is plain, bounded text.
      change = { ...change, ...(change.detail ? { detail: plainText(change.detail, 300) } : {}), ...(change.note ? { note: plainText(change.note, 1000) } : {}), ...(change.statusReason ? { statusReason: plainText(change.statusReason, 1000) } : {}) };
      const step = change.step ?? (change.detail ? task.businessStatus?.coding?.find((c) => c.system === STEP_SYSTEM)?.code : undefined);
      if (step) {
        const text = change.detail ? `${step}: ${change.detail}` : step;
        next.businessStatus = { coding: [{ system: STEP_SYSTEM, code: step }], text };
      }
      if (change.statusReason) next.statusReason = { text: change.statusReason };
      if (change.note) next.note = [...(task.note ?? []), { time, text: change.note }];
      if (change.output) next.output = [...(task.output ?? []), ...change.output];
      try {
        const { resource } = await this.store.update('Task', id, next, task.meta?.versionId);
        return resource as Task;
      } catch (err) {
        if (err instanceof FhirError && err.status === 412) continue; // someone else wrote: read again
        throw err;
      }
    }
    throw new Error(`could not update Task/${id}: too many concurrent writes`);
  }
}

const ENDED = new Set(['completed', 'failed', 'cancelled', 'rejected', 'entered-in-error']);

/** Whether a Task's status says its work is over. */
export function isTaskEnded(task: Pick<Task, 'status'>): boolean {
  return ENDED.has(task.status);
}

/**
 * What a client may do to an exchange Task: cancel it while it is active, changing nothing else
 * (If-Match is honoured by the update itself). Anything else would make the Task say what did not
 * happen: 409 once the exchange has ended, 422 for any other change.
 */
export function checkClientTaskWrite(existing: Task | Resource, incoming: Task | Resource | undefined): void {
  const current = existing as Task;
  if (!(current.meta?.tag ?? []).some((t) => t.system === EXCHANGE_TAG.system && t.code === EXCHANGE_TAG.code)) return;
  if (!incoming) throw conflict(`Task/${current.id} tracks a payer-to-payer exchange and cannot be deleted`);
  if (isTaskEnded(current)) throw conflict(`Task/${current.id}: the exchange has ended (${current.status}); it can no longer be changed`);
  const next = incoming as Task;
  if (next.status !== 'cancelled') throw unprocessable(`Task/${current.id} tracks a payer-to-payer exchange: a client may only set its status to cancelled`);
  const rest = (t: Task) => {
    const { meta: _m, status: _s, statusReason: _r, lastModified: _l, ...others } = t;
    return JSON.parse(JSON.stringify(others));
  };
  if (!isDeepStrictEqual(rest(current), rest(next))) throw unprocessable(`Task/${current.id} tracks a payer-to-payer exchange: cancelling it may change nothing but its status`);
}
