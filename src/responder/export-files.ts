import type { Readable, Writable } from 'node:stream';
import { once } from 'node:events';
import { BlobStore } from '../store/blobs/blob-store';

/** Where export outputs live: blobs `exports/{job}/{Type}.ndjson` in the store's blob store (files, or GridFS). */
export class ExportFiles {
  constructor(private readonly blobs: BlobStore) {}

  private key(jobId: string, name: string): string {
    if (!/^[A-Za-z0-9-]{1,64}$/.test(jobId)) throw new Error('invalid job id');
    return `exports/${jobId}/${name}`;
  }

  /** A file of a job, or undefined when there is none (or the name is not one an export writes). */
  async read(jobId: string, name: string): Promise<Readable | undefined> {
    if (!/^[A-Za-z]+(-\d+)?\.ndjson$/.test(name)) return undefined;
    return (await this.blobs.open(this.key(jobId, name)))?.stream;
  }

  async reset(jobId: string): Promise<void> {
    await this.remove(jobId);
  }

  async remove(jobId: string): Promise<void> {
    await this.blobs.removeAll(`exports/${this.key(jobId, 'x').split('/')[1]}/`);
  }

  /** An NDJSON writer that respects back-pressure, so memory stays flat whatever the export's size. */
  open(jobId: string, name: string): NdjsonWriter {
    const { stream, finished } = this.blobs.create(this.key(jobId, name), 'application/fhir+ndjson');
    return new NdjsonWriter(stream, finished);
  }
}

export class NdjsonWriter {
  count = 0;

  constructor(private readonly stream: Writable, private readonly finished: Promise<void>) {}

  async write(resource: unknown): Promise<void> {
    this.count++;
    if (!this.stream.write(`${JSON.stringify(resource)}\n`)) await once(this.stream, 'drain');
  }

  async close(): Promise<void> {
    this.stream.end();
    await this.finished;
  }
}
