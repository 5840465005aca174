import { createHash, randomUUID } from 'node:crypto';
import type { Resource } from 'fhir/r4';
import { BatchConflict, BulkOp, Collection, Database, DuplicateKeyError, Filter, SortSpec, StoredDoc } from './types';
import { buildSearchIndex, DEFAULT_INDEX_LIMITS, IndexLimitExceeded, IndexLimits, SearchIndex } from '../fhir/search/index-values';
import { SearchRegistry } from '../fhir/search/registry';
import { badRequest, conflict, FhirError, gone, notFound, preconditionFailed, unprocessable } from '../fhir/outcome';
import { attachDerivedAbout, DERIVED_ABOUT, PatientCompartment, provenanceAbout } from '../fhir/compartment';
import { RESOURCE_TYPES } from '../fhir/resource-types';

/** The current version of a resource, with its search index. */
interface CurrentDoc extends StoredDoc {
  v: number;
  lu: number;
  /** The content's hash (all but meta.versionId and meta.lastUpdated): an unchanged resource is not written again. */
  h: string;
  res: Resource;
  s: SearchIndex['s'];
  k: SearchIndex['k'];
  /** A Provenance: whom it is about (`Patient/{id}` references), derived from its targets (see compartment.ts DERIVED_ABOUT). */
  a?: string[];
}

/** One entry of a resource's history; a deletion has no `res`. */
interface HistoryDoc extends StoredDoc {
  id: string;
  v: number;
  lu: number;
  res?: Resource;
  deleted?: boolean;
}

export interface HistoryEntry {
  resource?: Resource;
  type: string;
  id: string;
  versionId: string;
  lastUpdated: string;
  method: 'POST' | 'PUT' | 'DELETE';
}

export interface WriteResult {
  resource: Resource;
  created: boolean;
}

/** One resource of a batch write, as planned: where it stands, and whether its content changes. */
export interface PlannedWrite {
  id: string;
  resource: Resource;
  /** Its current version (null if none) and the highest version in its history. */
  before: { current: number | null; floor: number };
  /** False when the stored resource already has this content: nothing is written. */
  changed: boolean;
  /** The version the write creates. */
  version: number;
  /** The content's hash. */
  hash: string;
}

/** One write of a transaction. `ifMatch`: the versions it may land on (`*`: any existing one). */
export type TxWrite =
  | { kind: 'create'; type: string; id: string; resource: Resource }
  | { kind: 'update'; type: string; id: string; resource: Resource; ifMatch?: string[] | '*' }
  | { kind: 'delete'; type: string; id: string; ifMatch?: string[] | '*' };

export interface TxResult {
  type: string;
  id: string;
  /** The stored resource (create, update). */
  resource?: Resource;
  created?: boolean;
  /** The deletion's version (delete); undefined when there was nothing to delete. */
  deletedVersion?: string;
}

/** The hash of a resource's content, leaving out what every write changes. */
export function contentHash(resource: Resource): string {
  const { versionId: _v, lastUpdated: _l, ...meta } = resource.meta ?? {};
  return createHash('sha1').update(JSON.stringify({ ...resource, meta })).digest('base64');
}

const MAX_WRITE_RETRIES = 20;

/**
 * FHIR persistence over either engine: server-maintained versionId/lastUpdated, history,
 * optimistic concurrency (a write only lands on the version it read), and the search index.
 */
export class ResourceStore {
  private indexed = new Set<string>();
  private compartmentOf?: PatientCompartment;

  constructor(
    private readonly db: Database,
    private readonly registry: SearchRegistry,
    private readonly now: () => Date = () => new Date(),
    /** How many search-index values a resource may have (see IndexLimits); a write over them is 422. */
    readonly indexLimits: IndexLimits = DEFAULT_INDEX_LIMITS,
  ) {}

  /** Throws 422 when the resource has more search-index values than the limits allow (the check `create`/`update` make). */
  checkIndexable(resource: Resource): void {
    this.indexOf(resource);
  }

  private indexOf(resource: Resource): SearchIndex {
    try {
      return buildSearchIndex(this.registry, resource as never, this.indexLimits);
    } catch (err) {
      if (err instanceof IndexLimitExceeded) throw unprocessable(`${err.message}; nothing was written`, 'too-costly');
      throw err;
    }
  }

  private current(type: string): Collection<CurrentDoc> {
    return this.db.collection<CurrentDoc>(`${type}`);
  }

  private history(type: string): Collection<HistoryDoc> {
    return this.db.collection<HistoryDoc>(`${type}_history`);
  }

