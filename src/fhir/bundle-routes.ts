import { randomUUID } from 'node:crypto';
import { Router, Request } from 'express';
import type { Bundle, BundleEntry, BundleEntryResponse, FhirResource, Resource } from 'fhir/r4';
import { asyncHandler, parseIfMatch, sendResource } from './http';
import { badRequest, FhirError, notFound, preconditionFailed } from './outcome';
import { ID_PATTERN, isServedType } from './resource-types';
import { ResourceService } from './resource-service';
import { ResourceStore, TxWrite } from '../store/resource-store';
import { AUTHENTICATED, Guard } from '../auth/guard';
import type { Action } from '../auth/scopes';

/** At most this many entries in one batch or transaction. */
export const MAX_BUNDLE_ENTRIES = 10_000;

type Method = 'GET' | 'POST' | 'PUT' | 'DELETE';
interface Parsed {
  index: number;
  method: Method;
  type: string;
  id?: string;
  /** The search of a conditional interaction, or of a GET search. */
  query?: Record<string, string[]>;
  fullUrl?: string;
  resource?: Resource;
  ifMatch?: string[] | '*';
  ifNoneExist?: Record<string, string[]>;
  url: string;
}

const ACTIONS: Record<Method, Action> = { GET: 'r', POST: 'c', PUT: 'u', DELETE: 'd' };
const queryOf = (text: string): Record<string, string[]> => {
  const out: Record<string, string[]> = {};
  for (const [k, v] of new URLSearchParams(text)) (out[k] ??= []).push(v);
  return out;
};

/** Reads and checks one entry's request; a malformed one is a 400 naming the entry. */
function parseEntry(entry: unknown, index: number, base: string): Parsed {
  const where = `Bundle.entry[${index}]`;
  if (!entry || typeof entry !== 'object' || Array.isArray(entry)) throw badRequest(`${where} must be an object`, [where]);
  const e = entry as BundleEntry;
  const method = e.request?.method;
  if (!method || !['GET', 'POST', 'PUT', 'DELETE'].includes(method)) throw badRequest(`${where}.request.method must be GET, POST, PUT or DELETE`, [`${where}.request.method`]);
  let url = typeof e.request?.url === 'string' ? e.request.url : '';
  if (url.startsWith(`${base}/`)) url = url.slice(base.length + 1);
  const m = url.match(/^([A-Z][A-Za-z]+)(?:\/([^/?]+))?(?:\?(.*))?$/);
  if (!m || !isServedType(m[1])) throw badRequest(`${where}.request.url '${url}' is not a served resource type, id or search`, [`${where}.request.url`]);
  const [, type, id, q] = m;
  if (id !== undefined && !ID_PATTERN.test(id)) throw badRequest(`${where}.request.url has an invalid id`, [`${where}.request.url`]);
  const parsed: Parsed = { index, method: method as Method, type, id, url, fullUrl: typeof e.fullUrl === 'string' ? e.fullUrl : undefined };
  if (q !== undefined) parsed.query = queryOf(q);
  if (method === 'POST' || method === 'PUT') {
    if (!e.resource || typeof e.resource !== 'object') throw badRequest(`${where} needs a resource`, [`${where}.resource`]);
    if (e.resource.resourceType !== type) throw badRequest(`${where}.resource is a ${e.resource.resourceType}, the url names ${type}`, [`${where}.resource`]);
    parsed.resource = e.resource as Resource;
  }
  if (method === 'POST' && (id !== undefined || q !== undefined)) throw badRequest(`${where}: a POST goes to the type, ${type}`, [`${where}.request.url`]);
  if ((method === 'PUT' || method === 'DELETE') && id === undefined && q === undefined) throw badRequest(`${where}: a ${method} needs an id or search criteria`, [`${where}.request.url`]);
  if (e.request?.ifMatch !== undefined) parsed.ifMatch = parseIfMatch(e.request.ifMatch);
  if (e.request?.ifNoneExist !== undefined) parsed.ifNoneExist = queryOf(String(e.request.ifNoneExist).replace(/^.*\?/, ''));
  return parsed;
}

/**
 * bdl-7: the entries' fullUrls are unique. Two entries with one fullUrl would make a reference to it
 * name either of two resources (a transaction would create both and point at one), so the whole
 * batch or transaction is refused before any entry runs.
 */
