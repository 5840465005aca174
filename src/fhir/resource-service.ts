import type { Request } from 'express';
import type { Bundle, Resource } from 'fhir/r4';
import { ResourceStore, WriteResult } from '../store/resource-store';
import { SearchRegistry } from './search/registry';
import { parseSearch, RawQuery } from './search/query';
import { includedFor, withJoins } from './search/joins';
import { historyBundle, searchBundle, searchBundleText } from './bundle';
import { badRequest, FhirError, notFound, preconditionFailed, unprocessable } from './outcome';
import * as jsonPatch from 'fast-json-patch';
import { ID_PATTERN, SERVER_WRITTEN_TYPES } from './resource-types';
import { validateResource } from './validator';
import { parseIfMatch, preferStrict } from './http';
import { parseHistoryQuery, visibleHistory } from './history-query';
import { INTERNAL_PREFIX, internalMarkers, sameInternalMarkers } from './internal-markers';
import { AccessPolicy, AccessScope } from '../access/access-policy';
import type { DisclosureInteraction } from '../audit/audit-log';
import { MAX_JSON_DEPTH, nestsDeeperThan } from './json-limits';

export interface ResourceServiceDeps {
  store: ResourceStore;
  registry: SearchRegistry;
  access: AccessPolicy;
  defaultPageSize: number;
  maxPageSize: number;
  /** The FHIR base URL for links in answers to this request. */
  baseUrl: (req: Request) => string;
  /** Told after a resource of this type is written or deleted (undefined), e.g. to keep grants in step with Consents. */
  onChange?: (id: string, resource: Resource | undefined) => Promise<void>;
  /** Asked before a client updates (or deletes: `incoming` undefined) an existing resource; throws to refuse. */
  beforeWrite?: (existing: Resource, incoming: Resource | undefined) => void;
  /** Told what a partner client read or found, on every read path (the audit trail of disclosures). */
  onPartnerRead?: (req: Request, interaction: DisclosureInteraction, type: string, resources: Resource[]) => Promise<void>;
}

interface CoreArgs {
  base_version?: string;
  id?: string;
  version_id?: string;
}
interface CoreContext {
  req: Request;
}

/** At most this many operations in one JSON Patch. */
export const MAX_PATCH_OPERATIONS = 1000;
const PATCH_OPS = new Set(['add', 'remove', 'replace', 'move', 'copy', 'test']);
/** Path segments no FHIR element has, which reach an object's prototype in JavaScript. */
const PROTOTYPE_SEGMENTS = new Set(['__proto__', 'constructor', 'prototype']);

/** A JSON Pointer's segments (RFC 6901), or undefined if it is not one. */
function pointerSegments(pointer: unknown): string[] | undefined {
  if (typeof pointer !== 'string' || (pointer !== '' && !pointer.startsWith('/'))) return undefined;
  return pointer === '' ? [] : pointer.slice(1).split('/').map((s) => s.replace(/~1/g, '/').replace(/~0/g, '~'));
}

/**
 * A JSON Patch (RFC 6902) as this server applies it: a list of well-formed operations (else 400),
 * none reaching an object's prototype or moving a value into its own child (else 422).
 */
