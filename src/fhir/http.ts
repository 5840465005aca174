import type { NextFunction, Request, RequestHandler, Response } from 'express';
import { badRequest } from './outcome';

/** Express 4 does not catch rejected promises: route every async handler's failure to the error handler. */
export function asyncHandler(fn: (req: Request, res: Response, next: NextFunction) => Promise<unknown>): RequestHandler {
  return (req, res, next) => {
    fn(req, res, next).catch(next);
  };
}

export const FHIR_JSON = 'application/fhir+json; charset=utf-8';

/**
 * Sends a FHIR resource with the FHIR media type, written directly: Express's `send` re-parses the
 * media type and checks cache freshness on every call, a sixth of a read (conditional reads are
 * answered by `notModified`).
 */
export function sendResource(res: Response, status: number, body: unknown): void {
  sendJsonText(res, status, JSON.stringify(body));
}

/** Sends JSON text already made (a stored resource as it is) with the FHIR media type. */
export function sendJsonText(res: Response, status: number, text: string): void {
  res.statusCode = status;
  res.setHeader('Content-Type', FHIR_JSON);
  res.setHeader('Content-Length', Buffer.byteLength(text));
  // As text, Node writes the head and the body in one piece.
  res.end(text);
}

const httpDates = new Map<number, string>();

/** A time as an HTTP date (`Last-Modified`), remembered: the same versions are read again and again. */
export function httpDate(time: Date): string {
  const ms = time.getTime();
  let text = httpDates.get(ms);
  if (text === undefined) {
    text = time.toUTCString();
    if (httpDates.size >= 1000) httpDates.clear();
    httpDates.set(ms, text);
  }
  return text;
}

/** `Prefer: handling=strict` asks for 400 on unknown search parameters instead of a warning. */
export function preferStrict(req: Request): boolean {
  return /handling\s*=\s*strict/i.test(req.get('prefer') ?? '');
}

/**
 * A conditional read (RFC 9110 §13.1.2, §13.1.3): whether the client's copy, named by If-None-Match
 * (weak comparison of entity tags, or `*`) or else by If-Modified-Since, is the current version.
 * An origin server evaluates these whatever Cache-Control the request carries.
 */
export function notModified(req: Request, etag: string, lastModified: Date): boolean {
  const noneMatch = req.headers['if-none-match'];
  if (noneMatch !== undefined) {
    const opaque = (tag: string) => tag.trim().replace(/^W\//, '');
    return noneMatch.trim() === '*' || noneMatch.split(',').some((tag) => opaque(tag) === opaque(etag));
  }
  const since = req.headers['if-modified-since'];
  if (since === undefined) return false;
  const at = Date.parse(since);
  // HTTP dates have whole seconds: the version is unmodified if it is no later than that second.
  return !Number.isNaN(at) && Math.floor(lastModified.getTime() / 1000) * 1000 <= at;
}

/** What an If-Match header asks: any current version (`*`), or one of the listed versions. */
export type IfMatch = '*' | string[];

const ENTITY_TAG = /^(?:W\/)?"([\x21\x23-\x7e\x80-\xff]*)"$/;

/**
 * Parses If-Match per RFC 9110 §13.1.1: `*`, or a comma-separated list of entity tags, weak or
 * strong (`W/"3"`, `"3"`); FHIR's versions are weak tags, compared by their opaque value. Anything
 * else is a 400, so a malformed precondition never lets a write land unchecked.
 */
export function parseIfMatch(value: string | undefined): IfMatch | undefined {
  if (value === undefined) return undefined;
  const trimmed = value.trim();
  if (trimmed === '*') return '*';
  const tags = trimmed.split(',').map((t) => t.trim());
  const versions: string[] = [];
  for (const tag of tags) {
    const m = tag.match(ENTITY_TAG);
    if (!m) throw badRequest(`If-Match must be * or a list of entity tags such as W/"3", got '${value}'`);
    versions.push(m[1]);
  }
  return versions;
}

/** Whether a request carries a body (RFC 9112: a Transfer-Encoding, or a Content-Length above 0). */
export function hasBody(req: Request): boolean {
  return req.headers['transfer-encoding'] !== undefined || (req.headers['content-length'] !== undefined && req.headers['content-length'] !== '0');
}
