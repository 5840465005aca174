import express, { Express, RequestHandler, Router } from 'express';
import compression from 'compression';
// The Express project's CORS middleware: preflights and headers per the Fetch standard, not by hand.
import cors from 'cors';
// The security headers node-fhir-server-core applies, computed once (see securityHeaders).
import helmet, { HelmetOptions } from 'helmet';
import type { ServedOperation } from './conformance/operation-definitions';
// node-fhir-server-core ships no type declarations
// eslint-disable-next-line @typescript-eslint/no-var-requires
const { Server: FhirCoreServer } = require('@bluehalo/node-fhir-server-core');
import { AppConfig } from './config';
import type { Logger } from './logger';
import { ResourceService } from './fhir/resource-service';
import { restRoutes, TYPE_PARAM, ID_PARAM } from './fhir/rest-routes';
import { exactBase, Guard, isUnder, Permission, PUBLIC } from './auth/guard';
import { buildCapabilityStatement, interactionsOf } from './fhir/capability';
import { errorHandler, notFoundHandler } from './fhir/errors';
import { FHIR_JSON, hasBody } from './fhir/http';
import { badRequest } from './fhir/outcome';
import { MAX_JSON_DEPTH, nestsDeeperThan } from './fhir/json-limits';
import { methodNotAllowed, requireAcceptableAnswer, requireReadableBody } from './fhir/negotiation';
import { series } from './fhir/routing';
import { BodyChecker, parseFailed } from './fhir/body-checker';

export const FHIR_PATH = '/4_0_1';

/** A FHIR operation served through node-fhir-server-core's operation routes (answers 200 JSON). */
export interface CoreOperation {
  /** The operation's name as in the URL, without `$`, e.g. `member-match`. */
  name: string;
  method: 'POST' | 'GET';
  /** What the caller needs, checked by the guard before the core runs the handler. */
  permission: Permission;
  handler: (args: { id?: string; resource?: unknown }, ctx: { req: express.Request }) => Promise<unknown>;
}

export interface AppParts {
  config: AppConfig;
  logger: Logger;
  version: string;
  services: Map<string, ResourceService>;
  baseUrl: () => string;
  /** Routes outside the FHIR base, e.g. the token endpoint, and their paths. */
  rootRoutes?: Router[];
  rootPaths?: string[];
  /** The one authentication and authorization guard; every route under the base declares its permission to it. */
  guard: Guard;
  /** Routes in the FHIR base that must come before the generic REST routes (they take some of the same paths). */
  overrideRoutes?: Router[];
  /** Routes in the FHIR base that the core does not fit (discovery, async kick-offs, NDJSON files), each guarded. */
  fhirRoutes?: Router[];
  /** Type-level operations, by resource type. */
  operations?: Record<string, CoreOperation[]>;
  /** Every operation served (here or in `fhirRoutes`), as the CapabilityStatement advertises them. */
  servedOperations: () => ServedOperation[];
  tokenEndpoint?: () => string;
  /** Where large request bodies are checked (off this thread); without it every body is parsed here. */
  bodyChecker?: BodyChecker;
}

/** Rejects JSON that tries to reach an object's prototype. */
function noProtoReviver(key: string, value: unknown): unknown {
  if (key === '__proto__' || key === 'constructor' && value && typeof value === 'object' && 'prototype' in value) {
    throw badRequest('The body contains a forbidden key');
  }
  return value;
}

/**
 * Compression only for clients that accept it, and only for bodies over 1 KiB (searches, histories,
 * bulk files); a request without Accept-Encoding never pays for the wrapping.
 */
const compress = compression({ threshold: 1024 });
const compressWhereAccepted: RequestHandler = (req, res, next) => (req.headers['accept-encoding'] ? compress(req, res, next) : next());

/**
 * Makes every JSON answer of node-fhir-server-core `application/fhir+json`, and Last-Modified an
 * HTTP date (the routes of this server's own set them so already).
 */
