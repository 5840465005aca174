import fs from 'node:fs';
import { createHash } from 'node:crypto';
import { once } from 'node:events';
import { Transform, TransformCallback, Readable } from 'node:stream';
import { readResources } from './ndjson';
import { ExchangeFailed, LimitReached } from './exchange-errors';
import { validateResource } from '../fhir/validator';
import { FhirError } from '../fhir/outcome';
import { fhirCode, sourceText } from './source-text';

export interface DownloadLimits {
  /** Bytes one file may hold. */
  maxFileBytes: number;
  /** Bytes the exchange may still receive, all files together. */
  remainingBytes: number;
  /** How long a download may go without receiving a byte. */
  idleTimeoutMs: number;
  /** The exchange's deadline (epoch ms). */
  deadline: number;
  maxLineLength: number;
}

export interface Downloaded {
  count: number;
  size: number;
  sha1: string;
}

/** Counts bytes and watches the clock as data arrives; stops the download at the first limit reached. */
class Limiter extends Transform {
  bytes = 0;
  private idle?: NodeJS.Timeout;
  private readonly deadline: NodeJS.Timeout;

  constructor(private readonly label: string, private readonly limits: DownloadLimits) {
    super();
    this.deadline = setTimeout(() => this.destroy(new LimitReached(`the exchange's deadline passed while downloading ${label}`)), Math.max(0, limits.deadline - Date.now()));
    this.armIdle();
  }

  private armIdle() {
    if (this.idle) clearTimeout(this.idle);
    this.idle = setTimeout(() => this.destroy(new LimitReached(`the source sent nothing for ${Math.round(this.limits.idleTimeoutMs / 1000)} s while sending ${this.label}`)), this.limits.idleTimeoutMs);
  }

  _transform(chunk: Buffer, _enc: BufferEncoding, done: TransformCallback) {
    this.armIdle();
    this.bytes += chunk.length;
    if (this.bytes > this.limits.maxFileBytes) return done(new LimitReached(`${this.label} is larger than the limit of ${this.limits.maxFileBytes} bytes per file`));
    if (this.bytes > this.limits.remainingBytes) return done(new LimitReached(`the exchange received more than its limit of bytes (while downloading ${this.label})`));
    done(null, chunk);
  }

  _flush(done: TransformCallback) {
    this.stopTimers();
    done();
  }

  _destroy(err: Error | null, done: (error: Error | null) => void) {
    this.stopTimers();
    done(err);
  }

  private stopTimers() {
    if (this.idle) clearTimeout(this.idle);
    clearTimeout(this.deadline);
  }
}

/** The source's bytes within the limits: the stream ends in an error at the first limit reached, and closing it closes the source. */
export function limited(source: Readable, label: string, limits: DownloadLimits): Readable {
  const limiter = new Limiter(label, limits);
  source.on('error', (err) => limiter.destroy(err));
  limiter.on('close', () => source.destroy());
  return source.pipe(limiter);
}

/**
 * Streams one NDJSON file from the source to a work file of ours, within the limits, checking each
 * line (JSON, no prototype keys, the expected type, then `check`, which throws to refuse it) before
 * it is written. The file name is the caller's: nothing the source sends names a file.
 * With `derived`, what `check` returns for a line (if anything) is written as one line of that second
 * file: the caller's own form of the record, made in the same pass, so nothing is parsed twice.
 */
export async function downloadTo(source: Readable, file: string, opts: { label: string; expectedType: string; limits: DownloadLimits; check: LineCheck; derived?: string }): Promise<Downloaded> {
  return writeChecked(limited(source, opts.label, opts.limits), file, { ...opts, maxLineLength: opts.limits.maxLineLength });
}

/** Checks one record (throws to refuse it); answers the line to write to the derived file, if any. */
export type LineCheck = (resource: Record<string, unknown>, line: number) => string | void;

/** The checking and writing half of `downloadTo`, for bytes already within the limits (on this thread or the record checker's). */
export async function writeChecked(bytes: Readable, file: string, opts: { label: string; expectedType: string; maxLineLength: number; check: LineCheck; derived?: string }): Promise<Downloaded> {
  const out = new LineWriter(file);
  const derived = opts.derived ? new LineWriter(opts.derived) : undefined;
  const hash = createHash('sha1');
  let count = 0;
  let size = 0;
  try {
    for await (const { resource, raw, line } of readResources(bytes, { expectedType: opts.expectedType, maxLineLength: opts.maxLineLength, label: opts.label })) {
      const mine = opts.check(resource, line);
      const text = `${raw}\n`;
      hash.update(text);
      size += Buffer.byteLength(text);
      count++;
      await out.write(text);
      if (derived && mine !== undefined) await derived.write(`${mine}\n`);
    }
  } finally {
    bytes.destroy();
    await Promise.all([out.end(), derived?.end()]);
  }
  return { count, size, sha1: hash.digest('base64') };
}

/** A work file written line by line, honouring back-pressure; a write error fails the next write. */
class LineWriter {
  private readonly out: fs.WriteStream;
  private readonly failed: Promise<never>;

  constructor(file: string) {
    this.out = fs.createWriteStream(file, { flags: 'w', mode: 0o600 });
    this.failed = new Promise<never>((_resolve, reject) => this.out.once('error', reject));
    this.failed.catch(() => undefined);
  }

  async write(text: string): Promise<void> {
    if (!this.out.write(text)) await Promise.race([once(this.out, 'drain'), this.failed]);
  }

  end(): Promise<void> {
    return new Promise<void>((resolve) => this.out.end(() => resolve()));
  }
}

/** Checks a received resource is valid FHIR R4 of the file's type; a refusal names the file and the line. */
export function validateReceived(resource: Record<string, unknown>, expectedType: string, label: string, line: number): void {
  try {
    validateResource(resource, expectedType);
  } catch (err) {
    // The validator's message names the source's elements: made safe like any of its text.
    if (err instanceof FhirError) throw new ExchangeFailed(`${label} line ${line} is not valid FHIR R4: ${sourceText(err.message, 200)}`);
    throw err;
  }
}

/** What an OperationOutcome of the source's error files says, short and made safe (source-text.ts): the Task's `source-error` outputs. */
export function sourceErrorOf(outcome: Record<string, unknown>): string {
  const issue = Array.isArray(outcome.issue) ? (outcome.issue[0] as { code?: unknown; diagnostics?: unknown; details?: { text?: unknown } } | undefined) : undefined;
  const text = issue?.diagnostics ?? issue?.details?.text;
  const code = fhirCode(issue?.code);
  return text === undefined ? (code ?? 'unspecified error') : sourceText(text, 300);
}