function checkUniqueFullUrls(entries: unknown[]): void {
  const seen = new Map<string, number>();
  entries.forEach((entry, i) => {
    const fullUrl = entry && typeof entry === 'object' ? (entry as BundleEntry).fullUrl : undefined;
    if (typeof fullUrl !== 'string') return;
    const first = seen.get(fullUrl);
    if (first !== undefined) throw badRequest(`Bundle.entry[${i}].fullUrl is the fullUrl of Bundle.entry[${first}]: each entry's fullUrl must be unique (bdl-7)`, [`Bundle.entry[${i}].fullUrl`]);
    seen.set(fullUrl, i);
  });
}

/** `location`, `etag` and `lastModified` of a stored resource, and the resource unless the client prefers minimal answers. */
function written(status: string, resource: Resource, minimal: boolean): BundleEntry {
  const response: BundleEntryResponse = {
    status,
    location: `${resource.resourceType}/${resource.id}/_history/${resource.meta?.versionId}`,
    etag: `W/"${resource.meta?.versionId}"`,
    lastModified: resource.meta?.lastUpdated,
  };
  return minimal ? { response } : { resource: resource as FhirResource, response };
}

const failed = (err: unknown): BundleEntry => {
  const e = err instanceof FhirError ? err : new FhirError(500, 'exception', 'The entry could not be processed');
  return { response: { status: String(e.status), outcome: e.toOutcome() } };
};

/** Every `reference` in a resource (contained ones too), for rewriting in place. */
function eachReference(value: unknown, visit: (holder: { reference: string }) => void): void {
  if (Array.isArray(value)) value.forEach((v) => eachReference(v, visit));
  else if (value && typeof value === 'object') {
    const o = value as Record<string, unknown>;
    if (typeof o.reference === 'string') visit(o as { reference: string });
    for (const v of Object.values(o)) if (v && typeof v === 'object') eachReference(v, visit);
  }
}

/**
 * `POST [base]` with a batch or transaction Bundle (FHIR R4 http.html#transaction). Each entry
 * needs what the same interaction needs on its own (scopes, the service role for writes), and reads
 * see what the caller may see. A batch runs each entry on its own and answers each one's outcome. A
 * transaction resolves `urn:uuid` and conditional references and conditional interactions first,
 * then writes everything in one store transaction (all or nothing, also if the process dies), in the
 * order DELETE, POST, PUT, then answers its GETs; any failure is the transaction's, nothing written.
 */
export class BundleProcessor {
  constructor(private readonly d: { services: Map<string, ResourceService>; store: ResourceStore; baseUrl: () => string }) {}

  private service(type: string): ResourceService {
    return this.d.services.get(type) as ResourceService;
  }

  /** A request for one entry, seen by the services as the client's own request. */
  private subRequest(req: Request, p: Parsed, body?: unknown): Request {
    const sub = Object.create(req) as Request;
    sub.method = p.method;
    sub.body = body ?? p.resource;
    sub.query = (p.query ?? {}) as never;
    sub.headers = { ...req.headers, 'if-match': Array.isArray(p.ifMatch) ? p.ifMatch.map((v) => `W/"${v}"`).join(', ') : p.ifMatch, 'if-none-exist': undefined };
    for (const k of Object.keys(sub.headers)) if (sub.headers[k] === undefined) delete sub.headers[k];
    return sub;
  }

