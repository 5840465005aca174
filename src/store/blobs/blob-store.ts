import type { Readable, Writable } from 'node:stream';

/**
 * Large objects kept beside the documents: export files and archived originals. Keys are the
 * server's own (`exports/{job}/{file}`, `binary/{id}`), never a client's or a source's text. Files
 * under DATA_DIR with the embedded engine; GridFS with MongoDB, so several processes sharing one
 * database share them without a shared disk, and no document nears MongoDB's 16 MB limit.
 */
export interface BlobStore {
  /** A stream that writes the blob; `finished` settles when it is stored (or failed). Replaces any blob of that key. */
  create(key: string, contentType: string): { stream: Writable; finished: Promise<void> };
  /** Stores a local file, left in place, as the blob (replacing any of that key); the file must not change afterwards. */
  store(key: string, contentType: string, file: string): Promise<void>;
  /** The blob's bytes, or undefined if there is none. */
  open(key: string): Promise<{ stream: Readable; size: number } | undefined>;
  /** Deletes every blob whose key starts with `prefix` (a folder such as `exports/{job}/`). */
  removeAll(prefix: string): Promise<void>;
}

const KEY = /^[a-z]+\/[A-Za-z0-9._-]{1,128}(\/[A-Za-z0-9._-]{1,128})?$/;

/** Refuses any key that is not of the server's own simple form. */
export function checkKey(key: string): string {
  if (!KEY.test(key) || key.includes('..')) throw new Error(`invalid blob key ${JSON.stringify(key)}`);
  return key;
}
