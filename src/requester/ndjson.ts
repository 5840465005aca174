import type { Readable } from 'node:stream';
import split2 from 'split2';
import { MAX_JSON_DEPTH, nestsDeeperThan } from '../fhir/json-limits';

export class NdjsonError extends Error {}

class ForbiddenKey extends Error {}

/** Keys that reach an object's prototype are refused in data from a source, as they are on REST. */
function noProto(key: string, value: unknown): unknown {
  if (key === '__proto__' || (key === 'constructor' && value && typeof value === 'object' && 'prototype' in value)) throw new ForbiddenKey(key);
  return value;
}

/**
 * Reads NDJSON resources from a stream, checking each line: valid JSON, a resource of the
 * expected type, under the size limit. Yields `{ line, resource, raw }`; throws NdjsonError naming the line.
 */
export async function* readResources(stream: Readable, opts: { expectedType?: string; maxLineLength: number; label: string }): AsyncGenerator<{ line: number; resource: { resourceType: string; id?: string } & Record<string, unknown>; raw: string }> {
  const lines = stream.pipe(split2({ maxLength: opts.maxLineLength } as split2.Options));
  stream.on('error', (err) => lines.destroy(err));
  let n = 0;
  try {
    for await (const raw of lines as AsyncIterable<string>) {
      n++;
      if (raw.trim() === '') continue;
      let resource: unknown;
      try {
        // The reviver costs several times the parse: only a line that mentions such a key needs it.
        resource = raw.includes('__proto__') || raw.includes('constructor') ? JSON.parse(raw, noProto) : JSON.parse(raw);
      } catch (err) {
        if (err instanceof ForbiddenKey) throw new NdjsonError(`${opts.label} line ${n} holds the forbidden key '${err.message}'`);
        throw new NdjsonError(`${opts.label} line ${n} is not valid JSON (truncated or corrupt file)`);
      }
      if (nestsDeeperThan(resource)) throw new NdjsonError(`${opts.label} line ${n} nests deeper than ${MAX_JSON_DEPTH} levels`);
      const r = resource as { resourceType?: unknown; id?: unknown };
      if (!r || typeof r !== 'object' || typeof r.resourceType !== 'string') throw new NdjsonError(`${opts.label} line ${n} is not a FHIR resource`);
      if (opts.expectedType && r.resourceType !== opts.expectedType) throw new NdjsonError(`${opts.label} line ${n} is ${/^[A-Z][A-Za-z]{0,63}$/.test(r.resourceType) ? `a ${r.resourceType}` : 'not a FHIR resource type'}, expected ${opts.expectedType}`);
      if (r.id !== undefined && (typeof r.id !== 'string' || !/^[A-Za-z0-9\-.]{1,64}$/.test(r.id))) throw new NdjsonError(`${opts.label} line ${n} has an invalid id`);
      yield { line: n, resource: resource as { resourceType: string; id?: string } & Record<string, unknown>, raw };
    }
  } catch (err) {
    if (err instanceof NdjsonError) throw err;
    if (/maximum buffer|maxLength|too long/i.test((err as Error).message)) throw new NdjsonError(`${opts.label} has a line longer than ${opts.maxLineLength} bytes`);
    throw err;
  }
}