  /** Creates the indexes the search parameters need; safe to call repeatedly. */
  async ensureIndexes(type: string): Promise<void> {
    if (this.indexed.has(type)) return;
    this.indexed.add(type);
    const c = this.current(type);
    // Every search parameter's values, in one wildcard index (multikey, as MongoDB's `$**`).
    await c.createIndex(['s.$**']);
    await c.createIndex(['lu']);
    await this.history(type).createIndex(['id', 'v']);
    await this.history(type).createIndex(['lu']);
    // A member match looks Coverages up by subscriberId too, which is no R4 search parameter.
    if (type === 'Coverage') await c.createIndex(['res.subscriberId']);
  }

  async create(resource: Resource, id: string = randomUUID()): Promise<Resource> {
    const result = await this.write(resource.resourceType, id, resource, { mustCreate: true });
    return result.resource;
  }

  /**
   * Creates or updates `type/id`. With `ifMatch` the write lands only on a current version it names
   * (a versionId, or a list of them), or with `*` only on an existing resource; else 412.
   */
  async update(type: string, id: string, resource: Resource, ifMatch?: string | string[] | '*'): Promise<WriteResult> {
    return this.write(type, id, resource, { ifMatch: typeof ifMatch === 'string' && ifMatch !== '*' ? [ifMatch] : ifMatch });
  }

  private async write(type: string, id: string, resource: Resource, opts: { mustCreate?: boolean; ifMatch?: string[] | '*' }): Promise<WriteResult> {
    await this.ensureIndexes(type);
    const current = this.current(type);
    for (let attempt = 0; attempt < MAX_WRITE_RETRIES; attempt++) {
      const existing = opts.mustCreate ? null : await current.findOne({ _id: id });
      if (opts.ifMatch !== undefined && !(existing && (opts.ifMatch === '*' || opts.ifMatch.includes(String(existing.v))))) {
        const named = opts.ifMatch === '*' ? 'any version' : opts.ifMatch.join(', ');
        throw preconditionFailed(`Version conflict: ${type}/${id} is at version ${existing?.v ?? 'none'}, If-Match named ${named}`);
      }
      const version = existing ? existing.v + 1 : await this.nextVersionAfterDelete(type, id);
      const lastUpdated = this.now();
      const stored = withMeta(resource, id, version, lastUpdated);
      const doc = this.currentDoc(id, version, lastUpdated.getTime(), stored, undefined, true, await this.derivedAbout(stored));
      try {
        if (existing) {
          // Lands only if nobody wrote a newer version since we read it.
          const matched = await current.replaceOne({ _id: id, v: existing.v }, doc);
          if (matched === 0) {
            if (opts.ifMatch !== undefined) throw preconditionFailed(`Version conflict: ${type}/${id} changed concurrently`);
            continue;
          }
        } else {
          await current.insertOne(doc);
        }
      } catch (err) {
        if (err instanceof DuplicateKeyError) {
          if (opts.mustCreate) throw err;
          continue;
        }
        throw err;
      }
      await this.history(type).replaceOne(
        { _id: `${id}/${version}` },
        { _id: `${id}/${version}`, id, v: version, lu: doc.lu, res: stored },
        { upsert: true },
      );
      await this.refreshProvenance(type, [id]);
      attachDerivedAbout(stored, doc.a);
      return { resource: stored, created: !existing };
    }
    throw preconditionFailed(`Too many concurrent writes to ${type}/${id}`);
  }

  private currentDoc(id: string, v: number, lu: number, res: Resource, hash = contentHash(res), limited = true, about?: string[]): CurrentDoc {
    const index = limited ? this.indexOf(res) : buildSearchIndex(this.registry, res as never);
    if (!about) return { _id: id, v, lu, h: hash, res, ...index };
    return { _id: id, v, lu, h: hash, res, s: { ...index.s, [DERIVED_ABOUT]: about }, k: index.k, a: about };
  }

  private get compartment(): PatientCompartment {
    return (this.compartmentOf ??= new PatientCompartment(this.registry, RESOURCE_TYPES));
  }