  async process(body: unknown, req: Request): Promise<Bundle> {
    if (!body || typeof body !== 'object' || Array.isArray(body) || (body as Bundle).resourceType !== 'Bundle') throw badRequest('POST [base] takes a Bundle of type batch or transaction');
    const bundle = body as Bundle;
    if (bundle.type !== 'batch' && bundle.type !== 'transaction') throw badRequest(`Bundle.type must be batch or transaction, got '${String(bundle.type)}'`, ['Bundle.type']);
    const entries = bundle.entry ?? [];
    if (!Array.isArray(entries)) throw badRequest('Bundle.entry must be a list', ['Bundle.entry']);
    if (entries.length > MAX_BUNDLE_ENTRIES) throw badRequest(`A Bundle may hold at most ${MAX_BUNDLE_ENTRIES} entries`);
    checkUniqueFullUrls(entries);
    const minimal = /return\s*=\s*minimal/i.test(req.get('prefer') ?? '');
    const access = req.access ?? { clientId: 'anonymous', scope: '', role: 'partner' as const };
    if (bundle.type === 'batch') {
      const out: BundleEntry[] = [];
      for (const [i, entry] of entries.entries()) {
        try {
          const p = parseEntry(entry, i, this.d.baseUrl());
          Guard.authorize(access, p.type, ACTIONS[p.method], p.method === 'GET' ? undefined : 'service');
          out.push(await this.one(req, p, minimal));
        } catch (err) {
          out.push(failed(err));
        }
      }
      return { resourceType: 'Bundle', type: 'batch-response', entry: out };
    }
    const parsed = entries.map((e, i) => parseEntry(e, i, this.d.baseUrl()));
    for (const p of parsed) Guard.authorize(access, p.type, ACTIONS[p.method], p.method === 'GET' ? undefined : 'service');
    return this.transaction(req, parsed, minimal);
  }

  /** One batch entry, as the same interaction on its own. */
  private async one(req: Request, p: Parsed, minimal: boolean): Promise<BundleEntry> {
    const service = this.service(p.type);
    const sub = this.subRequest(req, p);
    switch (p.method) {
      case 'GET': {
        const resource = p.id ? await service.searchById({ id: p.id }, { req: sub }) : await service.search({}, { req: sub });
        return { resource: resource as FhirResource, response: { status: '200 OK', ...(p.id ? { etag: `W/"${resource.meta?.versionId}"` } : {}) } };
      }
      case 'POST': {
        if (p.ifNoneExist) {
          service.checkCreate(p.resource);
          const ids = await service.matching(sub, p.ifNoneExist);
          if (ids.length > 1) throw preconditionFailed(`The ifNoneExist criteria match several ${p.type} resources`);
          if (ids.length === 1) return written('200 OK', await service.searchById({ id: ids[0] }, { req: sub }), minimal);
        }
        return written('201 Created', (await service.create({}, { req: sub })).resource, minimal);
      }
      case 'PUT': {
        const id = p.id ?? (await this.conditionalTarget(sub, p, true));
        const result = await service.update({ id }, { req: this.subRequest(req, p, { ...p.resource, id }) });
        return written(result.created ? '201 Created' : '200 OK', result.resource, minimal);
      }
      case 'DELETE': {
        const id = p.id ?? (await this.conditionalTarget(sub, p, false));
        await service.remove({ id });
        return { response: { status: '204 No Content' } };
      }
    }
  }

  /** The id a conditional PUT or DELETE acts on: one match; none creates (PUT: a new id, or the body's) or is 404; several is 412. */
  private async conditionalTarget(req: Request, p: Parsed, creates: boolean): Promise<string> {
    const ids = await this.service(p.type).matching(req, p.query ?? {});
    if (ids.length > 1) throw preconditionFailed(`The criteria of ${p.method} ${p.url} match several resources`);
    if (ids.length === 1) return ids[0];
    if (!creates) throw notFound(`No ${p.type} matches ${p.url}`);
    const bodyId = p.resource?.id;
    return typeof bodyId === 'string' && ID_PATTERN.test(bodyId) ? bodyId : randomUUID();
  }

