import { Router, Request, Response } from 'express';
import type { Resource } from 'fhir/r4';
import { asyncHandler, httpDate, notModified, sendJsonText, sendResource } from './http';
import { ID_PATTERN, isServedType, RESOURCE_TYPES } from './resource-types';
import { Guard } from '../auth/guard';
import { ResourceService } from './resource-service';
import { badRequest, notFound, outcome, preconditionFailed } from './outcome';

/** A route's `:type`, only the types served (so `metadata` or `%50atient` never stand in for one). */
export const TYPE_PARAM = `:type(${RESOURCE_TYPES.join('|')})`;
/** A route's `:id`, only a valid FHIR id (so `_history` or `$export` never stand in for one). */
export const ID_PARAM = `:id(${ID_PATTERN.source.replace(/^\^|\$$/g, '')})`;

/**
 * Read, vread, create, update and search, mounted ahead of node-fhir-server-core's own routes for them
 * (reads are the hot path, and skip the core's argument sanitising of ids already constrained here): FHIR
 * clients expect the stored resource back with `ETag: W/"n"` and an absolute Location, which the
 * core's response helper does not give, and search must see repeated parameters
 * (`date=ge2020&date=lt2021`), which the core's argument sanitiser rejects.
 */
export function restRoutes(services: Map<string, ResourceService>, baseUrl: (req: Request) => string, guard: Guard): Router {
  const router = Router({ caseSensitive: true });

  /** A version's headers: its versionId as a weak ETag, its time as Last-Modified. */
  const versionHeaders = (res: Response, versionId: string | undefined, lastModified: Date) => {
    const etag = `W/"${versionId}"`;
    res.setHeader('ETag', etag);
    res.setHeader('Last-Modified', httpDate(lastModified));
    return etag;
  };
  const timeOf = (resource: Resource) => new Date(resource.meta?.lastUpdated ?? Date.now());

  const respond = (req: Request, res: Response, resource: Resource, status: number) => {
    const location = `${baseUrl(req)}/${resource.resourceType}/${resource.id}/_history/${resource.meta?.versionId}`;
    versionHeaders(res, resource.meta?.versionId, timeOf(resource));
    res.set('Location', location);
    res.set('Content-Location', location);
    const prefer = req.get('prefer') ?? '';
    if (/return\s*=\s*minimal/i.test(prefer)) return void res.status(status).end();
    if (/return\s*=\s*OperationOutcome/i.test(prefer)) {
      return sendResource(res, status, outcome('information', 'informational', `${resource.resourceType}/${resource.id} stored as version ${resource.meta?.versionId}`));
    }
    sendResource(res, status, resource);
  };

  const serviceFor = (type: string) => (isServedType(type) ? services.get(type) : undefined);

  /** A read answers the resource with its version as ETag and its time as Last-Modified; 304 if the client has it. */
  const sendVersion = (req: Request, res: Response, version: { text: string; versionId: string | undefined; lastUpdated: Date }) => {
    const etag = versionHeaders(res, version.versionId, version.lastUpdated);
    if (notModified(req, etag, version.lastUpdated)) return void res.status(304).end();
    sendJsonText(res, 200, version.text);
  };
  router.get(
    `/${TYPE_PARAM}/${ID_PARAM}`,
    guard.require({ type: ':type', action: 'r' }),
    asyncHandler(async (req, res, next) => {
      const service = serviceFor(req.params.type);
      if (!service) return next();
      sendVersion(req, res, await service.readText({ id: req.params.id }, { req }));
    }),
  );
  router.get(
    `/${TYPE_PARAM}/${ID_PARAM}/_history/:version_id([A-Za-z0-9\-.]{1,64})`,
    guard.require({ type: ':type', action: 'r' }),
    asyncHandler(async (req, res, next) => {
      const service = serviceFor(req.params.type);
      if (!service) return next();
      const version = await service.searchByVersionId({ id: req.params.id, version_id: req.params.version_id }, { req });
      sendVersion(req, res, { text: JSON.stringify(version), versionId: version.meta?.versionId, lastUpdated: timeOf(version) });
    }),
  );

  const search = asyncHandler(async (req, res, next) => {
    const service = serviceFor(req.params.type);
    if (!service) return next();
    sendJsonText(res, 200, await service.searchText({}, { req }));
  });
  router.get(`/${TYPE_PARAM}`, guard.require({ type: ':type', action: 's' }), search);
  router.post(`/${TYPE_PARAM}/_search`, guard.require({ type: ':type', action: 's' }), search);

  /** The query of an If-None-Exist header (`identifier=x|y`) or of a conditional URL. */
  const queryOf = (text: string): Record<string, string[]> => {
    const out: Record<string, string[]> = {};
    for (const [k, v] of new URLSearchParams(text.replace(/^.*\?/, ''))) (out[k] ??= []).push(v);
    return out;
  };
  const tooMany = (type: string) => preconditionFailed(`The criteria match several ${type} resources: make them more selective`);

  router.post(
    `/${TYPE_PARAM}`,
    guard.require({ type: ':type', action: 'c', role: 'service' }),
    asyncHandler(async (req, res, next) => {
      const service = serviceFor(req.params.type);
      if (!service) return next();
      // Conditional create: nothing is created when the criteria match one; several is 412.
      const ifNoneExist = req.get('if-none-exist');
      if (ifNoneExist !== undefined) {
        service.checkCreate(req.body);
        const ids = await service.matching(req, queryOf(ifNoneExist));
        if (ids.length > 1) throw tooMany(req.params.type);
        if (ids.length === 1) return respond(req, res, await service.searchById({ id: ids[0] }, { req }), 200);
      }
      const { resource } = await service.create({ id: undefined }, { req });
      respond(req, res, resource, 201);
    }),
  );

  router.put(
    `/${TYPE_PARAM}/${ID_PARAM}`,
    guard.require({ type: ':type', action: 'u', role: 'service' }),
    asyncHandler(async (req, res, next) => {
      const service = serviceFor(req.params.type);
      if (!service) return next();
      const { resource, created } = await service.update({ id: req.params.id }, { req });
      respond(req, res, resource, created ? 201 : 200);
    }),
  );

  // Conditional update: no match creates (at the body's id, or a new one), one match is updated, several is 412.
  router.put(
    `/${TYPE_PARAM}`,
    guard.require({ type: ':type', action: 'u', role: 'service' }),
    asyncHandler(async (req, res, next) => {
      const service = serviceFor(req.params.type);
      if (!service) return next();
      const ids = await service.matching(req, req.query as Record<string, string>);
      if (ids.length > 1) throw tooMany(req.params.type);
      const bodyId = (req.body as { id?: unknown })?.id;
      if (ids.length === 1 && bodyId !== undefined && bodyId !== ids[0]) throw badRequest(`The body's id (${String(bodyId)}) is not the matching resource's (${ids[0]})`);
      if (ids.length === 0 && bodyId === undefined) {
        const { resource } = await service.create({ id: undefined }, { req });
        return respond(req, res, resource, 201);
      }
      const id = ids[0] ?? String(bodyId);
      req.body = { ...(req.body as object), id };
      const { resource, created } = await service.update({ id }, { req });
      respond(req, res, resource, created ? 201 : 200);
    }),
  );

  // Conditional delete: one match is deleted, none is 404, several is 412.
  router.delete(
    `/${TYPE_PARAM}`,
    guard.require({ type: ':type', action: 'd', role: 'service' }),
    asyncHandler(async (req, res, next) => {
      const service = serviceFor(req.params.type);
      if (!service) return next();
      const ids = await service.matching(req, req.query as Record<string, string>);
      if (ids.length > 1) throw tooMany(req.params.type);
      if (ids.length === 0) throw notFound(`No ${req.params.type} matches the criteria`);
      const result = await service.remove({ id: ids[0] });
      if (result.deleted) res.set('ETag', result.deleted);
      sendResource(res, 200, outcome('information', 'informational', `${req.params.type}/${ids[0]} deleted`));
    }),
  );

  router.patch(
    `/${TYPE_PARAM}/${ID_PARAM}`,
    guard.require({ type: ':type', action: 'u', role: 'service' }),
    asyncHandler(async (req, res, next) => {
      const service = serviceFor(req.params.type);
      if (!service) return next();
      const { resource } = await service.patch(req.params.id, req);
      respond(req, res, resource, 200);
    }),
  );

  return router;
}
