import fs from 'node:fs';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { Db, GridFSBucket } from 'mongodb';
import { BlobStore, checkKey } from './blob-store';

/**
 * Blobs in GridFS (bucket `blobs`), for MongoDB: in 255 KB chunks, so a blob of any size lives
 * far from the 16 MB document limit, and every process sharing the database reads it.
 * A key's newest upload is the blob; older ones are removed once it is stored.
 */
export class GridFsBlobStore implements BlobStore {
  private readonly bucket: GridFSBucket;
  private indexed?: Promise<unknown>;

  constructor(private readonly db: Db) {
    this.bucket = new GridFSBucket(db, { bucketName: 'blobs' });
  }

  private ready(): Promise<unknown> {
    this.indexed ??= this.db.collection('blobs.files').createIndex({ filename: 1, uploadDate: -1 });
    return this.indexed;
  }

  create(key: string, contentType: string): { stream: ReturnType<GridFSBucket['openUploadStream']>; finished: Promise<void> } {
    checkKey(key);
    const stream = this.bucket.openUploadStream(key, { metadata: { contentType } });
    const finished = new Promise<void>((resolve, reject) => {
      stream.once('finish', resolve);
      stream.once('error', reject);
    }).then(async () => {
      await this.ready();
      const older = await this.bucket.find({ filename: key, _id: { $ne: stream.id } }).toArray();
      for (const f of older) await this.bucket.delete(f._id).catch(() => undefined);
    });
    finished.catch(() => undefined);
    return { stream, finished };
  }

  async store(key: string, contentType: string, file: string): Promise<void> {
    const blob = this.create(key, contentType);
    await pipeline(fs.createReadStream(file), blob.stream);
    await blob.finished;
  }

  async open(key: string): Promise<{ stream: Readable; size: number } | undefined> {
    checkKey(key);
    await this.ready();
    const [file] = await this.bucket.find({ filename: key }).sort({ uploadDate: -1 }).limit(1).toArray();
    if (!file) return undefined;
    return { stream: this.bucket.openDownloadStream(file._id), size: file.length };
  }

  async removeAll(prefix: string): Promise<void> {
    await this.ready();
    const escaped = prefix.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
    for (const f of await this.bucket.find({ filename: { $regex: `^${escaped}` } }).toArray()) await this.bucket.delete(f._id).catch(() => undefined);
  }
}
