import type { ParametersParameter } from 'fhir/r4';
import { patientIdOf } from '../fhir/reference';
import { badRequest, forbidden } from '../fhir/outcome';
import { parseInstant } from '../fhir/search/fhir-date';
import { parseSearch } from '../fhir/search/query';
import { SearchRegistry } from '../fhir/search/registry';
import { isServedType } from '../fhir/resource-types';
import { allows } from '../auth/scopes';
import { Filter } from '../store/types';

export type ExportLevel = 'system' | 'patient' | 'group';

/** A validated bulk export request, as stored in the export job. */
export interface ExportRequest {
  level: ExportLevel;
  /** Patient ids named by the request (Patient/{id}/$export or `patient`); undefined means all. */
  patientIds?: string[];
  groupId?: string;
  types: string[];
  since?: number;
  until?: number;
  /** $davinci-data-export: members asked for but not exported (not in the Group, no consent in force) are reported in an OperationOutcome file. */
  reportWithheld?: boolean;
  /** $davinci-data-export: only data with a date of service on or after this (epoch ms); see service-window.ts. */
  serviceFrom?: number;
  /** Per type, the _typeFilter queries (a resource passes if it matches any); checked at kick-off, compiled by the job. */
  typeFilters: Record<string, string[]>;
}

const FORMATS = new Set(['application/fhir+ndjson', 'application/ndjson', 'ndjson']);
const KNOWN = new Set(['_outputFormat', '_since', '_until', '_type', '_typeFilter', 'patient']);
const UNSUPPORTED = new Set(['_elements', 'includeAssociatedData', 'organizeOutputBy', 'allowPartialManifests']);

/**
 * Kick-off parameters from a GET query or a POST Parameters body, as name → values. A POST needs a
 * Parameters body (Bulk Data); anything else, or a malformed part, is a 400.
 */
export function kickoffParams(method: string, query: Record<string, unknown>, body: unknown, hasBody: boolean): Map<string, string[]> {
  const out = new Map<string, string[]>();
  const add = (k: string, v: string) => out.set(k, [...(out.get(k) ?? []), v]);
  for (const [k, v] of Object.entries(query)) for (const x of Array.isArray(v) ? v : [v]) if (typeof x === 'string') add(k, x);
  if (method !== 'POST') return out;
  if (!hasBody || !body || typeof body !== 'object' || Array.isArray(body) || (body as { resourceType?: unknown }).resourceType !== 'Parameters') {
    throw badRequest('A POST kick-off needs a Parameters resource as its body');
  }
  const parts = (body as { parameter?: unknown }).parameter;
  if (parts !== undefined && !Array.isArray(parts)) throw badRequest('Parameters.parameter must be a list');
  for (const [i, p] of ((parts ?? []) as unknown[]).entries()) {
    if (!p || typeof p !== 'object' || Array.isArray(p) || typeof (p as { name?: unknown }).name !== 'string') throw badRequest(`Parameters.parameter[${i}] must be an object with a name`, [`Parameters.parameter[${i}]`]);
    const part = p as ParametersParameter;
    const value = part.valueReference?.reference ?? part.valueString ?? part.valueInstant ?? part.valueDateTime ?? part.valueCode ?? part.valueUri ?? part.valueCanonical ?? (part.valueBoolean !== undefined ? String(part.valueBoolean) : undefined);
    if (typeof value !== 'string') throw badRequest(`Parameter '${part.name}' has no value of a type the export takes`, [`Parameters.parameter[${i}]`]);
    add(part.name, value);
  }
  return out;
}

export function parseExportRequest(args: {
  level: ExportLevel;
  method: string;
  params: Map<string, string[]>;
  lenient: boolean;
  registry: SearchRegistry;
  defaultTypes: string[];
  scope: string;
  id?: string;
  /** `patient` names a subset of the Group's members ($davinci-data-export). */
  memberSubset?: boolean;
}): ExportRequest {
  const { params, lenient } = args;
  for (const name of params.keys()) {
    if (UNSUPPORTED.has(name) && !lenient) throw badRequest(`The export parameter '${name}' is not supported (send Prefer: handling=lenient to ignore it)`);
    if (!KNOWN.has(name) && !UNSUPPORTED.has(name) && !lenient) throw badRequest(`Unknown export parameter '${name}'`);
  }
  const format = params.get('_outputFormat')?.[0];
  if (format && !FORMATS.has(format)) throw badRequest(`_outputFormat '${format}' is not supported; use application/fhir+ndjson`);

  let types = (params.get('_type') ?? []).flatMap((t) => t.split(',')).map((t) => t.trim()).filter(Boolean);
  for (const t of types) if (!isServedType(t)) {
    if (!lenient) throw badRequest(`_type names '${t}', which this server does not serve`);
  }
  types = types.filter(isServedType);
  if (types.length > 0) {
    const denied = types.filter((t) => !allows(args.scope, t, 'r'));
    if (denied.length) throw forbidden(`The token's scopes do not allow reading ${denied.join(', ')}`);
  } else {
    types = args.defaultTypes.filter((t) => allows(args.scope, t, 'r'));
  }

  const instant = (name: string): number | undefined => {
    const v = params.get(name)?.[0];
    if (v === undefined) return undefined;
    const at = parseInstant(v);
    if (at === undefined) throw badRequest(`${name} must be a FHIR instant (e.g. 2024-01-01T00:00:00Z), got '${v}'`);
    return at;
  };

  const typeFilters: Record<string, string[]> = {};
  for (const tf of params.get('_typeFilter') ?? []) {
    const i = tf.indexOf('?');
    const type = i < 0 ? tf : tf.slice(0, i);
    if (!isServedType(type)) throw badRequest(`_typeFilter names '${type}', which this server does not serve`);
    const query = i < 0 ? '' : tf.slice(i + 1);
    compileTypeFilter(args.registry, type, query); // a 400 now rather than a failed job later
    typeFilters[type] = [...(typeFilters[type] ?? []), query];
  }

  let patientIds: string[] | undefined;
  const patientParams = params.get('patient') ?? [];
  if (patientParams.length) {
    const subsetOfGroup = args.level === 'group' && args.memberSubset;
    if (!subsetOfGroup && (args.level !== 'patient' || args.method !== 'POST' || args.id)) throw badRequest(`The 'patient' parameter is allowed only in a POST to Patient/$export (or $davinci-data-export)`);
    patientIds = patientParams.map((ref) => {
      const id = patientIdOf(ref);
      if (!id) throw badRequest(`'patient' must reference a Patient, got '${ref}'`);
      return id;
    });
  }
  if (args.level === 'patient' && args.id) patientIds = [args.id];

  return {
    level: args.level,
    patientIds,
    groupId: args.level === 'group' ? args.id : undefined,
    types,
    since: instant('_since'),
    until: instant('_until'),
    typeFilters,
  };
}

/** Compiles one _typeFilter query (`code=x&date=ge2020`) into a store filter; throws a 400 if not servable. */
export function compileTypeFilter(registry: SearchRegistry, type: string, query: string): Filter {
  const params: Record<string, string[]> = {};
  for (const [k, v] of new URLSearchParams(query)) params[k] = [...(params[k] ?? []), v];
  const sr = parseSearch(registry, type, params, { strict: true, defaultCount: 1, maxCount: 1 });
  if (sr.joins.length || sr.includes.length) throw badRequest(`_typeFilter '${type}?${query}': chained parameters, _has and includes are not taken in an export`);
  return sr.filter;
}
