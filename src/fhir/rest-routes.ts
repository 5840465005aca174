import { Router, Request, Response } from 'express';
import type { Resource } from 'fhir/r4';
import { asyncHandler, sendResource } from './http';
import { isServedType } from './resource-types';
import { ResourceService } from './resource-service';
import { outcome } from './outcome';

/**
 * Create, update and search, mounted ahead of node-fhir-server-core's own routes for them: FHIR
 * clients expect the stored resource back with `ETag: W/"n"` and an absolute Location, which the
 * core's response helper does not give, and search must see repeated parameters
 * (`date=ge2020&date=lt2021`), which the core's argument sanitiser rejects.
 */
export function restRoutes(services: Map<string, ResourceService>, baseUrl: (req: Request) => string): Router {
  const router = Router();

  const respond = (req: Request, res: Response, resource: Resource, status: number) => {
    const location = `${baseUrl(req)}/${resource.resourceType}/${resource.id}/_history/${resource.meta?.versionId}`;
    res.set('ETag', `W/"${resource.meta?.versionId}"`);
    res.set('Last-Modified', new Date(resource.meta?.lastUpdated ?? Date.now()).toUTCString());
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

  const search = asyncHandler(async (req, res, next) => {
    const service = serviceFor(req.params.type);
    if (!service) return next();
    sendResource(res, 200, await service.search({}, { req }));
  });
  router.get('/:type', search);
  router.post('/:type/_search', search);

  router.post(
    '/:type',
    asyncHandler(async (req, res, next) => {
      const service = serviceFor(req.params.type);
      if (!service) return next();
      const { resource } = await service.create({ id: undefined }, { req });
      respond(req, res, resource, 201);
    }),
  );

  router.put(
    '/:type/:id',
    asyncHandler(async (req, res, next) => {
      const service = serviceFor(req.params.type);
      if (!service) return next();
      const { resource, created } = await service.update({ id: req.params.id }, { req });
      respond(req, res, resource, created ? 201 : 200);
    }),
  );

  return router;
}
