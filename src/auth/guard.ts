import type { NextFunction, Request, RequestHandler } from 'express';
import { forbidden, notFound, unauthorized } from '../fhir/outcome';
import { AccessContext, TokenService } from './token-service';
import { Action, allows } from './scopes';

declare module 'express-serve-static-core' {
  interface Request {
    /** Who is calling: set by the guard (or `anonymous`, a service with every scope, when auth is off). */
    access?: AccessContext;
    /** The permission the guard granted this request; unset means no declared route took it. */
    authorized?: Permission;
  }
}

/**
 * What a route needs, declared with the route itself:
 * - `public`: anyone (discovery, the CapabilityStatement);
 * - `authenticated`: any client with a valid token; the handler narrows further (an export's status
 *   and files belong to the client that started it);
 * - a type and an action: the token's scopes must allow that action on that type. `type: ':type'`
 *   takes the type from the route's (decoded) `:type` parameter. `role: 'service'` refuses partners.
 */
export type Permission = { public: true } | { authenticated: true } | { type: string; action: Action; role?: 'service' };

export const PUBLIC: Permission = { public: true };
export const AUTHENTICATED: Permission = { authenticated: true };

export const ANONYMOUS: AccessContext = { clientId: 'anonymous', scope: 'system/*.*', role: 'service' };

const BEARER = /^Bearer\s+([A-Za-z0-9\-._~+/]+=*)$/i;

/**
 * The one authentication and authorization guard. Every route carries `guard.require(permission)`
 * ahead of its handler; Express matches the route on the raw path and decodes its parameters, so
 * the permission is judged on exactly what the handler will serve, however the URL was encoded.
 * `denyUndeclared` stands before the routes served by node-fhir-server-core, so a request that no
 * declaration took never reaches a handler.
 */
export class Guard {
  constructor(private readonly tokens: TokenService, private readonly authRequired: boolean) {}

  require(permission: Permission): RequestHandler {
    /** Lets the request on as `access`, or stops it with 403 if the permission is not theirs. */
    const grant = (req: Request, access: AccessContext, next: NextFunction) => {
      try {
        if ('type' in permission) Guard.authorize(access, permission.type === ':type' ? req.params.type : permission.type, permission.action, permission.role);
      } catch (err) {
        return next(err);
      }
      req.access = access;
      req.authorized = permission;
      next();
    };
    return (req, _res, next) => {
      if (req.authorized) return next(); // an earlier declaration of the same route decided
      if ('public' in permission) {
        req.authorized = permission;
        return next();
      }
      // Only a token needs a look-up; without authentication the request goes on in the same step.
      if (!this.authRequired) return grant(req, ANONYMOUS, next);
      this.authenticate(req)
        .then((access) => grant(req, access, next))
        .catch(next);
    };
  }

  /**
   * Whether an authenticated caller may do `action` on `type` (403 otherwise): the check every route
   * declares, also applied to each entry of a batch or transaction.
   */
  static authorize(access: AccessContext, type: string | undefined, action: Action, role?: 'service'): void {
    if (role === 'service' && access.role !== 'service') throw forbidden('This interaction is open to service clients only');
    if (!type || !allows(access.scope, type, action)) throw forbidden(`The token's scopes do not allow this request on ${type}`);
  }

  /** The caller behind the request's bearer token; 401 without a valid one. */
  private async authenticate(req: Request): Promise<AccessContext> {
    const m = (req.get('authorization') ?? '').match(BEARER);
    if (!m) throw unauthorized('A bearer access token is required');
    const access = await this.tokens.introspect(m[1]);
    if (!access) throw unauthorized('The access token is invalid or has expired');
    return access;
  }

  /** Stops every request that no declared route authorized (CORS preflights carry no data and pass). */
  readonly denyUndeclared: RequestHandler = (req, _res, next) => {
    if (req.authorized || req.method === 'OPTIONS') return next();
    next(notFound(`No route for ${req.method} ${req.path}`));
  };
}

/**
 * Any path outside the FHIR base is 404 unless it is one of the root routes (the token endpoint).
 * The base must be exactly `/4_0_1`: node-fhir-server-core's `/:base_version/` routes would
 * otherwise take `/%34_0_1/...` as the same base.
 */
export function exactBase(base: string, rootPaths: string[]): RequestHandler {
  return (req, _res, next) => {
    const p = req.path;
    if (isUnder(base, p) || rootPaths.includes(p)) return next();
    next(notFound(`No route for ${req.method} ${p}`));
  };
}

/** Whether `path` is the base itself or a path inside it (`/4_0_1`, `/4_0_1/Patient`; not `/4_0_1x`). */
export function isUnder(base: string, path: string): boolean {
  return path === base || path.startsWith(`${base}/`);
}