  /**
   * Whom a Provenance is about, from its targets as stored now (see compartment.ts DERIVED_ABOUT);
   * undefined for any other type. A target stored later, or changed, brings it up to date (`refreshProvenance`).
   */
  private async derivedAbout(resource: Resource): Promise<string[] | undefined> {
    if (resource.resourceType !== 'Provenance') return undefined;
    const lookup = async (refs: { type: string; id: string }[]) => {
      const out = new Map<string, readonly string[]>();
      const byType = new Map<string, Set<string>>();
      for (const r of refs) byType.set(r.type, (byType.get(r.type) ?? new Set()).add(r.id));
      for (const [type, set] of byType) {
        await this.ensureIndexes(type);
        const ids = [...set];
        for (let i = 0; i < ids.length; i += 500) {
          for (const d of await this.current(type).find({ _id: { $in: ids.slice(i, i + 500) } })) {
            out.set(`${type}/${d._id}`, type === 'Provenance' ? (d.a ?? []) : this.compartment.aboutOf(d.res).map((p) => `Patient/${p}`));
          }
        }
      }
      return out;
    };
    return provenanceAbout(resource, (t) => t !== 'Patient' && this.compartment.has(t), lookup);
  }

  /**
   * After records of a member type were written: the Provenance that targets them is about whom
   * they are about now (a Provenance stored before its target, or a record moved to another
   * member). Only the derived members change: no new version.
   */
  private async refreshProvenance(type: string, ids: string[]): Promise<void> {
    if (ids.length === 0 || type === 'Patient' || type === 'Provenance' || !this.compartment.has(type)) return;
    await this.ensureIndexes('Provenance');
    const provenance = this.current('Provenance');
    for (let i = 0; i < ids.length; i += 500) {
      const refs = ids.slice(i, i + 500).map((id) => `${type}/${id}`);
      for (const doc of await provenance.find({ 's.target': { $in: refs } })) {
        const about = (await this.derivedAbout(doc.res)) as string[];
        if (JSON.stringify(about) === JSON.stringify(doc.a ?? null)) continue;
        // A Provenance written meanwhile was derived afresh by its own write.
        await provenance.replaceOne({ _id: doc._id, v: doc.v }, this.currentDoc(doc._id, doc.v, doc.lu, doc.res, doc.h, false, about));
      }
    }
  }

  /** A stored resource as handed out: a Provenance with whom it is about (for the access rule). */
  private out(doc: CurrentDoc): Resource {
    attachDerivedAbout(doc.res, doc.a);
    return doc.res;
  }

  /**
   * Plans a batch of writes of one type with two queries, whatever its size: each resource's
   * current version and content hash, and for those with none, the highest version in their history.
   * `hashes`: the resources' content hashes (`contentHash`), where the caller made them beforehand.
   */
  async planWrites(type: string, resources: Resource[], hashes: (string | undefined)[] = []): Promise<PlannedWrite[]> {
    await this.ensureIndexes(type);
    const ids = resources.map((r) => r.id as string);
    const current = new Map((await this.current(type).find({ _id: { $in: ids } }, { fields: ['v', 'h'] })).map((d) => [d._id, d]));
    const missing = ids.filter((id) => !current.has(id));
    const floors = new Map<string, number>();
    if (missing.length) {
      for (const h of await this.history(type).find({ id: { $in: missing } }, { fields: ['id', 'v'] })) floors.set(h.id, Math.max(floors.get(h.id) ?? 0, h.v));
    }
    return resources.map((resource, i) => {
      const id = resource.id as string;
      const doc = current.get(id);
      const hash = hashes[i] ?? contentHash(resource);
      if (doc) return { id, resource, before: { current: doc.v, floor: doc.v }, changed: doc.h !== hash, version: doc.v + 1, hash };
      const floor = floors.get(id) ?? 0;
      return { id, resource, before: { current: null, floor }, changed: true, version: floor + 1, hash };
    });
  }

  /**
   * Writes the changed resources of a plan in one batch (one transaction on the embedded engine),
   * each with its history entry; a resource someone else wrote since it was planned is written on
   * its own afterwards. Answers the version each changed resource got. `alongside` are other writes
   * (the caller's own documents) to make in the same batch, before these.
   */
  async applyWrites(type: string, plans: PlannedWrite[], alongside: BulkOp[] = []): Promise<Map<string, number>> {
    const changed = plans.filter((p) => p.changed);
    const lastUpdated = this.now();
    const ops: BulkOp[] = [...alongside];
    for (const p of changed) {
      const stored = withMeta(p.resource, p.id, p.version, lastUpdated);
      const doc = this.currentDoc(p.id, p.version, lastUpdated.getTime(), stored, p.hash, true, await this.derivedAbout(stored));
      const at = ops.length;
      ops.push(p.before.current === null ? { collection: type, insert: doc } : { collection: type, replace: doc, filter: { _id: p.id, v: p.before.current } });
      const _id = `${p.id}/${p.version}`;
      // A version is written once: its history entry is new (a retry after a crash finds it there, which is as good).
      ops.push({ collection: `${type}_history`, after: at, insert: { _id, id: p.id, v: p.version, lu: doc.lu, res: stored } });
    }
    const applied = ops.length ? await this.db.bulkWrite(ops) : [];
    const versions = new Map<string, number>();
    for (const [i, p] of changed.entries()) {
      if (applied[alongside.length + 2 * i]) versions.set(p.id, p.version);
      else versions.set(p.id, Number((await this.update(type, p.id, p.resource)).resource.meta?.versionId));
    }
    await this.refreshProvenance(type, changed.map((p) => p.id));
    return versions;
  }

