import { Collection, Database, DuplicateKeyError, StoredDoc } from '../store/types';
import { PlannedWrite, ResourceStore } from '../store/resource-store';
import type { Logger } from '../logger';

const JOURNAL = 'exchange_journal';

interface JournalDoc extends StoredDoc {
  taskId: string;
  type: string;
  id: string;
  /** The resource's versions before the exchange first wrote it. */
  before: { current: number | null; floor: number };
  /** The latest version the exchange wrote (unset if the process died between the write and this note). */
  wrote?: number;
}

/**
 * The exchange's undo journal: before the exchange writes a resource, where that resource stood is
 * noted here, so a failed or cancelled exchange leaves none of its writes behind (created resources
 * vanish with their history, updated ones are back at their previous version). The notes outlive a
 * crash; a completed exchange forgets them.
 */
export class ImportJournal {
  private readonly docs: Collection<JournalDoc>;
  private indexed?: Promise<void>;

  constructor(db: Database, private readonly store: ResourceStore, private readonly logger: Logger) {
    this.docs = db.collection<JournalDoc>(JOURNAL);
  }

  private async ready(): Promise<Collection<JournalDoc>> {
    this.indexed ??= this.docs.createIndex(['taskId']);
    await this.indexed;
    return this.docs;
  }

  /** Writes through the journal: notes the resource's state (once per exchange), writes, then notes the version written. */
  async write(taskId: string, type: string, id: string, write: () => Promise<{ resource: { meta?: { versionId?: string } } }>): Promise<void> {
    const docs = await this.ready();
    const _id = `${taskId}|${type}|${id}`;
    try {
      await docs.insertOne({ _id, taskId, type, id, before: await this.store.versionState(type, id) });
    } catch (err) {
      if (!(err instanceof DuplicateKeyError)) throw err; // written before by this exchange: the first state stands
    }
    const { resource } = await write();
    await docs.updateOne({ _id }, { wrote: Number(resource.meta?.versionId) });
  }

  /**
   * Writes a planned batch through the journal: notes where each changed resource stood and the
   * version it is to get (in one batch; a resource this exchange wrote before keeps its first note),
   * writes the batch, then corrects the note of any resource that got another version.
   */
  async writeMany(taskId: string, type: string, plans: PlannedWrite[]): Promise<Map<string, number>> {
    const docs = await this.ready();
    const changed = plans.filter((p) => p.changed);
    if (changed.length === 0) return new Map();
    // The notes go in the same batch as the writes, before them: on the embedded engine one transaction.
    const notes = changed.map((p) => ({ collection: JOURNAL, insert: { _id: `${taskId}|${type}|${p.id}`, taskId, type, id: p.id, before: p.before, wrote: p.version } }));
    const versions = await this.store.applyWrites(type, plans, notes);
    for (const p of changed) {
      const got = versions.get(p.id);
      if (got !== p.version) await docs.updateOne({ _id: `${taskId}|${type}|${p.id}` }, { wrote: got });
    }
    return versions;
  }

  /** Undoes every write of the exchange; returns how many resources were put back. */
  async rollback(taskId: string): Promise<number> {
    const docs = await this.ready();
    let reverted = 0;
    for (const d of await docs.find({ taskId })) {
      const outcome = await this.store.revert(d.type, d.id, d.before, d.wrote);
      if (outcome === 'reverted') reverted++;
      else if (outcome === 'changed') this.logger.warn('exchange rollback left a resource that changed since', { task: taskId, type: d.type });
      await docs.deleteMany({ _id: d._id });
    }
    return reverted;
  }

  /** The exchange completed: its writes stand. */
  async forget(taskId: string): Promise<void> {
    await (await this.ready()).deleteMany({ taskId });
  }
}
