import { Router, Request, RequestHandler } from 'express';
import { asyncHandler } from '../fhir/http';
import { forbidden, unauthorized } from '../fhir/outcome';
import { OAuthError, SIGNING_ALGS, TokenService, AccessContext } from './token-service';
import { Action, allows } from './scopes';
import type { Logger } from '../logger';

export const TOKEN_PATH = '/oauth/token';

declare module 'express-serve-static-core' {
  interface Request {
    /** Who is calling: set by the bearer guard (or `anonymous` with every scope when auth is off). */
    access?: AccessContext;
  }
}

export const ANONYMOUS: AccessContext = { clientId: 'anonymous', scope: 'system/*.*' };

/** POST /oauth/token: SMART Backend Services client_credentials. */
export function tokenRoutes(tokens: TokenService, tokenUrl: () => string, logger: Logger): Router {
  const router = Router();
  router.post(
    TOKEN_PATH,
    asyncHandler(async (req, res) => {
      res.set({ 'Cache-Control': 'no-store', Pragma: 'no-cache' });
      try {
        const answer = await tokens.issue(req.body ?? {}, tokenUrl(), basicCredentials(req));
        logger.info('token issued', { scope: answer.scope });
        res.status(200).json(answer);
      } catch (err) {
        if (!(err instanceof OAuthError)) throw err;
        logger.warn('token refused', { error: err.error });
        if (err.status === 401) res.set('WWW-Authenticate', 'Basic realm="token"');
        res.status(err.status).json({ error: err.error, error_description: err.message });
      }
    }),
  );
  return router;
}

function basicCredentials(req: Request): { id: string; secret: string } | undefined {
  const m = (req.get('authorization') ?? '').match(/^Basic\s+(.+)$/i);
  if (!m) return undefined;
  const decoded = Buffer.from(m[1], 'base64').toString('utf8');
  const i = decoded.indexOf(':');
  if (i < 0) return undefined;
  return { id: decodeURIComponent(decoded.slice(0, i)), secret: decodeURIComponent(decoded.slice(i + 1)) };
}

/** GET [base]/.well-known/smart-configuration */
export function smartConfigurationRoutes(tokenUrl: () => string): Router {
  const router = Router();
  router.get('/.well-known/smart-configuration', (_req, res) => {
    res.type('application/json').send(
      JSON.stringify({
        token_endpoint: tokenUrl(),
        token_endpoint_auth_methods_supported: ['private_key_jwt', 'client_secret_basic'],
        token_endpoint_auth_signing_alg_values_supported: SIGNING_ALGS,
        grant_types_supported: ['client_credentials'],
        scopes_supported: ['system/*.read', 'system/*.rs', 'system/*.write', 'system/*.cruds', 'system/Patient.read', 'system/Task.write'],
        capabilities: ['client-confidential-asymmetric', 'client-confidential-symmetric', 'permission-v1', 'permission-v2'],
      }),
    );
  });
  return router;
}

/** What a request needs: an action on a type, or only a known caller (checked further by the handler). */
export function requiredPermission(method: string, path: string): { type: string; action: Action } | 'authenticated' {
  const seg = path.split('/').filter(Boolean);
  if (seg.length === 0 || seg[0].startsWith('$') || seg[0] === 'bulkstatus' || seg[0] === 'bulkfiles') return 'authenticated';
  const type = seg[0];
  const op = seg.find((s) => s.startsWith('$'));
  if (op === '$export') return 'authenticated';
  if (op === '$member-match') return { type: 'Patient', action: 'r' };
  if (op === '$sdh.s2s.invoke-export') return { type: 'Task', action: 'c' };
  if (op) return { type, action: method === 'GET' ? 'r' : 'c' };
  if (method === 'GET' || method === 'HEAD') return { type, action: seg.length === 1 ? 's' : 'r' };
  if (method === 'POST') return seg[1] === '_search' ? { type, action: 's' } : { type, action: 'c' };
  if (method === 'PUT' || method === 'PATCH') return { type, action: 'u' };
  if (method === 'DELETE') return { type, action: 'd' };
  return { type, action: 'r' };
}

/** Requires a valid bearer token whose scopes allow the request, on every guarded FHIR route. */
export function bearerGuard(tokens: TokenService, authRequired: boolean): RequestHandler {
  return asyncHandler(async (req, _res, next) => {
    if (!authRequired) {
      req.access = ANONYMOUS;
      return next();
    }
    const m = (req.get('authorization') ?? '').match(/^Bearer\s+([A-Za-z0-9\-._~+/]+=*)$/i);
    if (!m) throw unauthorized('A bearer access token is required');
    const access = await tokens.introspect(m[1]);
    if (!access) throw unauthorized('The access token is invalid or has expired');
    const need = requiredPermission(req.method, req.path);
    if (need !== 'authenticated' && !allows(access.scope, need.type, need.action)) {
      throw forbidden(`The token's scopes do not allow this request on ${need.type}`);
    }
    req.access = access;
    next();
  });
}