  /**
   * Writes a set of creates, updates and deletes all together or not at all (one transaction on
   * both engines), each with its history; a version conflict is 412, a concurrent change 409 (retry).
   */
  async transact(writes: TxWrite[]): Promise<TxResult[]> {
    const seen = new Set<string>();
    for (const w of writes) {
      const key = `${w.type}/${w.id}`;
      if (seen.has(key)) throw badRequest(`${key} is written twice in one transaction`);
      seen.add(key);
      await this.ensureIndexes(w.type);
    }
    const lastUpdated = this.now();
    const ops: BulkOp[] = [];
    const results: TxResult[] = [];
    for (const w of writes) {
      const existing = w.kind === 'create' ? null : await this.current(w.type).findOne({ _id: w.id });
      if (w.kind !== 'create' && w.ifMatch !== undefined && !(existing && (w.ifMatch === '*' || w.ifMatch.includes(String(existing.v))))) {
        throw preconditionFailed(`Version conflict: ${w.type}/${w.id} is at version ${existing?.v ?? 'none'}, If-Match named ${w.ifMatch === '*' ? 'any version' : w.ifMatch.join(', ')}`);
      }
      const history = this.history(w.type);
      if (w.kind === 'delete') {
        if (!existing) {
          results.push({ type: w.type, id: w.id });
          continue;
        }
        const v = existing.v + 1;
        ops.push({ collection: w.type, remove: { _id: w.id, v: existing.v } });
        ops.push({ collection: `${w.type}_history`, insert: { _id: `${w.id}/${v}`, id: w.id, v, lu: lastUpdated.getTime(), deleted: true } });
        results.push({ type: w.type, id: w.id, deletedVersion: String(v) });
        continue;
      }
      let version: number;
      if (existing) version = existing.v + 1;
      else {
        const [last] = await history.find({ id: w.id }, { sort: { v: -1 }, limit: 1, fields: ['v'] });
        version = (last?.v ?? 0) + 1;
      }
      const stored = withMeta(w.resource, w.id, version, lastUpdated);
      const doc = this.currentDoc(w.id, version, lastUpdated.getTime(), stored, undefined, true, await this.derivedAbout(stored));
      ops.push(existing ? { collection: w.type, replace: doc, filter: { _id: w.id, v: existing.v } } : { collection: w.type, insert: doc });
      ops.push({ collection: `${w.type}_history`, insert: { _id: `${w.id}/${version}`, id: w.id, v: version, lu: doc.lu, res: stored } });
      results.push({ type: w.type, id: w.id, resource: stored, created: !existing });
    }
    try {
      if (ops.length) await this.db.atomicWrite(ops);
    } catch (err) {
      if (err instanceof BatchConflict) throw conflict('A resource of the transaction changed while it was processed; nothing was written, send it again');
      throw err;
    }
    // A Provenance written with its targets in one transaction was derived before they were stored.
    for (const w of writes) if (w.kind !== 'delete') await this.refreshProvenance(w.type, [w.id]);
    return results;
  }

  private async nextVersionAfterDelete(type: string, id: string): Promise<number> {
    const [last] = await this.history(type).find({ id }, { sort: { v: -1 }, limit: 1 });
    return last ? last.v + 1 : 1;
  }

  /**
   * Where a resource's versions stand: its current version (null if none) and the highest version
   * in its history. An undo journal records this before a write, so `revert` can go back to it.
   */
  async versionState(type: string, id: string): Promise<{ current: number | null; floor: number }> {
    const doc = await this.current(type).findOne({ _id: id });
    if (doc) return { current: doc.v, floor: doc.v };
    const [last] = await this.history(type).find({ id }, { sort: { v: -1 }, limit: 1 });
    return { current: null, floor: last?.v ?? 0 };
  }