function checkedPatch(body: unknown): jsonPatch.Operation[] {
  if (!Array.isArray(body) || body.length === 0) throw badRequest('A PATCH body is a JSON Patch: a non-empty list of operations');
  if (body.length > MAX_PATCH_OPERATIONS) throw badRequest(`A JSON Patch may have at most ${MAX_PATCH_OPERATIONS} operations`);
  body.forEach((op: unknown, i) => {
    const at = `JSON Patch operation ${i + 1}`;
    if (!op || typeof op !== 'object' || Array.isArray(op)) throw badRequest(`${at} is not an object`);
    const o = op as Record<string, unknown>;
    if (typeof o.op !== 'string' || !PATCH_OPS.has(o.op)) throw badRequest(`${at}: 'op' must be one of ${[...PATCH_OPS].join(', ')}`);
    const path = pointerSegments(o.path);
    if (!path) throw badRequest(`${at}: 'path' must be a JSON Pointer ('' or starting with '/')`);
    const from = o.op === 'move' || o.op === 'copy' ? pointerSegments(o.from) : [];
    if (!from) throw badRequest(`${at}: '${o.op}' needs 'from', a JSON Pointer`);
    if ((o.op === 'add' || o.op === 'replace' || o.op === 'test') && !('value' in o)) throw badRequest(`${at}: '${o.op}' needs a 'value'`);
    if ([...path, ...from].some((s) => PROTOTYPE_SEGMENTS.has(s))) throw unprocessable(`${at}: the path segments ${[...PROTOTYPE_SEGMENTS].join(', ')} are refused (no FHIR element has them)`);
    if (o.op === 'move' && (o.path as string).startsWith(`${o.from as string}/`)) throw unprocessable(`${at}: a value cannot be moved into its own child`);
  });
  return body as jsonPatch.Operation[];
}

function checkId(type: string, id: string | undefined): string {
  if (!id || !ID_PATTERN.test(id)) throw notFound(`${type}/${id ?? ''} is not known`);
  return id;
}

/** Elements a client asked for with _elements, plus the mandatory ones. */
function subset(resource: Resource, elements: string[]): Resource {
  const keep = new Set(['resourceType', 'id', 'meta', ...elements]);
  const out = Object.fromEntries(Object.entries(resource).filter(([k]) => keep.has(k))) as Resource;
  out.meta = { ...(out.meta ?? {}), tag: [...(out.meta?.tag ?? []), { system: 'http://terminology.hl7.org/CodeSystem/v3-ObservationValue', code: 'SUBSETTED' }] };
  return out;
}

/** A client may send back unchanged the server's own codes and identifiers, never add or alter them. */
function checkInternalMarkers(type: string, incoming: Resource, existing: Resource | undefined): void {
  if (existing ? sameInternalMarkers(incoming, existing) : internalMarkers(incoming).length === 0) return;
  throw badRequest(`${type}: codes and identifiers under ${INTERNAL_PREFIX} are set by this server only; send them back unchanged or not at all`);
}

/**
 * One generic service for every resource type, in the shape node-fhir-server-core expects of a
 * profile's service (its function names decide which interactions the core routes and advertises).
 * Every read goes through the caller's access scope: a resource the caller may not see is 404, as
 * one that does not exist, and is absent from searches and histories.
 */
