import type { Parameters, ParametersParameter, Resource } from 'fhir/r4';
import { badRequest } from './outcome';

export interface ParamSpec {
  name: string;
  min: 0 | 1;
  max: 1 | '*';
  /** `resource:Patient`, `valueString`, `valueReference`…, or `part` for nested parameters. */
  type: string;
}

export type ReadParams = Map<string, ParametersParameter[]>;

/**
 * Reads a Parameters body against an operation's declared inputs (as an OperationDefinition would):
 * a missing, repeated or wrongly-typed parameter is a 400 that names it.
 */
export function readParameters(body: unknown, specs: ParamSpec[]): ReadParams {
  return readParts(parametersOf(body), specs, 'Parameters');
}

/** The parameters of a body that must be a Parameters resource (else 400). */
export function parametersOf(body: unknown): ParametersParameter[] {
  if (!body || typeof body !== 'object' || (body as Resource).resourceType !== 'Parameters') {
    throw badRequest(`The body must be a Parameters resource`);
  }
  const params = ((body as Parameters).parameter ?? []) as ParametersParameter[];
  if (!Array.isArray(params)) throw badRequest(`Parameters.parameter must be an array`);
  return params;
}

export function readParts(params: ParametersParameter[], specs: ParamSpec[], context: string): ReadParams {
  const out: ReadParams = new Map();
  for (const p of params) {
    if (!p || typeof p.name !== 'string') throw badRequest(`${context}: every parameter needs a name`);
    const spec = specs.find((s) => s.name === p.name);
    if (!spec) throw badRequest(`${context}: unknown parameter '${p.name}'`, [`${context}.${p.name}`]);
    checkType(p, spec, context);
    out.set(p.name, [...(out.get(p.name) ?? []), p]);
  }
  for (const spec of specs) {
    const n = out.get(spec.name)?.length ?? 0;
    if (n < spec.min) throw badRequest(`${context}: parameter '${spec.name}' is required`, [`${context}.${spec.name}`]);
    if (spec.max === 1 && n > 1) throw badRequest(`${context}: parameter '${spec.name}' may appear only once`, [`${context}.${spec.name}`]);
  }
  return out;
}

function checkType(p: ParametersParameter, spec: ParamSpec, context: string) {
  const where = [`${context}.${spec.name}`];
  if (spec.type === 'part') {
    if (!Array.isArray(p.part)) throw badRequest(`${context}: parameter '${spec.name}' must have parts`, where);
    return;
  }
  if (spec.type.startsWith('resource:')) {
    const expected = spec.type.slice('resource:'.length);
    const r = p.resource as Resource | undefined;
    if (!r || typeof r !== 'object') throw badRequest(`${context}: parameter '${spec.name}' must carry a ${expected} resource`, where);
    if (r.resourceType !== expected) throw badRequest(`${context}: parameter '${spec.name}' must be a ${expected}, not a ${String(r.resourceType)}`, where);
    return;
  }
  const value = (p as unknown as Record<string, unknown>)[spec.type];
  if (value === undefined || value === null) {
    const given = Object.keys(p).find((k) => k.startsWith('value')) ?? (p.resource ? 'resource' : 'nothing');
    throw badRequest(`${context}: parameter '${spec.name}' must be a ${spec.type}, got ${given}`, where);
  }
  if (['valueString', 'valueUri', 'valueUrl', 'valueCode', 'valueInstant', 'valueDateTime', 'valueCanonical'].includes(spec.type) && typeof value !== 'string') {
    throw badRequest(`${context}: parameter '${spec.name}' must be a string`, where);
  }
  if (spec.type === 'valueReference' && typeof (value as { reference?: unknown }).reference !== 'string') {
    throw badRequest(`${context}: parameter '${spec.name}' must be a Reference with a reference`, where);
  }
}

export function first<T = unknown>(params: ReadParams, name: string, key: keyof ParametersParameter): T | undefined {
  return params.get(name)?.[0]?.[key] as T | undefined;
}

