import { RemoteError } from './remote-payer-client';
import { NdjsonError } from './ndjson';

/** The exchange cannot succeed: it fails with this message as the Task's statusReason; `logText` (the message unless given) is what the log says. */
export class ExchangeFailed extends Error {
  readonly logText: string;
  constructor(message: string, logText?: string) {
    super(message);
    this.logText = logText ?? message;
  }
}

/** Data from the source that this server refuses to store (another person's record, a reference to a local patient…). */
export class ImportRefused extends ExchangeFailed {}

/** A limit was reached (bytes, time, pages): the exchange fails saying which. */
export class LimitReached extends ExchangeFailed {}

/** `reason` is what the Task shows (a source's text in it made safe, source-text.ts); `logReason` what a log line may say (never a source's free text). */
export type Classified = { kind: 'transient'; reason: string; logReason: string; status?: number } | { kind: 'failed'; reason: string; logReason: string; expected: boolean };

/**
 * The one place an exchange's errors are judged: a transient fault at the source (network, 429,
 * 5xx) is worth another try later; everything else ends the exchange, with the reason the Task
 * shows. An unexpected error is reported as an internal error, its detail kept for the log.
 */
export function classify(err: unknown): Classified {
  if (err instanceof RemoteError) return err.transient ? { kind: 'transient', reason: err.message, logReason: err.logText, status: err.status } : { kind: 'failed', reason: err.message, logReason: err.logText, expected: true };
  if (err instanceof ExchangeFailed) return { kind: 'failed', reason: err.message, logReason: err.logText, expected: true };
  if (err instanceof NdjsonError) return { kind: 'failed', reason: err.message, logReason: err.message, expected: true };
  return { kind: 'failed', reason: 'internal error', logReason: 'internal error', expected: false };
}