export function createResourceService(type: string, deps: ResourceServiceDeps) {
  const { store, registry } = deps;
  const scopeOf = (req: Request) => deps.access.scopeFor(req.access);
  /** The audit trail is written by the server alone. */
  const serverWrittenOnly = () => {
    if (SERVER_WRITTEN_TYPES.includes(type)) throw new FhirError(405, 'not-supported', `${type} resources are written by this server only`);
  };
  const hidden = () => notFound(`${type} is not known`);

  /** The current version if the caller may see it; a hidden or deleted one is 404 to a partner. */
  async function visible(scope: AccessScope, id: string): Promise<Resource> {
    let resource: Resource;
    try {
      resource = await store.read(type, id);
    } catch (err) {
      if (scope.members && err instanceof FhirError && err.status === 410) throw notFound(`${type}/${id} is not known`);
      throw err;
    }
    if (!scope.canSee(resource)) throw notFound(`${type}/${id} is not known`);
    return resource;
  }

  /** A read of the current version by a caller in `scope`; a partner's read is told to `onPartnerRead`. */
  async function readAs(scope: AccessScope, req: Request, id: string | undefined): Promise<Resource> {
    const resource = await visible(scope, checkId(type, id));
    if (scope.members) await deps.onPartnerRead?.(req, 'read', type, [resource]);
    return scope.view(resource);
  }

  /** A search of this type by the request's caller: its Bundle, or the Bundle's text when `asText` and the search is plain. */
  async function runSearch(req: Request, asText: boolean): Promise<Bundle | string> {
    const scope = await scopeOf(req);
    const query = (req.method === 'POST' ? { ...req.query, ...(req.body ?? {}) } : req.query) as RawQuery;
    const sr = parseSearch(registry, type, query, {
      strict: preferStrict(req),
      defaultCount: deps.defaultPageSize,
      maxCount: deps.maxPageSize,
    });
    const base = deps.baseUrl(req);
    const page = { base, type, selfParams: sr.applied, offset: sr.offset, count: sr.count, warnings: sr.warnings };
    const restriction = scope.filter(type);
    const joined = restriction === null ? sr.filter : await withJoins({ registry, store, scope }, type, sr.filter, sr.joins);
    const filter = restriction === null ? null : Object.keys(restriction).length ? { $and: [joined, restriction] } : joined;
    if (sr.summaryCount) {
      const total = filter ? await store.count(type, filter) : 0;
      return searchBundle({ ...page, resources: [], total, offset: 0, count: 0, hasMore: false });
    }
    const total = filter && sr.total === 'accurate' ? store.count(type, filter) : Promise.resolve(sr.total === 'accurate' ? 0 : undefined);
    const pageOpts = { sort: sr.sort, skip: sr.offset, limit: sr.count + 1 };
    // Every match is visible to such a caller, and sent whole: its stored text will do.
    if (asText && !scope.members && !sr.elements && sr.includes.length === 0 && filter) {
      const [found, n] = await Promise.all([sr.count === 0 ? Promise.resolve([]) : store.searchTexts(type, filter, pageOpts), total]);
      return searchBundleText({ ...page, matches: found.slice(0, sr.count), total: n, hasMore: found.length > sr.count });
    }
    const [found, n] = await Promise.all([sr.count === 0 || !filter ? Promise.resolve([]) : store.search(type, filter, pageOpts), total]);
    const hasMore = found.length > sr.count;
    let resources = found.slice(0, sr.count).filter((r) => scope.canSee(r)).map((r) => scope.view(r));
    const included = await includedFor({ registry, store, scope }, resources, sr.includes);
    if (scope.members && resources.length + included.length > 0) await deps.onPartnerRead?.(req, 'search', type, [...resources, ...included]);
    if (sr.elements) resources = resources.map((r) => subset(r, sr.elements as string[]));
    return searchBundle({ ...page, resources, included, total: n, hasMore });
  }

  const service = {
    /** The CapabilityStatement entry for this type: what is really served. */
    makeResource: () => ({
      type,
      profile: `http://hl7.org/fhir/StructureDefinition/${type}`,
      versioning: 'versioned-update',
      readHistory: true,
      updateCreate: true,
      conditionalCreate: true,
      conditionalRead: 'full-support',
      conditionalUpdate: true,
      conditionalDelete: 'single',
      searchParam: [...registry.params(type).values()].map((p) => ({ name: p.code, definition: p.url, type: p.type })),
    }),

    searchById: async (args: CoreArgs, { req }: CoreContext) => readAs(await scopeOf(req), req, args.id),

    /**
     * The current version as JSON text with its versionId and time, for the read route: a caller
     * who sees every member gets the stored text as it is; a partner's read goes through its scope
     * as `searchById` does.
     */
    readText: async (args: CoreArgs, { req }: CoreContext): Promise<{ text: string; versionId: string; lastUpdated: Date }> => {
      const scope = await scopeOf(req);
      if (!scope.members) return store.readText(type, checkId(type, args.id));
      const resource = await readAs(scope, req, args.id);
      return { text: JSON.stringify(resource), versionId: String(resource.meta?.versionId), lastUpdated: new Date(resource.meta?.lastUpdated ?? Date.now()) };
    },

    searchByVersionId: async (args: CoreArgs, { req }: CoreContext) => {
      const scope = await scopeOf(req);
      const id = checkId(type, args.id);
      if (scope.members) await visible(scope, id);
      const version = await store.vread(type, id, String(args.version_id ?? '')).catch((err) => {
        throw scope.members && err instanceof FhirError && err.status === 410 ? hidden() : err;
      });
      if (!scope.canSee(version)) throw hidden();
      if (scope.members) await deps.onPartnerRead?.(req, 'vread', type, [version]);
      return scope.view(version);
    },

    search: async (_args: CoreArgs, { req }: CoreContext): Promise<Bundle> => (await runSearch(req, false)) as Bundle,

    /**
     * The search's Bundle as JSON text. A plain search (no _elements, nothing included) by a caller
     * who sees every member puts each match in as stored; any other is the `search` Bundle serialised.
     */
    searchText: async (_args: CoreArgs, { req }: CoreContext): Promise<string> => {
      const found = await runSearch(req, true);
      return typeof found === 'string' ? found : JSON.stringify(found);
    },

    history: async (_args: CoreArgs, { req }: CoreContext) => {
      const scope = await scopeOf(req);
      if (!scope.members) return historyFor(scope, req, {});
      // A partner's type history is the history of the resources it may see now.
      const restriction = scope.filter(type);
      const ids: string[] = [];
      if (restriction) for await (const r of store.stream(type, restriction)) ids.push(r.id as string);
      return historyFor(scope, req, { ids });
    },

    historyById: async (args: CoreArgs, { req }: CoreContext) => {
      const scope = await scopeOf(req);
      const id = checkId(type, args.id);
      if (scope.members) await visible(scope, id);
      const result = await historyFor(scope, req, { id });
      if (result.total === 0) throw notFound(`${type}/${id} is not known`);
      return result;
    },

    /** A resource as it may be created: valid, and without the server's markers. */
    checkCreate(body: unknown): Resource {
      serverWrittenOnly();
      const resource = validateResource(body, type);
      checkInternalMarkers(type, resource, undefined);
      return resource;
    },

    /** A resource as it may replace `existing` (or be created at `id`): valid, the id the URL's, the type's rules kept. */
    checkUpdate(id: string, body: unknown, existing: Resource | undefined): Resource {
      serverWrittenOnly();
      const resource = validateResource(body, type);
      if (resource.id !== id) throw badRequest(`The body's id (${resource.id ?? 'none'}) must equal the id in the URL (${id})`, [`${type}.id`]);
      if (existing) deps.beforeWrite?.(existing, resource);
      checkInternalMarkers(type, resource, existing);
      return resource;
    },

    /** Whether `existing` may be deleted (the type's rules). */
    checkDelete(existing: Resource): void {
      serverWrittenOnly();
      deps.beforeWrite?.(existing, undefined);
    },

    /** To be told after a write (or a deletion: undefined) landed. */
    changed: async (id: string, resource: Resource | undefined) => deps.onChange?.(id, resource),

    /** The ids of the resources a conditional interaction's search selects (at most `limit`, to tell one from several). */
    async matching(req: Request, query: RawQuery, limit = 2): Promise<string[]> {
      const sr = parseSearch(registry, type, query, { strict: true, defaultCount: limit, maxCount: limit });
      if (sr.applied.filter(([k]) => !k.startsWith('_count')).length === 0) throw badRequest('A conditional interaction needs search criteria');
      const scope = await scopeOf(req);
      const restriction = scope.filter(type);
      if (restriction === null) return [];
      const filter = await withJoins({ registry, store, scope }, type, sr.filter, sr.joins);
      const found = await store.search(type, { $and: [filter, restriction] }, { sort: { _id: 1 }, limit });
      return found.map((r) => r.id as string);
    },

    create: async (_args: CoreArgs, { req }: CoreContext): Promise<WriteResult> => {
      const resource = service.checkCreate(req.body);
      const { id: _ignored, ...rest } = resource;
      const created = await store.create(rest as Resource);
      await deps.onChange?.(created.id as string, created);
      return { resource: created, created: true };
    },

    update: async (args: CoreArgs, { req }: CoreContext): Promise<WriteResult> => {
      const id = args.id ?? '';
      if (!ID_PATTERN.test(id)) throw badRequest(`Invalid resource id '${id}'`);
      const ifMatch = parseIfMatch(req.get('if-match'));
      const existing = await store.readIfExists(type, id);
      // A stale copy is a version conflict before anything else is judged.
      if (existing && Array.isArray(ifMatch) && !ifMatch.includes(existing.meta?.versionId as string)) {
        throw preconditionFailed(`Version conflict: ${type}/${id} is at version ${existing.meta?.versionId}, If-Match named ${ifMatch.join(', ')}`);
      }
      const resource = service.checkUpdate(id, req.body, existing);
      // Where the server's markers are at stake, the write lands only on the version they were checked against.
      const pinned = existing && internalMarkers(existing).length ? [existing.meta?.versionId as string] : undefined;
      const result = await store.update(type, id, resource, ifMatch ?? pinned);
      await deps.onChange?.(id, result.resource);
      return result;
    },

    /** PATCH with a JSON Patch (RFC 6902): applied to the current version, checked as an update, landing only on that version. */
    patch: async (id: string, req: Request): Promise<WriteResult> => {
      const ifMatch = parseIfMatch(req.get('if-match'));
      const existing = await visible(await scopeOf(req), checkId(type, id));
      if (Array.isArray(ifMatch) && !ifMatch.includes(existing.meta?.versionId as string)) {
        throw preconditionFailed(`Version conflict: ${type}/${id} is at version ${existing.meta?.versionId}, If-Match named ${ifMatch.join(', ')}`);
      }
      const operations = checkedPatch(req.body);
      let patched: Resource;
      try {
        const patchError = jsonPatch.validate(operations, existing);
        if (patchError) throw patchError;
        patched = jsonPatch.applyPatch(structuredClone(existing), operations, true, false).newDocument;
      } catch (err) {
        // Whatever fast-json-patch throws (a failed test, an index out of range, a path that does not resolve) is the patch's fault.
        throw unprocessable(`The JSON Patch cannot be applied: ${String((err as Error)?.message ?? err).split('\n')[0]}`);
      }
      if (nestsDeeperThan(patched)) throw unprocessable(`The patched ${type} nests deeper than ${MAX_JSON_DEPTH} levels`);
      const resource = service.checkUpdate(id, patched, existing);
      const result = await store.update(type, id, resource, [existing.meta?.versionId as string]);
      await deps.onChange?.(id, result.resource);
      return result;
    },

    remove: async (args: CoreArgs) => {
      serverWrittenOnly();
      const id = checkId(type, args.id);
      const existing = deps.beforeWrite ? await store.readIfExists(type, id) : undefined;
      if (existing) deps.beforeWrite?.(existing, undefined);
      const version = await store.delete(type, id);
      await deps.onChange?.(id, undefined);
      return version ? { deleted: `W/"${version}"` } : {};
    },
  };

  async function historyFor(scope: AccessScope, req: Request, which: { id?: string; ids?: string[] }) {
    const { count, offset, since } = parseHistoryQuery(req.query as Record<string, unknown>, deps.defaultPageSize, deps.maxPageSize);
    if (!scope.members) {
      const { entries, total } = await store.historyOf(type, which.id, { since, count, offset, ids: which.ids });
      return historyBundle(deps.baseUrl(req), entries, total);
    }
    // A partner sees, and counts, the versions it may see; a deletion carries no data.
    const { entries, total } = await visibleHistory(store, type, which, { since, offset, count }, (e) => (e.resource ? scope.canSee(e.resource) : !!which.id));
    const disclosed = entries.flatMap((e) => (e.resource ? [e.resource] : []));
    if (disclosed.length) await deps.onPartnerRead?.(req, which.id ? 'history-instance' : 'history-type', type, disclosed);
    return historyBundle(deps.baseUrl(req), entries.map((e) => (e.resource ? { ...e, resource: scope.view(e.resource) } : e)), total);
  }

  return service;
}

export type ResourceService = ReturnType<typeof createResourceService>;