  /**
   * Undoes writes as if they never happened: the versions after `floor` leave the history, and the
   * resource is back at version `current` (or gone again when it had none). Only when nobody else
   * wrote since: `expected` names the latest version the undone writes made (undefined: any after floor).
   */
  async revert(type: string, id: string, to: { current: number | null; floor: number }, expected?: number): Promise<'reverted' | 'untouched' | 'changed'> {
    const currentColl = this.current(type);
    const doc = await currentColl.findOne({ _id: id });
    if (!doc && to.current !== null) {
      // An undone deletion: the resource is back at the version it had, if the deletion is the last thing that happened to it.
      const [last] = await this.history(type).find({ id }, { sort: { v: -1 }, limit: 1, fields: ['v', 'deleted'] });
      if (last?.deleted && last.v > to.floor && (expected === undefined || last.v === expected)) {
        const prev = await this.history(type).findOne({ _id: `${id}/${to.current}` });
        if (!prev?.res) return 'changed';
        await currentColl.insertOne(this.currentDoc(id, prev.v, prev.lu, prev.res, undefined, false));
        await this.history(type).deleteMany({ id, v: { $gt: to.floor } });
        return 'reverted';
      }
    }
    if (!doc || doc.v <= to.floor) {
      // Nothing was written after the floor (a planned write that never happened), or it was deleted since.
      const [last] = await this.history(type).find({ id }, { sort: { v: -1 }, limit: 1, fields: ['v'] });
      return (last?.v ?? 0) <= to.floor ? 'untouched' : 'changed';
    }
    if (expected !== undefined && doc.v !== expected) return 'changed';
    if (to.current === null) {
      if ((await currentColl.deleteMany({ _id: id, v: doc.v })) === 0) return 'changed';
    } else {
      const prev = await this.history(type).findOne({ _id: `${id}/${to.current}` });
      if (!prev?.res) return 'changed';
      // A version stored before (under the limits of its time) is restored as it was.
      const restored = this.currentDoc(id, prev.v, prev.lu, prev.res, undefined, false, await this.derivedAbout(prev.res));
      if ((await currentColl.replaceOne({ _id: id, v: doc.v }, restored)) === 0) return 'changed';
    }
    await this.history(type).deleteMany({ id, v: { $gt: to.floor } });
    await this.refreshProvenance(type, [id]);
    return 'reverted';
  }

  /** The current version; 404 if it never existed, 410 if deleted. */
  async read(type: string, id: string): Promise<Resource> {
    const doc = await this.current(type).findOne({ _id: id });
    if (doc) return this.out(doc);
    throw await this.missing(type, id);
  }

  /**
   * The current version as JSON text, to be sent as it is, with its versionId and time (those of
   * its `meta`); 410 when deleted, 404 when never known, as `read`.
   */
  async readText(type: string, id: string): Promise<{ text: string; versionId: string; lastUpdated: Date }> {
    const found = await this.current(type).findTextById(id, 'res');
    if (found) return { text: found.text, versionId: String(found.rest.v), lastUpdated: new Date(found.rest.lu as number) };
    throw await this.missing(type, id);
  }

  /** Why `type/id` has no current version: deleted (410) or never known (404). */
  private async missing(type: string, id: string): Promise<FhirError> {
    const [last] = await this.history(type).find({ id }, { sort: { v: -1 }, limit: 1 });
    return last?.deleted ? gone(`${type}/${id} was deleted`) : notFound(`${type}/${id} is not known`);
  }

  async readIfExists(type: string, id: string): Promise<Resource | undefined> {
    const doc = await this.current(type).findOne({ _id: id });
    return doc ? this.out(doc) : undefined;
  }

  async vread(type: string, id: string, versionId: string): Promise<Resource> {
    const doc = await this.history(type).findOne({ _id: `${id}/${versionId}` });
    if (!doc) throw notFound(`${type}/${id}/_history/${versionId} is not known`);
    if (doc.deleted) throw gone(`${type}/${id} version ${versionId} is a deletion`);
    return doc.res as Resource;
  }

  /** Deletes the current version; returns the deletion's versionId, or undefined if there was nothing to delete. */
  async delete(type: string, id: string): Promise<string | undefined> {
    const current = this.current(type);
    for (let attempt = 0; attempt < MAX_WRITE_RETRIES; attempt++) {
      const existing = await current.findOne({ _id: id });
      if (!existing) return undefined;
      const removed = await current.deleteMany({ _id: id, v: existing.v });
      if (removed === 0) continue;
      const v = existing.v + 1;
      await this.history(type).replaceOne({ _id: `${id}/${v}` }, { _id: `${id}/${v}`, id, v, lu: this.now().getTime(), deleted: true }, { upsert: true });
      return String(v);
    }
    throw preconditionFailed(`Too many concurrent writes to ${type}/${id}`);
  }

