import { randomUUID } from 'node:crypto';
import { Collection, Database, StoredDoc } from '../store/types';
import { PlannedWrite, ResourceStore } from '../store/resource-store';
import type { Logger } from '../logger';

const JOURNAL = 'exchange_journal';

/** Where a resource's versions stood before the exchange wrote it. */
type VersionState = { current: number | null; floor: number };

/** One resource an exchange wrote: where it stood before, and the version written (unset if the process died between the write and this note). */
interface Note {
  id: string;
  before: VersionState;
  wrote?: number;
}

/**
 * The notes of one batch of writes of one type, in one document (so a batch of 1,000 costs one
 * insert, not 500): a few tens of kilobytes, far below MongoDB's 16 MB limit whatever the batch.
 * Journals written before notes were batched hold one resource each, as `id`, `before` and `wrote`.
 */
interface JournalDoc extends StoredDoc {
  taskId: string;
  type: string;
  notes?: Note[];
  id?: string;
  before?: VersionState;
  wrote?: number;
}

/** Notes per journal document at most. */
const NOTES_PER_DOC = 1000;

/**
 * The exchange's undo journal: before the exchange writes a resource, where that resource stood is
 * noted here, so a failed or cancelled exchange leaves none of its writes behind (created resources
 * vanish with their history, updated ones are back at their previous version). The notes outlive a
 * crash; a completed exchange forgets them. A resource the exchange writes more than once (sent
 * twice by the source, or imported again after a restart) is put back to where it stood before the
 * first write, provided nobody else wrote it since the last.
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

  /** Writes through the journal: notes the resource's state, writes, then notes the version written. */
  async write(taskId: string, type: string, id: string, write: () => Promise<{ resource: { meta?: { versionId?: string } } }>): Promise<void> {
    const docs = await this.ready();
    const _id = `${taskId}|${randomUUID()}`;
    const before = await this.store.versionState(type, id);
    await docs.insertOne({ _id, taskId, type, notes: [{ id, before }] });
    const { resource } = await write();
    await docs.updateOne({ _id }, { notes: [{ id, before, wrote: Number(resource.meta?.versionId) }] });
  }

  /**
   * Writes a planned batch through the journal: notes where each changed resource stood and the
   * version it is to get, in the same batch as the writes (on the embedded engine one transaction),
   * then corrects the notes if any resource got another version.
   */
  async writeMany(taskId: string, type: string, plans: PlannedWrite[]): Promise<Map<string, number>> {
    const docs = await this.ready();
    const changed = plans.filter((p) => p.changed);
    if (changed.length === 0) return new Map();
    const batches: JournalDoc[] = [];
    for (let i = 0; i < changed.length; i += NOTES_PER_DOC) {
      const notes = changed.slice(i, i + NOTES_PER_DOC).map((p) => ({ id: p.id, before: p.before, wrote: p.version }));
      batches.push({ _id: `${taskId}|${randomUUID()}`, taskId, type, notes });
    }
    const versions = await this.store.applyWrites(type, plans, batches.map((insert) => ({ collection: JOURNAL, insert })));
    for (const doc of batches) {
      const notes = doc.notes as Note[];
      if (notes.every((n) => versions.get(n.id) === n.wrote)) continue;
      await docs.updateOne({ _id: doc._id }, { notes: notes.map((n) => ({ ...n, wrote: versions.get(n.id) })) });
    }
    return versions;
  }

  /**
   * Deletes a resource through the journal (a rollback brings it back at the version it had);
   * false when there was nothing to delete.
   */
  async deleteOne(taskId: string, type: string, id: string): Promise<boolean> {
    const docs = await this.ready();
    const before = await this.store.versionState(type, id);
    if (before.current === null) return false;
    const _id = `${taskId}|${randomUUID()}`;
    await docs.insertOne({ _id, taskId, type, notes: [{ id, before }] });
    const version = await this.store.delete(type, id);
    if (version === undefined) {
      await docs.deleteMany({ _id });
      return false;
    }
    await docs.updateOne({ _id }, { notes: [{ id, before, wrote: Number(version) }] });
    return true;
  }

  /** Undoes every write of the exchange; returns how many resources were put back. */
  async rollback(taskId: string): Promise<number> {
    const docs = await this.ready();
    // Each resource's notes merged: the earliest state (the lowest floor: versions only grow) and
    // the latest version written (unknown if any write's note was never completed).
    const merged = new Map<string, { type: string; id: string; before: VersionState; wrote?: number; unsure: boolean }>();
    for (const d of await docs.find({ taskId })) {
      const notes: Note[] = d.notes ?? (d.id && d.before ? [{ id: d.id, before: d.before, wrote: d.wrote }] : []);
      for (const n of notes) {
        const key = `${d.type}/${n.id}`;
        const m = merged.get(key);
        if (!m) merged.set(key, { type: d.type, id: n.id, before: n.before, wrote: n.wrote, unsure: n.wrote === undefined });
        else {
          if (n.before.floor < m.before.floor) m.before = n.before;
          m.unsure ||= n.wrote === undefined;
          m.wrote = Math.max(m.wrote ?? 0, n.wrote ?? 0);
        }
      }
    }
    let reverted = 0;
    for (const m of merged.values()) {
      const outcome = await this.store.revert(m.type, m.id, m.before, m.unsure ? undefined : m.wrote);
      if (outcome === 'reverted') reverted++;
      else if (outcome === 'changed') this.logger.warn('exchange rollback left a resource that changed since', { task: taskId, type: m.type });
    }
    // Reverting again is harmless (a resource back at its floor is left alone): the notes go last.
    await docs.deleteMany({ taskId });
    return reverted;
  }

  /** The exchange completed: its writes stand. */
  async forget(taskId: string): Promise<void> {
    await (await this.ready()).deleteMany({ taskId });
  }
}
