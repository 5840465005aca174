import { Router, Request } from 'express';
import { asyncHandler } from '../fhir/http';
import { invalidClient, OAuthError, SIGNING_ALGS, TokenService } from './token-service';
import { Guard, PUBLIC } from './guard';
import type { Logger } from '../logger';

export const TOKEN_PATH = '/oauth/token';

/** POST /oauth/token: SMART Backend Services client_credentials. */
export function tokenRoutes(tokens: TokenService, tokenUrl: () => string, logger: Logger): Router {
  const router = Router();
  router.post(
    TOKEN_PATH,
    asyncHandler(async (req, res) => {
      res.set({ 'Cache-Control': 'no-store', Pragma: 'no-cache' });
      try {
        const { clientId, body } = await tokens.issue(req.body ?? {}, tokenUrl(), basicCredentials(req));
        logger.info('token issued', { client: clientId, scope: body.scope });
        res.status(200).json(body);
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
