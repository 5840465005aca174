import { parentPort } from 'node:worker_threads';
import { PassThrough } from 'node:stream';
import { CheckJob, checkRecords, WorkerMessage } from './record-checker';
import { warmUpValidator } from '../fhir/validator';

/** The record checker's thread: one stream per file being checked, fed with the bytes the main thread receives. */
const port = parentPort as NonNullable<typeof parentPort>;
const inputs = new Map<number, PassThrough>();
const post = (m: WorkerMessage) => port.postMessage(m);

// The schema's validators are loaded first; until the worker says it is ready, the main thread checks.
warmUpValidator();
post({ op: 'ready' });

port.on('message', (m: { op: 'begin'; id: number; job: CheckJob } | { op: 'data'; id: number; chunk: Uint8Array } | { op: 'end' | 'abort'; id: number }) => {
  if (m.op === 'begin') {
    const input = new PassThrough();
    inputs.set(m.id, input);
    checkRecords(input, m.job)
      .then(
        (value) => post({ id: m.id, op: 'done', value }),
        (err: unknown) => post({ id: m.id, op: 'error', name: (err as Error)?.constructor?.name ?? 'Error', message: err instanceof Error ? err.message : String(err) }),
      )
      .finally(() => inputs.delete(m.id));
    return;
  }
  const input = inputs.get(m.id);
  if (!input) return;
  if (m.op === 'data') input.write(Buffer.from(m.chunk.buffer, m.chunk.byteOffset, m.chunk.byteLength), () => post({ id: m.id, op: 'ack' }));
  else if (m.op === 'end') input.end();
  else input.destroy(new Error('the download stopped'));
});
