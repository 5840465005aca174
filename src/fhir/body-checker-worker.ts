import { parentPort } from 'node:worker_threads';
import type { BodyVerdict } from './body-checker';
import { buildSearchIndex, IndexLimitExceeded, IndexLimits } from './search/index-values';
import { SearchRegistry } from './search/registry';
import { RESOURCE_TYPES } from './resource-types';
import { MAX_JSON_DEPTH, nestsDeeperThan } from './json-limits';

/** The body checker's thread: each message is one request body, answered with its verdict. */
const port = parentPort as NonNullable<typeof parentPort>;
const registry = new SearchRegistry(RESOURCE_TYPES);
const decoder = new TextDecoder('utf-8');

class Refused extends Error {
  constructor(readonly status: number, readonly code: string, message: string) {
    super(message);
  }
}

/** As the main thread's JSON reviver: no key that reaches an object's prototype. */
function noProto(key: string, value: unknown): unknown {
  if (key === '__proto__' || (key === 'constructor' && value && typeof value === 'object' && 'prototype' in value)) throw new SyntaxError('The body contains a forbidden key');
  return value;
}

/** The resources of a body whose search index would be written: the resource, or a Bundle's entries (and the Bundle). */
function indexed(body: Record<string, unknown>): Record<string, unknown>[] {
  if (body.resourceType === 'Parameters') return [];
  const out = [body];
  if (body.resourceType === 'Bundle' && Array.isArray(body.entry)) {
    for (const e of body.entry) {
      const r = (e as { resource?: unknown })?.resource;
      if (r && typeof r === 'object' && typeof (r as { resourceType?: unknown }).resourceType === 'string') out.push(r as Record<string, unknown>);
    }
  }
  return out;
}

function verdict(id: number, bytes: Uint8Array, limits: IndexLimits): BodyVerdict {
  let body: unknown;
  try {
    body = JSON.parse(decoder.decode(bytes), noProto);
  } catch (err) {
    return { id, ok: false, kind: 'parse', message: (err as Error).message };
  }
  try {
    if (nestsDeeperThan(body)) throw new Refused(400, 'invalid', `The body nests deeper than ${MAX_JSON_DEPTH} levels`);
    if (body && typeof body === 'object' && !Array.isArray(body) && typeof (body as { resourceType?: unknown }).resourceType === 'string') {
      for (const r of indexed(body as Record<string, unknown>)) buildSearchIndex(registry, r, limits);
    }
    return { id, ok: true };
  } catch (err) {
    if (err instanceof Refused) return { id, ok: false, kind: 'fhir', status: err.status, code: err.code, message: err.message };
    if (err instanceof IndexLimitExceeded) return { id, ok: false, kind: 'fhir', status: 422, code: 'too-costly', message: `${err.message}; nothing was written` };
    // Anything else is for the main thread to judge, as it would for a small body.
    return { id, ok: true };
  }
}

port.on('message', (m: { id: number; bytes: Uint8Array; limits: IndexLimits }) => port.postMessage(verdict(m.id, m.bytes, m.limits)));