const fhirMediaType: RequestHandler = (req, res, next) => {
  if (/^\/(\.well-known|bulkstatus|bulkfiles)\//.test(req.path)) return next();
  const setHeader = res.setHeader.bind(res);
  res.setHeader = (name: string, value: number | string | readonly string[]) => {
    const lower = name.toLowerCase();
    if (lower === 'content-type' && typeof value === 'string' && value.startsWith('application/json')) value = FHIR_JSON;
    if (lower === 'last-modified' && typeof value === 'string' && /^\d{4}-\d{2}/.test(value)) value = new Date(value).toUTCString();
    return setHeader(name, value);
  };
  next();
};

/**
 * The headers a middleware sets, worked out once by the middleware itself (on a probe request) and
 * then set in one step per response: for middlewares whose headers are the same for every request.
 */
function headersOnce(middleware: RequestHandler, probe: Partial<express.Request> = {}): [string, string][] {
  const headers = new Map<string, [string, string]>();
  const res = {
    setHeader: (name: string, value: unknown) => headers.set(name.toLowerCase(), [name, String(value)]),
    getHeader: (name: string) => headers.get(name.toLowerCase())?.[1],
    removeHeader: (name: string) => headers.delete(name.toLowerCase()),
  };
  middleware({ method: 'GET', headers: {}, ...probe } as express.Request, res as unknown as express.Response, () => undefined);
  return [...headers.values()];
}

const setting =
  (headers: [string, string][]): RequestHandler =>
  (_req, res, next) => {
    for (const [name, value] of headers) res.setHeader(name, value);
    next();
  };

/**
 * Helmet's security headers (as node-fhir-server-core's configureHelmet would apply them): with
 * static options they are the same for every response, and helmet's chain of a dozen middlewares
 * cost a sixth of a read.
 */
function securityHeaders(options: HelmetOptions): RequestHandler {
  const headers = headersOnce(helmet(options) as unknown as RequestHandler);
  const stored = setting([...headers, ['Cache-Control', 'no-store']]);
  const cacheable = setting(headers);
  return (req, res, next) => (mayBeCached(req) ? cacheable(req, res, next) : stored(req, res, next));
}

/**
 * What carries no member data and may be kept by caches: the CapabilityStatement, the SMART
 * configuration and the OperationDefinitions. Everything else (reads, searches, writes, operations,
 * export status and files, tokens, errors) is `Cache-Control: no-store`, which keeps it out of
 * shared and private caches but does not stop a client from revalidating what it holds (a read's
 * ETag and 304 work as before).
 */
const CACHEABLE = new RegExp(`^${FHIR_PATH}/(metadata|\\.well-known/smart-configuration|OperationDefinition(/[^/]+)?)$`);
function mayBeCached(req: express.Request): boolean {
  return (req.method === 'GET' || req.method === 'HEAD') && CACHEABLE.test(req.path);
}

/**
 * CORS by the Express project's middleware. With every origin allowed, an actual request's headers
 * are the same whatever its origin (`*`, the exposed headers): worked out once by the middleware,
 * which still answers every preflight itself. With a list of origins it runs on every request.
 */
function corsHeaders(options: cors.CorsOptions): RequestHandler {
  const middleware = cors(options);
  if (options.origin !== '*') return middleware;
  const fixed = setting(headersOnce(middleware, { headers: { origin: 'https://any.example' } }));
  return (req, res, next) => (req.method === 'OPTIONS' ? middleware(req, res, next) : fixed(req, res, next));
}

/**
 * A body as JSON (FHIR's media types) or a form, nested no deeper than MAX_JSON_DEPTH. A request
 * without a body (most of them: reads, searches) skips the parsers, with `{}` as they would leave it.
 * A JSON body that is large (over `large.bytes`), or whose size is not announced, is read as bytes:
 * a large one is checked on the body checker's thread (JSON, no prototype keys, depth, search-index
 * limits) before it is parsed here, so a hostile body never holds this thread (see BodyChecker).
 */
function bodyParsers(limit: string | number, large?: { bytes: number; checker: BodyChecker }): RequestHandler {
  const jsonTypes = ['application/json', 'application/fhir+json', 'application/json+fhir', 'application/json-patch+json'];
  const json = express.json({ type: jsonTypes, limit, strict: false, reviver: noProtoReviver });
  const raw = express.raw({ type: jsonTypes, limit });
  const form = express.urlencoded({ extended: false, limit: '1mb' });
  const decoder = new TextDecoder('utf-8');
  const depthChecked = (body: unknown) => (nestsDeeperThan(body) ? badRequest(`The body nests deeper than ${MAX_JSON_DEPTH} levels`) : undefined);
  /** The bytes of a JSON body (read by `raw`) as body-parser's JSON parser would leave them; large ones checked on the worker first. */
  const parseBytes = (req: express.Request, next: (err?: unknown) => void) => {
    const bytes = req.body as unknown;
    if (!Buffer.isBuffer(bytes)) return next();
    const charset = (req.headers['content-type'] ?? '').match(/;\s*charset\s*=\s*"?([^";\s]+)/i)?.[1]?.toLowerCase();
    if (charset && charset !== 'utf-8' && charset !== 'utf8') {
      return next(Object.assign(new Error(`unsupported charset "${charset.toUpperCase()}"`), { status: 415, type: 'charset.unsupported', charset }));
    }
    if (bytes.length === 0) {
      req.body = {};
      return next();
    }
    if (large && bytes.length > large.bytes) {
      return void large.checker.check(bytes).then(() => {
        // Checked on the worker (prototype keys and depth included): only parsed here.
        req.body = JSON.parse(decoder.decode(bytes));
        next();
      }, next);
    }
    try {
      req.body = JSON.parse(decoder.decode(bytes), noProtoReviver);
    } catch (err) {
      return next(parseFailed((err as Error).message));
    }
    next(depthChecked(req.body));
  };
  return (req, res, next) => {
    if (!hasBody(req)) {
      req.body = {};
      // Read to its (empty) end now, so Node has nothing left to drain or wait for once the answer is sent.
      req.resume();
      return next();
    }
    const length = req.headers['content-length'];
    const small = !large || (length !== undefined && Number(length) <= large.bytes);
    const first: RequestHandler = small ? json : (rq, rs, nx) => raw(rq, rs, (err?: unknown) => (err ? nx(err) : parseBytes(rq, nx)));
    first(req, res, (err?: unknown) => {
      if (err) return next(err);
      form(req, res, (err2?: unknown) => next(err2 ?? (small ? depthChecked(req.body) : undefined)));
    });
  };
}