  /** A resource's history (or a type's, or that of the resources `ids`), newest first. */
  async historyOf(type: string, id: string | undefined, opts: { since?: number; count: number; offset: number; ids?: string[] }): Promise<{ entries: HistoryEntry[]; total: number }> {
    const filter: Filter = {};
    if (id) filter.id = id;
    else if (opts.ids) filter.id = { $in: opts.ids };
    if (opts.since !== undefined) filter.lu = { $gte: opts.since };
    const coll = this.history(type);
    const [docs, total] = await Promise.all([
      coll.find(filter, { sort: { lu: -1, v: -1 }, skip: opts.offset, limit: opts.count }),
      coll.count(filter),
    ]);
    const entries = docs.map((d) => ({
      resource: d.res,
      type,
      id: d.id,
      versionId: String(d.v),
      lastUpdated: new Date(d.lu).toISOString(),
      method: d.deleted ? ('DELETE' as const) : d.v === 1 ? ('POST' as const) : ('PUT' as const),
    }));
    return { entries, total };
  }

  async search(type: string, filter: Filter, opts: { sort?: SortSpec; skip?: number; limit?: number } = {}): Promise<Resource[]> {
    await this.ensureIndexes(type);
    const docs = await this.current(type).find(filter, opts);
    return docs.map((d) => this.out(d));
  }

  /**
   * As `search`, each match as its id and its JSON text as stored, to be sent as it is (nothing
   * parsed or serialised again).
   */
  async searchTexts(type: string, filter: Filter, opts: { sort?: SortSpec; skip?: number; limit?: number } = {}): Promise<{ id: string; text: string }[]> {
    await this.ensureIndexes(type);
    return (await this.current(type).findTexts(filter, 'res', opts)).map((d) => ({ id: d._id, text: d.text }));
  }

  /**
   * The Coverages that carry one of these identifiers (`system|value` search tokens) or this
   * subscriberId, at most `limit`: a member match's look-up, each half served by an index.
   */
  async coveragesFor(keys: { identifierTokens: string[]; subscriberId?: string }, limit: number): Promise<Resource[]> {
    const ors: Filter[] = [];
    if (keys.identifierTokens.length) ors.push({ 's.identifier': { $in: keys.identifierTokens } });
    if (keys.subscriberId) ors.push({ 'res.subscriberId': keys.subscriberId });
    if (ors.length === 0) return [];
    return this.search('Coverage', ors.length === 1 ? ors[0] : { $or: ors }, { limit });
  }

  async count(type: string, filter: Filter): Promise<number> {
    await this.ensureIndexes(type);
    return this.current(type).count(filter);
  }

  /** Streams every match in pages ordered by id, so memory stays bounded whatever the result's size. */
  async *stream(type: string, filter: Filter, pageSize = 500): AsyncGenerator<Resource> {
    await this.ensureIndexes(type);
    const current = this.current(type);
    // The matching ids first, many at a time (one evaluation of the filter serves STREAM_IDS of
    // them), then their documents a page at a time, each page checked against the filter again (a
    // resource changed meanwhile is yielded only if it still matches). Paging the documents
    // themselves by the filter would evaluate the whole filter again for every page.
    let after: string | undefined;
    for (;;) {
      const ids = (await current.find(after === undefined ? filter : { $and: [filter, { _id: { $gt: after } }] }, { sort: { _id: 1 }, limit: STREAM_IDS, fields: ['_id'] })).map((d) => d._id);
      for (let i = 0; i < ids.length; i += pageSize) {
        for (const d of await current.find({ $and: [filter, { _id: { $in: ids.slice(i, i + pageSize) } }] }, { sort: { _id: 1 } })) yield this.out(d);
      }
      if (ids.length < STREAM_IDS) return;
      after = ids[ids.length - 1];
    }
  }
}

/** How many matching ids `stream` asks for at a time. */
const STREAM_IDS = 10_000;

function withMeta(resource: Resource, id: string, version: number, lastUpdated: Date): Resource {
  return { ...resource, id, meta: { ...(resource.meta ?? {}), versionId: String(version), lastUpdated: lastUpdated.toISOString() } };
}
