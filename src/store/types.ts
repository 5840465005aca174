import type { BlobStore } from './blobs/blob-store';

/**
 * The storage seam. Both engines (embedded NeDB and MongoDB) implement this small,
 * MongoDB-shaped interface and take the same MongoDB-style filters, so everything
 * above it (resource store, search, jobs) is written once.
 */
export type Filter = Record<string, unknown>;
export type SortSpec = Record<string, 1 | -1>;

export interface FindOptions {
  sort?: SortSpec;
  skip?: number;
  limit?: number;
  /** Top-level fields to return (with `_id`); all when left out. */
  fields?: string[];
}

/**
 * One write of a batch: an insert (refused if its _id is taken), or a replacement of the document
 * matching `filter` (with `upsert`, an insert when none does). `after` names an earlier write of
 * the batch that must have been applied for this one to be tried.
 */
export type BulkOp = { collection: string; after?: number } & ({ insert: StoredDoc } | { replace: StoredDoc; filter: Filter; upsert?: boolean } | { remove: Filter });

/** An atomic batch in which a write could not be applied: none of the batch was. */
export class BatchConflict extends Error {
  constructor(readonly index: number) {
    super(`write ${index} of an atomic batch could not be applied`);
    this.name = 'BatchConflict';
  }
}

export interface StoredDoc {
  _id: string;
  [key: string]: unknown;
}

export interface Collection<T extends StoredDoc = StoredDoc> {
  /** Inserts a document; throws DuplicateKeyError when its _id (or a unique index) is taken. */
  insertOne(doc: T): Promise<void>;
  findOne(filter: Filter): Promise<T | null>;
  /**
   * The document with this `_id` in two parts: `field`'s value as JSON text, to be sent as it is,
   * and the rest of the document; null when there is none. Serves hot reads without parsing the
   * document and serialising it again.
   */
  findTextById(id: string, field: string): Promise<{ text: string; rest: Partial<T> } | null>;
  find(filter: Filter, options?: FindOptions): Promise<T[]>;
  /**
   * As `find`, but each match as its `_id` and `field`'s value as JSON text, to be sent as it is:
   * serves search pages without parsing each document and serialising it again.
   */
  findTexts(filter: Filter, field: string, options?: Omit<FindOptions, 'fields'>): Promise<{ _id: string; text: string }[]>;
  count(filter: Filter): Promise<number>;
  /** Replaces the one document matching filter; returns how many matched (0 or 1). */
  replaceOne(filter: Filter, doc: T, options?: { upsert?: boolean }): Promise<number>;
  /** Applies `$set` to the first matching document, atomically; returns how many matched. */
  updateOne(filter: Filter, set: Record<string, unknown>): Promise<number>;
  deleteMany(filter: Filter): Promise<number>;
  createIndex(fields: string[], options?: { unique?: boolean }): Promise<void>;
}

export interface Database {
  readonly engine: 'embedded' | 'mongodb';
  /** Large objects (export files, archived originals): files under DATA_DIR, or GridFS. */
  readonly blobs: BlobStore;
  collection<T extends StoredDoc = StoredDoc>(name: string): Collection<T>;
  /**
   * Applies a batch of writes, in order, across collections; answers for each whether it was
   * applied. The embedded engine applies the batch in one transaction; MongoDB in one bulk write
   * per collection (not atomic across them).
   */
  bulkWrite(ops: BulkOp[]): Promise<boolean[]>;
  /**
   * Applies every write of the batch or none: throws BatchConflict (nothing written) when one of
   * them cannot be applied. One transaction on both engines (on MongoDB, a multi-document
   * transaction: a replica set is required).
   */
  atomicWrite(ops: BulkOp[]): Promise<void>;
  close(): Promise<void>;
}

export class DuplicateKeyError extends Error {
  constructor(message = 'duplicate key') {
    super(message);
    this.name = 'DuplicateKeyError';
  }
}