/**
 * One line per request, after its answer: the path only (queries and bodies may carry member
 * data). The lines of one turn of the event loop are handed to the logger together after it, each
 * with the time its answer ended, so formatting them does not come between requests.
 */
function requestLog(logger: Logger): RequestHandler {
  let batch: Record<string, unknown>[] = [];
  const flush = () => {
    const entries = batch;
    batch = [];
    for (const entry of entries) {
      entry.timestamp = new Date(entry.timestamp as number).toISOString();
      logger.info('request', entry);
    }
  };
  return (req, res, next) => {
    if (!logger.isLevelEnabled('info')) return next();
    const start = process.hrtime.bigint();
    // Taken now: by the answer, a router mounted on the base may have left its own path in `req.path`.
    const path = req.path;
    res.on('finish', () => {
      if (batch.length === 0) setImmediate(flush);
      batch.push({ method: req.method, path, status: res.statusCode, ms: Number(process.hrtime.bigint() - start) / 1e6, ...(req.access ? { client: req.access.clientId } : {}), timestamp: Date.now() });
    });
    next();
  };
}

/**
 * The permissions of the routes node-fhir-server-core serves, declared with the same patterns, in
 * the same order (first match decides), with types and ids restricted to what the core's routes
 * take: a request only reaches the core through one of these.
 */
function coreRoutePermissions(guard: Guard, operations: Record<string, CoreOperation[]>): Router {
  const router = Router({ caseSensitive: true });
  for (const [type, ops] of Object.entries(operations)) {
    for (const op of ops) router[op.method === 'POST' ? 'post' : 'get'](`/${type}/([$])${op.name}`, guard.require(op.permission));
  }
  router.get('/metadata', guard.require(PUBLIC));
  router.get(`/${TYPE_PARAM}/${ID_PARAM}/_history/:version_id`, guard.require({ type: ':type', action: 'r' }));
  router.get(`/${TYPE_PARAM}/_history`, guard.require({ type: ':type', action: 's' }));
  router.get(`/${TYPE_PARAM}/${ID_PARAM}/_history`, guard.require({ type: ':type', action: 'r' }));
  router.get(`/${TYPE_PARAM}/${ID_PARAM}`, guard.require({ type: ':type', action: 'r' }));
  router.delete(`/${TYPE_PARAM}/${ID_PARAM}`, guard.require({ type: ':type', action: 'd', role: 'service' }));
  return router;
}

/**
 * `GET /metadata`: the CapabilityStatement, built on the first request (when the base URL is known)
 * and then served as the same bytes.
 */
function metadataRoute(parts: AppParts): Router {
  const router = Router({ caseSensitive: true });
  let body: string | undefined;
  router.get('/metadata', parts.guard.require(PUBLIC), (_req, res) => {
    body ??= JSON.stringify(
      buildCapabilityStatement(
        { base: parts.baseUrl, authRequired: parts.config.authRequired, tokenEndpoint: parts.tokenEndpoint, operations: parts.servedOperations, version: parts.version, publisher: parts.config.requestingPayerName },
        [...parts.services.values()].map((service) => ({ ...service.makeResource(), interaction: interactionsOf(service as unknown as Record<string, unknown>) }) as never),
      ),
    );
    res.status(200).type(FHIR_JSON).send(body);
  });
  return router;
}

