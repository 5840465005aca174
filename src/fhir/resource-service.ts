import type { Request } from 'express';
import type { Resource } from 'fhir/r4';
import { ResourceStore, WriteResult } from '../store/resource-store';
import { SearchRegistry } from './search/registry';
import { parseSearch, RawQuery } from './search/query';
import { historyBundle, searchBundle } from './bundle';
import { badRequest, notFound } from './outcome';
import { ID_PATTERN } from './resource-types';
import { validateResource } from './validator';
import { parseETag, preferStrict } from './http';

export interface ResourceServiceDeps {
  store: ResourceStore;
  registry: SearchRegistry;
  defaultPageSize: number;
  maxPageSize: number;
  /** The FHIR base URL for links in answers to this request. */
  baseUrl: (req: Request) => string;
}

interface CoreArgs {
  base_version?: string;
  id?: string;
  version_id?: string;
}
interface CoreContext {
  req: Request;
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

/**
 * One generic service for every resource type, in the shape node-fhir-server-core expects of a
 * profile's service (its function names decide which interactions the core routes and advertises).
 */
export function createResourceService(type: string, deps: ResourceServiceDeps) {
  const { store, registry } = deps;

  const service = {
    /** The CapabilityStatement entry for this type: what is really served. */
    makeResource: () => ({
      type,
      profile: `http://hl7.org/fhir/StructureDefinition/${type}`,
      versioning: 'versioned-update',
      readHistory: true,
      updateCreate: true,
      conditionalCreate: false,
      conditionalUpdate: false,
      conditionalDelete: 'not-supported',
      searchParam: [...registry.params(type).values()].map((p) => ({ name: p.code, definition: p.url, type: p.type })),
    }),

    searchById: async (args: CoreArgs) => store.read(type, checkId(type, args.id)),

    searchByVersionId: async (args: CoreArgs) => store.vread(type, checkId(type, args.id), String(args.version_id ?? '')),

    search: async (_args: CoreArgs, { req }: CoreContext) => {
      const query = (req.method === 'POST' ? { ...req.query, ...(req.body ?? {}) } : req.query) as RawQuery;
      const sr = parseSearch(registry, type, query, {
        strict: preferStrict(req),
        defaultCount: deps.defaultPageSize,
        maxCount: deps.maxPageSize,
      });
      const base = deps.baseUrl(req);
      if (sr.summaryCount) {
        const total = await store.count(type, sr.filter);
        return searchBundle({ base, type, resources: [], total, selfParams: sr.applied, offset: 0, count: 0, hasMore: false, warnings: sr.warnings });
      }
      const [found, total] = await Promise.all([
        sr.count === 0 ? Promise.resolve([]) : store.search(type, sr.filter, { sort: sr.sort, skip: sr.offset, limit: sr.count + 1 }),
        sr.total === 'accurate' ? store.count(type, sr.filter) : Promise.resolve(undefined),
      ]);
      const hasMore = found.length > sr.count;
      let resources = found.slice(0, sr.count);
      if (sr.elements) resources = resources.map((r) => subset(r, sr.elements as string[]));
      return searchBundle({ base, type, resources, total, selfParams: sr.applied, offset: sr.offset, count: sr.count, hasMore, warnings: sr.warnings });
    },

    history: async (_args: CoreArgs, { req }: CoreContext) => historyFor(undefined, req),

    historyById: async (args: CoreArgs, { req }: CoreContext) => {
      const id = checkId(type, args.id);
      const result = await historyFor(id, req);
      if (result.total === 0) throw notFound(`${type}/${id} is not known`);
      return result;
    },

    create: async (_args: CoreArgs, { req }: CoreContext): Promise<WriteResult> => {
      const resource = validateResource(req.body, type);
      const { id: _ignored, ...rest } = resource;
      return { resource: await store.create(rest as Resource), created: true };
    },

    update: async (args: CoreArgs, { req }: CoreContext): Promise<WriteResult> => {
      const id = args.id ?? '';
      if (!ID_PATTERN.test(id)) throw badRequest(`Invalid resource id '${id}'`);
      const resource = validateResource(req.body, type);
      if (resource.id !== id) throw badRequest(`The body's id (${resource.id ?? 'none'}) must equal the id in the URL (${id})`, [`${type}.id`]);
      return store.update(type, id, resource, parseETag(req.get('if-match')));
    },

    remove: async (args: CoreArgs) => {
      const version = await store.delete(type, checkId(type, args.id));
      return version ? { deleted: `W/"${version}"` } : {};
    },
  };

  async function historyFor(id: string | undefined, req: Request) {
    const q = req.query as Record<string, string | undefined>;
    const count = Math.min(Number(q._count) || deps.defaultPageSize, deps.maxPageSize);
    const offset = Number(q._offset) || 0;
    let since: number | undefined;
    if (q._since) {
      since = Date.parse(q._since);
      if (Number.isNaN(since)) throw badRequest(`_since must be an instant, got '${q._since}'`);
    }
    const { entries, total } = await store.historyOf(type, id, { since, count, offset });
    return historyBundle(deps.baseUrl(req), entries, total);
  }

  return service;
}

export type ResourceService = ReturnType<typeof createResourceService>;
