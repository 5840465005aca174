import type { RequestHandler } from 'express';
import { FhirError } from './outcome';
import { hasBody } from './http';
import { ID_PATTERN, RESOURCE_TYPES } from './resource-types';

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

const TYPE = `(?:${RESOURCE_TYPES.join('|')})`;
const ID = ID_PATTERN.source.replace(/^\^|\$$/g, '');
/** The REST paths of a served type and the methods each takes. */
const FORMS: [RegExp, string[]][] = [
  [new RegExp(`^/${TYPE}$`), ['GET', 'POST', 'PUT', 'DELETE']],
  [new RegExp(`^/${TYPE}/_search$`), ['POST']],
  [new RegExp(`^/${TYPE}/_history$`), ['GET']],
  [new RegExp(`^/${TYPE}/${ID}$`), ['GET', 'PUT', 'PATCH', 'DELETE']],
  [new RegExp(`^/${TYPE}/${ID}/_history$`), ['GET']],
  [new RegExp(`^/${TYPE}/${ID}/_history/${ID}$`), ['GET']],
  [/^\/metadata$/, ['GET']],
  [/^\/?$/, ['POST']],
  [/^\/_history$/, ['GET']],
];

/** 405, with Allow, for a REST path of a served type that no route took with this method. */
export const methodNotAllowed: RequestHandler = (req, res, next) => {
  if (req.authorized || req.method === 'OPTIONS') return next();
  const allowed = FORMS.find(([re]) => re.test(req.path))?.[1];
  if (!allowed || allowed.includes(req.method)) return next();
  res.set('Allow', allowed.join(', '));
  next(new FhirError(405, 'not-supported', `${req.method} is not served on ${req.path}; allowed: ${allowed.join(', ')}`, undefined, { Allow: allowed.join(', ') }));
};
