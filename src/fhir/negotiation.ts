import type { RequestHandler, Router } from 'express';
import { FhirError } from './outcome';
import { hasBody } from './http';

const JSON_BODY = /^application\/(fhir\+json|json|json\+fhir)\b/i;
const FORM_BODY = /^application\/x-www-form-urlencoded\b/i;
const JSON_PATCH = /^application\/json-patch\+json\b/i;

/**
 * 415 for a body this server does not read: resources and Parameters are FHIR JSON, a POST
 * `_search` is a form, a PATCH a JSON Patch.
 */
export const requireReadableBody: RequestHandler = (req, _res, next) => {
  if (!['POST', 'PUT', 'PATCH'].includes(req.method) || !hasBody(req)) return next();
  const type = req.get('content-type') ?? '';
  const search = /\/_search$/.test(req.path);
  const ok = search ? FORM_BODY.test(type) : JSON_BODY.test(type) || (req.method === 'PATCH' && JSON_PATCH.test(type));
  if (ok) return next();
  next(new FhirError(415, 'not-supported', `Content-Type '${type || 'none'}' is not read here: send ${search ? 'application/x-www-form-urlencoded' : 'application/fhir+json'}`));
};

/**
 * 406 for a client that accepts none of what this server answers: FHIR JSON (and NDJSON for bulk
 * files and archived content); `_format` naming XML or Turtle likewise.
 */
export const requireAcceptableAnswer: RequestHandler = (req, _res, next) => {
  const format = typeof req.query._format === 'string' ? req.query._format : undefined;
  if (format && !/json/i.test(format)) return next(new FhirError(406, 'not-supported', `_format=${format} is not served: this server answers FHIR JSON`));
  const accept = req.get('accept');
  if (!accept || /json|\*\/\*|application\/\*|ndjson|octet-stream/i.test(accept)) return next();
  next(new FhirError(406, 'not-supported', `Accept '${accept}' is not served: this server answers application/fhir+json`));
};

/** The order methods are listed in an Allow header. */
const METHOD_ORDER = ['GET', 'POST', 'PUT', 'PATCH', 'DELETE'];

/** What an Express router holds for each route (Express 4's `router.stack`, as route-listing tools read it). */
interface RouteLayer {
  regexp: RegExp;
  route?: { methods: Record<string, boolean> };
}

/**
 * 405, with Allow, for a path some route of `routers` serves, asked with a method none of them
 * takes. The methods come from the routers themselves, so Allow lists what is really served.
 */
export function methodNotAllowed(routers: Router[]): RequestHandler {
  const routes = routers.flatMap((router) => (router as unknown as { stack: RouteLayer[] }).stack).filter((layer) => layer.route);
  return (req, res, next) => {
    if (req.authorized || req.method === 'OPTIONS') return next();
    const methods = new Set<string>();
    for (const layer of routes) {
      if (layer.regexp.test(req.path)) for (const m of Object.keys(layer.route?.methods ?? {})) methods.add(m.toUpperCase());
    }
    if (methods.size === 0 || methods.has(req.method) || methods.has('_ALL')) return next();
    const allowed = METHOD_ORDER.filter((m) => methods.has(m)).join(', ');
    res.set('Allow', allowed);
    next(new FhirError(405, 'not-supported', `${req.method} is not served on ${req.path}; allowed: ${allowed}`, undefined, { Allow: allowed }));
  };
}
