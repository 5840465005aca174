import { Worker } from 'node:worker_threads';

/**
 * The worker's code, plain JavaScript (so it runs the same from the TypeScript sources and the
 * build): its own connection to the file, which copies the WAL's pages into the database each time
 * it is asked, in the PASSIVE mode that never waits for, nor blocks, the writer or the readers.
 */
const WORKER = `
const { parentPort, workerData } = require('node:worker_threads');
const Database = require(workerData.driver);
const db = new Database(workerData.file);
db.pragma('busy_timeout = 1000');
parentPort.on('message', (m) => {
  if (m === 'close') {
    db.close();
    parentPort.close();
    return;
  }
  try {
    db.pragma('wal_checkpoint(PASSIVE)');
  } catch {
    // Busy or failing: the next request tries again, and the writer's own checkpoints are the backstop.
  }
  parentPort.postMessage('done');
});
`;

/** How often, at most, the worker is asked to checkpoint while writes go on. */
const INTERVAL_MS = 100;

/**
 * Checkpoints the embedded engine's WAL on another thread. Copying the WAL into the database costs
 * a writer a tenth of its time during an import; done here, it uses a core the writer does not.
 * The writer keeps a high `wal_autocheckpoint` of its own, in case this falls behind.
 */
export class Checkpointer {
  private readonly worker: Worker;
  private busy = false;
  private pending = false;
  private timer?: NodeJS.Timeout;
  private closed = false;
  private exited = false;

  constructor(file: string) {
    this.worker = new Worker(WORKER, { eval: true, workerData: { file, driver: require.resolve('better-sqlite3') } });
    this.worker.unref();
    this.worker.on('message', () => {
      this.busy = false;
      if (this.pending) this.schedule();
    });
    // A worker that dies leaves the writer's own checkpoints in charge.
    this.worker.on('error', () => (this.closed = true));
    this.worker.on('exit', () => {
      this.closed = true;
      this.exited = true;
    });
  }

  /** Something was committed: the WAL grew. */
  committed(): void {
    if (this.closed) return;
    this.pending = true;
    if (!this.busy && !this.timer) this.schedule();
  }

  private schedule() {
    this.timer ??= setTimeout(() => {
      this.timer = undefined;
      if (this.closed || this.busy) return;
      this.pending = false;
      this.busy = true;
      this.worker.postMessage('go');
    }, INTERVAL_MS);
    this.timer.unref();
  }

  async close(): Promise<void> {
    if (this.timer) clearTimeout(this.timer);
    if (this.exited) return;
    this.closed = true;
    const exited = new Promise<void>((resolve) => this.worker.once('exit', () => resolve()));
    this.worker.ref(); // the process waits for the worker to close its connection
    this.worker.postMessage('close');
    await exited;
  }
}
