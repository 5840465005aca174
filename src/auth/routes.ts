import { Router, Request } from 'express';
import { asyncHandler } from '../fhir/http';
import { invalidClient, OAuthError, SIGNING_ALGS, TokenService } from './token-service';
import { Guard, PUBLIC } from './guard';
import type { Logger } from '../logger';
import type { AuditLog } from '../audit/audit-log';
import { sanitizeClaimedId } from '../audit/audit-log';
import { TokenRefusalLimiter } from './token-rate-limit';

export const TOKEN_PATH = '/oauth/token';

/**
 * POST /oauth/token: SMART Backend Services client_credentials, as a form (RFC 6749 §4.4). A
 * refused request is audited with the agent `unauthenticated` (the client id it claimed only as a
 * detail) and counted against its address; an address past `limiter`'s refusals gets 429 with
 * `Retry-After` and no further AuditEvent but one summary per window.
 */
export function tokenRoutes(tokens: TokenService, tokenUrl: () => string, logger: Logger, audit?: AuditLog, limiter = new TokenRefusalLimiter({ maxRefusals: 20, windowMs: 60_000 })): Router {
  const router = Router();
  router.post(
    TOKEN_PATH,
    asyncHandler(async (req, res) => {
      res.set({ 'Cache-Control': 'no-store', Pragma: 'no-cache' });
      const address = req.ip;
      const taken = limiter.take(address);
      if ('blocked' in taken) {
        const { blocked } = taken;
        if (blocked.first) {
          logger.warn('token requests refused for a while: too many refused from one address', { address, refusals: blocked.refusals, retryAfter: blocked.retryAfterSeconds });
          await audit?.record({ kind: 'token', action: 'E', outcome: 'failure', unauthenticated: {}, address, description: `token requests from this address answered 429 for ${blocked.retryAfterSeconds} s: ${blocked.refusals} refused within ${Math.round(limiter.limits.windowMs / 1000)} s (later ones are not recorded one by one)` });
        }
        res.set('Retry-After', String(blocked.retryAfterSeconds));
        res.status(429).json({ error: 'invalid_request', error_description: `too many refused token requests from this address; retry after ${blocked.retryAfterSeconds} s` });
        return;
      }
      try {
        if (!req.is('application/x-www-form-urlencoded')) throw new OAuthError(400, 'invalid_request', 'a token request is a form: Content-Type application/x-www-form-urlencoded (RFC 6749 §4.4.2)');
        const { clientId, body } = await tokens.issue(req.body ?? {}, tokenUrl(), basicCredentials(req));
        limiter.giveBack(taken.key);
        logger.info('token issued', { client: clientId, scope: body.scope });
        await audit?.record({ kind: 'token', action: 'E', outcome: 'success', client: clientId, address, description: `access token issued for ${body.scope}` });
        res.status(200).json(body);
      } catch (err) {
        if (!(err instanceof OAuthError)) {
          limiter.giveBack(taken.key);
          throw err;
        }
        // The client as it named itself (its assertion's iss or Basic id), unverified: a detail, never the agent, never its credentials.
        const claimed = claimedClient(req);
        logger.warn('token refused', { error: err.error, claimedClient: claimed, address });
        await audit?.record({ kind: 'token', action: 'E', outcome: 'failure', unauthenticated: { claimed }, address, description: `access token refused: ${err.error}` });
        if (err.status === 401) res.set('WWW-Authenticate', 'Basic realm="token"');
        res.status(err.status).json({ error: err.error, error_description: err.message });
      }
    }),
  );
  return router;
}

/** Who a token request says it is from: the assertion's unverified `iss`, or the Basic id (for logs only). */
function claimedClient(req: Request): string | undefined {
  try {
    const assertion = (req.body as Record<string, unknown> | undefined)?.client_assertion;
    if (typeof assertion === 'string') {
      const iss = JSON.parse(Buffer.from(assertion.split('.')[1] ?? '', 'base64url').toString('utf8')).iss;
      if (typeof iss === 'string') return sanitizeClaimedId(iss);
    }
    const id = basicCredentials(req)?.id;
    return id === undefined ? undefined : sanitizeClaimedId(id);
  } catch {
    return undefined;
  }
}

/** The client_secret_basic pair (RFC 6749 §2.3.1: form-urlencoded id and secret); any malformed header is invalid_client. */
function basicCredentials(req: Request): { id: string; secret: string } | undefined {
  const header = req.get('authorization');
  if (!header || !/^Basic(\s|$)/i.test(header)) return undefined;
  const m = header.match(/^Basic\s+([A-Za-z0-9+/]+={0,2})\s*$/i);
  if (!m) throw invalidClient('malformed Basic credentials');
  const decoded = Buffer.from(m[1], 'base64').toString('utf8');
  const i = decoded.indexOf(':');
  if (i < 0) throw invalidClient('malformed Basic credentials');
  const decode = (s: string) => {
    try {
      return decodeURIComponent(s.replace(/\+/g, ' '));
    } catch {
      throw invalidClient('malformed Basic credentials');
    }
  };
  return { id: decode(decoded.slice(0, i)), secret: decode(decoded.slice(i + 1)) };
}

/** GET [base]/.well-known/smart-configuration */
export function smartConfigurationRoutes(guard: Guard, tokenUrl: () => string): Router {
  const router = Router({ caseSensitive: true });
  router.get('/.well-known/smart-configuration', guard.require(PUBLIC), (_req, res) => {
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
