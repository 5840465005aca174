import fs from 'node:fs';
import path from 'node:path';
import { once } from 'node:events';
import { BlobStore, checkKey } from './blob-store';

/** Blobs as files under a directory (the embedded engine's DATA_DIR/blobs); written to a temporary name, then renamed. */
export class FileBlobStore implements BlobStore {
  constructor(private readonly root: string) {
    fs.mkdirSync(root, { recursive: true });
  }

  private pathOf(key: string): string {
    return path.join(this.root, ...checkKey(key).split('/'));
  }

  create(key: string): { stream: fs.WriteStream; finished: Promise<void> } {
    const file = this.pathOf(key);
    fs.mkdirSync(path.dirname(file), { recursive: true });
    const temp = `${file}.${process.pid}.partial`;
    const stream = fs.createWriteStream(temp, { flags: 'w', mode: 0o600 });
    const finished = (async () => {
      try {
        await once(stream, 'close');
      } catch (err) {
        await fs.promises.rm(temp, { force: true });
        throw err;
      }
      if (stream.errored) {
        await fs.promises.rm(temp, { force: true });
        throw stream.errored;
      }
      await fs.promises.rename(temp, file);
    })();
    finished.catch(() => undefined);
    return { stream, finished };
  }

  /**
   * A hard link to the file, when it is on the same file system (no copy: a blob file is never
   * changed in place, only replaced by a rename), else a copy; then renamed into place.
   */
  async store(key: string, _contentType: string, file: string): Promise<void> {
    const target = this.pathOf(key);
    await fs.promises.mkdir(path.dirname(target), { recursive: true });
    const temp = `${target}.${process.pid}.partial`;
    try {
      await fs.promises.rm(temp, { force: true });
      await fs.promises.link(file, temp).catch(() => fs.promises.copyFile(file, temp));
      await fs.promises.rename(temp, target);
    } catch (err) {
      await fs.promises.rm(temp, { force: true });
      throw err;
    }
  }

  async open(key: string): Promise<{ stream: fs.ReadStream; size: number } | undefined> {
    const file = this.pathOf(key);
    try {
      const { size } = await fs.promises.stat(file);
      return { stream: fs.createReadStream(file), size };
    } catch {
      return undefined;
    }
  }

  async removeAll(prefix: string): Promise<void> {
    const folder = prefix.replace(/\/+$/, '');
    const target = path.join(this.root, ...checkKey(`${folder}/x`).split('/').slice(0, -1));
    await fs.promises.rm(target, { recursive: true, force: true });
  }
}
