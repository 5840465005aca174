import type { ErrorRequestHandler, RequestHandler } from 'express';
import { FhirError, outcome } from './outcome';
import { FHIR_JSON } from './http';
import type { Logger } from '../logger';

/** Anything no route answered: 404 with an OperationOutcome. */
export const notFoundHandler: RequestHandler = (req, res) => {
  res.status(404).type(FHIR_JSON).send(JSON.stringify(outcome('error', 'not-found', `No route for ${req.method} ${req.path}`)));
};

/**
 * SQLite's refusals of a statement too large or complex to run: caused by what a client asked for
 * (a search's shape), never by the server's state. The search limits keep every query shape far
 * from them; should one still get there, it is the client's 400, not a 500.
 */
const ENGINE_LIMITS = /Expression tree is too large|too many SQL variables|too many terms in compound SELECT|parser stack overflow|LIKE or GLOB pattern too complex|too many FROM clause terms|at most \d+ tables in a join|string or blob too big/i;
const isEngineLimit = (err: unknown) => typeof (err as { code?: unknown })?.code === 'string' && /^SQLITE_(ERROR|TOOBIG|RANGE)/.test((err as { code: string }).code) && ENGINE_LIMITS.test(String((err as Error).message));

/** The one place errors become responses: every error is an OperationOutcome with the right status. */
export function errorHandler(logger: Logger): ErrorRequestHandler {
  return (err, req, res, next) => {
    if (res.headersSent) return next(err);
    let status = 500;
    let body = outcome('error', 'exception', 'Internal server error');
    if (err instanceof FhirError) {
      status = err.status;
      body = err.toOutcome();
      res.set(err.headers);
    } else if (err?.type === 'entity.parse.failed') {
      status = 400;
      body = outcome('error', 'structure', `The body is not valid JSON: ${err.message}`);
    } else if (err?.type === 'entity.too.large') {
      status = 413;
      body = outcome('error', 'too-long', `The body is larger than the limit of ${err.limit} bytes`);
    } else if (err?.type === 'encoding.unsupported' || err?.type === 'charset.unsupported') {
      status = 415;
      body = outcome('error', 'not-supported', err.message);
    } else if (err?.resourceType === 'OperationOutcome' || (err?.statusCode && err?.issue)) {
      // node-fhir-server-core's ServerError and OperationOutcome errors
      status = err.statusCode || 500;
      body = err.resourceType === 'OperationOutcome' ? { ...err, statusCode: undefined } : { resourceType: 'OperationOutcome', issue: err.issue };
    } else if (isEngineLimit(err)) {
      status = 400;
      body = outcome('error', 'too-costly', 'The request is too large or complex for the database to run: use fewer search parameters or values');
    } else if (typeof err?.status === 'number' && err.status >= 400 && err.status < 500) {
      status = err.status;
      body = outcome('error', 'invalid', err.message);
    }
    if (status >= 500) logger.error('request failed', { method: req.method, path: req.path, error: err?.message, stack: err?.stack });
    res.status(status).type(FHIR_JSON).send(JSON.stringify(body));
  };
}
