import fs from 'node:fs';
import path from 'node:path';
import { once } from 'node:events';

/** Where export outputs live on disk: one folder per job under EXPORT_DIR. */
export class ExportFiles {
  constructor(private readonly root: string) {
    fs.mkdirSync(root, { recursive: true });
  }

  private dir(jobId: string): string {
    if (!/^[A-Za-z0-9-]{1,64}$/.test(jobId)) throw new Error('invalid job id');
    return path.join(this.root, jobId);
  }

  pathOf(jobId: string, name: string): string | undefined {
    if (!/^[A-Za-z]+(-\d+)?\.ndjson$/.test(name)) return undefined;
    return path.join(this.dir(jobId), name);
  }

  async reset(jobId: string): Promise<void> {
    await fs.promises.rm(this.dir(jobId), { recursive: true, force: true });
    await fs.promises.mkdir(this.dir(jobId), { recursive: true });
  }

  async remove(jobId: string): Promise<void> {
    await fs.promises.rm(this.dir(jobId), { recursive: true, force: true });
  }

  /** An NDJSON writer that respects back-pressure, so memory stays flat whatever the export's size. */
  open(jobId: string, name: string): NdjsonWriter {
    return new NdjsonWriter(path.join(this.dir(jobId), name));
  }
}

export class NdjsonWriter {
  private readonly stream: fs.WriteStream;
  count = 0;

  constructor(readonly file: string) {
    this.stream = fs.createWriteStream(file, { flags: 'w' });
  }

  async write(resource: unknown): Promise<void> {
    this.count++;
    if (!this.stream.write(`${JSON.stringify(resource)}\n`)) await once(this.stream, 'drain');
  }

  async close(): Promise<void> {
    await new Promise<void>((resolve, reject) => this.stream.end((err?: Error | null) => (err ? reject(err) : resolve())));
  }
}