  private async transaction(req: Request, parsed: Parsed[], minimal: boolean): Promise<Bundle> {
    // 1. Where each entry lands: new ids for creates, the match of each conditional interaction.
    const targets = new Map<number, { id: string; skip?: Resource }>();
    const byFullUrl = new Map<string, string>();
    for (const p of parsed) {
      const sub = this.subRequest(req, p);
      let id: string | undefined = p.id;
      let skip: Resource | undefined;
      if (p.method === 'POST') {
        id = randomUUID();
        if (p.ifNoneExist) {
          const ids = await this.service(p.type).matching(sub, p.ifNoneExist);
          if (ids.length > 1) throw preconditionFailed(`Bundle.entry[${p.index}]: the ifNoneExist criteria match several ${p.type} resources`);
          if (ids.length === 1) {
            id = ids[0];
            skip = await this.service(p.type).searchById({ id }, { req: sub });
          }
        }
      } else if ((p.method === 'PUT' || p.method === 'DELETE') && !p.id) {
        id = await this.conditionalTarget(sub, p, p.method === 'PUT');
      }
      if (id) targets.set(p.index, { id, skip });
      if (p.fullUrl && id && p.method !== 'GET') byFullUrl.set(p.fullUrl, `${p.type}/${id}`);
    }
    // 2. References to other entries (their fullUrl) and conditional references, resolved.
    for (const p of parsed) {
      if (!p.resource) continue;
      p.resource = structuredClone(p.resource);
      const refs: { reference: string }[] = [];
      eachReference(p.resource, (h) => refs.push(h));
      for (const holder of refs) {
        const local = byFullUrl.get(holder.reference);
        if (local) holder.reference = local;
        else if (/^[A-Z][A-Za-z]+\?/.test(holder.reference)) holder.reference = await this.conditionalReference(req, holder.reference, p.index);
        else if (holder.reference.startsWith('urn:uuid:') || holder.reference.startsWith('urn:oid:')) throw badRequest(`Bundle.entry[${p.index}] refers to ${holder.reference}, which no entry of the transaction is`);
      }
    }
    // 3. The writes, checked as each interaction checks them, in the order DELETE, POST, PUT.
    const order: Method[] = ['DELETE', 'POST', 'PUT'];
    const writes: { p: Parsed; write: TxWrite }[] = [];
    for (const method of order) {
      for (const p of parsed.filter((x) => x.method === method)) {
        const target = targets.get(p.index) as { id: string; skip?: Resource };
        if (target.skip) continue;
        const service = this.service(p.type);
        const existing = method === 'POST' ? undefined : await this.d.store.readIfExists(p.type, target.id);
        if (method === 'DELETE') {
          if (existing) service.checkDelete(existing);
          writes.push({ p, write: { kind: 'delete', type: p.type, id: target.id, ifMatch: p.ifMatch } });
        } else if (method === 'POST') {
          const resource = service.checkCreate({ ...p.resource, id: target.id });
          writes.push({ p, write: { kind: 'create', type: p.type, id: target.id, resource } });
        } else {
          const resource = service.checkUpdate(target.id, { ...p.resource, id: target.id }, existing);
          writes.push({ p, write: { kind: 'update', type: p.type, id: target.id, resource, ifMatch: p.ifMatch } });
        }
      }
    }
    const results = await this.d.store.transact(writes.map((w) => w.write));
    const out: BundleEntry[] = parsed.map(() => ({}));
    for (const [i, r] of results.entries()) {
      const p = writes[i].p;
      await this.service(r.type).changed(r.id, r.resource);
      out[p.index] = r.resource ? written(r.created ? '201 Created' : '200 OK', r.resource, minimal) : { response: { status: '204 No Content' } };
    }
    for (const p of parsed) {
      const skip = targets.get(p.index)?.skip;
      if (skip) out[p.index] = written('200 OK', skip, minimal);
    }
    // 4. The reads, after the writes.
    for (const p of parsed.filter((x) => x.method === 'GET')) out[p.index] = await this.one(req, p, minimal);
    return { resourceType: 'Bundle', type: 'transaction-response', entry: out };
  }

  /** `Patient?identifier=x|y` as a reference: exactly one match, else the transaction fails. */
  private async conditionalReference(req: Request, reference: string, index: number): Promise<string> {
    const [type, query] = [reference.slice(0, reference.indexOf('?')), reference.slice(reference.indexOf('?') + 1)];
    if (!isServedType(type)) throw badRequest(`Bundle.entry[${index}] refers to ${type}, which is not served`);
    const ids = await this.service(type).matching(req, queryOf(query));
    if (ids.length !== 1) throw preconditionFailed(`Bundle.entry[${index}]: the conditional reference ${reference} matches ${ids.length} resources, not one`);
    return `${type}/${ids[0]}`;
  }
}

/** `POST [base]`: any authenticated client; each entry is then checked as its own interaction would be. */
export function bundleRoutes(guard: Guard, processor: BundleProcessor): Router {
  const router = Router({ caseSensitive: true });
  router.post(
    '/',
    guard.require(AUTHENTICATED),
    asyncHandler(async (req, res) => {
      sendResource(res, 200, await processor.process(req.body, req));
    }),
  );
  return router;
}