/** A middleware for requests under the FHIR base only. */
const underBase =
  (handler: RequestHandler): RequestHandler =>
  (req, res, next) =>
    isUnder(FHIR_PATH, req.path) ? handler(req, res, next) : next();

/** Builds the Express app and the node-fhir-server-core chain. Never listens. */
export function buildApp(parts: AppParts): Express {
  const { config, logger } = parts;
  const app = express();
  app.disable('x-powered-by');
  // `/4_0_1/patient/1` is not `/4_0_1/Patient/1`: routes and the permissions declared with them match the same exact text.
  app.set('case sensitive routing', true);
  app.set('etag', false); // ETags are resource versions, set by the handlers
  // Behind a load balancer the caller's address (rate limits, the audit trail) is read from X-Forwarded-For, as set by the proxies named.
  if (config.trustProxy !== undefined) app.set('trust proxy', config.trustProxy);
  // What every request goes through, in this order, as one step of Express's chain (Express matches
  // every layer's path on every request): the security headers and Cache-Control first, so every
  // answer has them, early errors too (404 outside the base, 406, 413, 415, malformed JSON, 401);
  // its log line; CORS (a preflight is answered here, before any route or token is looked at); only
  // the FHIR base and the root routes; compression where accepted; the body; under the base, 406
  // and 415 for what this server neither answers nor reads.
  app.use(
    series(
      securityHeaders({
        hsts: !!config.publicBaseUrl?.startsWith('https:'),
        contentSecurityPolicy: { useDefaults: false, directives: { defaultSrc: ["'none'"], frameAncestors: ["'none'"] } },
      }),
      requestLog(logger),
      corsHeaders({
        origin: config.corsOrigins.includes('*') ? '*' : config.corsOrigins,
        methods: ['GET', 'HEAD', 'POST', 'PUT', 'PATCH', 'DELETE'],
        allowedHeaders: ['Authorization', 'Content-Type', 'Accept', 'Prefer', 'If-Match', 'If-None-Match', 'If-None-Exist', 'If-Modified-Since'],
        exposedHeaders: ['Content-Location', 'Location', 'ETag', 'Last-Modified', 'X-Progress', 'Retry-After', 'Expires'],
        maxAge: 86400,
      }),
      exactBase(FHIR_PATH, parts.rootPaths ?? []),
      compressWhereAccepted,
      bodyParsers(config.bodyLimit, parts.bodyChecker && { bytes: config.largeBodyBytes, checker: parts.bodyChecker }),
      underBase(requireAcceptableAnswer),
      underBase(requireReadableBody),
    ),
  );

  const profiles: Record<string, unknown> = {};
  for (const [type, service] of parts.services) {
    const ops = parts.operations?.[type] ?? [];
    const serviceModule: Record<string, unknown> = { ...service };
    for (const op of ops) serviceModule[op.name.replace(/-([a-z])/g, (g) => g[1].toUpperCase())] = op.handler;
    profiles[type] = {
      service: serviceModule,
      versions: ['4_0_1'],
      operation: ops.map((op) => ({ name: op.name, route: `/$${op.name}`, method: op.method })),
    };
  }
  const core = new FhirCoreServer(
    {
      profiles,
      // The core's own routes apply CORS again: with the same origins.
      server: { corsOptions: { maxAge: 86400, origin: config.corsOrigins.includes('*') ? '*' : config.corsOrigins } },
      logging: { level: 'warn' },
    },
    app,
  );

  // Routes that take a path the generic REST routes would (Binary content), then those (the hot
  // path: reads, searches, writes), then the metadata route (no resource type is `metadata`) and the
  // special ones (discovery, bulk export, operations), then the permissions of the core's routes:
  // every route of the FHIR base.
  const corePermissions = coreRoutePermissions(parts.guard, parts.operations ?? {});
  const fhirBase = [...(parts.overrideRoutes ?? []), restRoutes(parts.services, parts.baseUrl, parts.guard), metadataRoute(parts), ...(parts.fhirRoutes ?? [])];
  // One router holds them, mounted once: Express strips the base from the path once per request,
  // not once per router.
  const base = Router({ caseSensitive: true });
  for (const r of fhirBase) base.use(r);
  base.use(fhirMediaType, corePermissions, methodNotAllowed([...fhirBase, corePermissions]));
  app.use(FHIR_PATH, base);
  // The routes outside the base (the token endpoint) after it: no FHIR request passes through them.
  for (const r of parts.rootRoutes ?? []) app.use(r);
  app.use(parts.guard.denyUndeclared);
  core.setProfileRoutes();
  app.use(notFoundHandler);
  app.use(errorHandler(logger));
  return app;
}
