import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import { createLocalJWKSet, createRemoteJWKSet, decodeJwt, jwtVerify, JWTVerifyGetKey } from 'jose';
import { Collection, Database, DuplicateKeyError, StoredDoc } from '../store/types';
import { ClientRegistry, RegisteredClient } from './client-registry';
import { grantable } from './scopes';

export const ASSERTION_TYPE = 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer';
export const SIGNING_ALGS = ['RS384', 'ES384'];
const MAX_ASSERTION_LIFETIME_S = 300;
const CLOCK_SKEW_S = 60;

/** An OAuth error answer: `{error, error_description}` with its HTTP status. */
export class OAuthError extends Error {
  constructor(readonly status: 400 | 401, readonly error: string, description: string) {
    super(description);
  }
}

export interface AccessContext {
  clientId: string;
  scope: string;
}

interface TokenDoc extends StoredDoc {
  clientId: string;
  scope: string;
  exp: number;
}
interface JtiDoc extends StoredDoc {
  exp: number;
}

const sha256 = (s: string) => createHash('sha256').update(s).digest('hex');

/**
 * SMART Backend Services authorization: verifies client assertions (private_key_jwt) or client
 * secrets (client_secret_basic), refuses replayed assertions, and issues opaque access tokens that
 * are stored hashed, so a token survives a restart and a database dump does not leak usable tokens.
 */
export class TokenService {
  private readonly tokens: Collection<TokenDoc>;
  private readonly jtis: Collection<JtiDoc>;
  private readonly remoteKeySets = new Map<string, JWTVerifyGetKey>();

  constructor(db: Database, private readonly clients: ClientRegistry, private readonly ttlSeconds: number) {
    this.tokens = db.collection<TokenDoc>('auth_tokens');
    this.jtis = db.collection<JtiDoc>('auth_jti');
  }

  /** Handles a token request's form fields; `basic` is the decoded Authorization: Basic pair, if any. */
  async issue(form: Record<string, unknown>, tokenUrl: string, basic?: { id: string; secret: string }): Promise<{ access_token: string; token_type: 'bearer'; expires_in: number; scope: string }> {
    if (form.grant_type !== 'client_credentials') throw new OAuthError(400, 'unsupported_grant_type', 'grant_type must be client_credentials');
    const client = basic ? this.checkSecret(basic) : await this.checkAssertion(form, tokenUrl);
    const requested = typeof form.scope === 'string' ? form.scope : '';
    if (!requested.trim()) throw new OAuthError(400, 'invalid_scope', 'scope is required');
    const granted = grantable(requested, client.scopes);
    if (granted.length === 0) throw new OAuthError(400, 'invalid_scope', 'none of the requested scopes may be granted to this client');
    const token = randomBytes(32).toString('base64url');
    const scope = granted.join(' ');
    await this.tokens.insertOne({ _id: sha256(token), clientId: client.clientId, scope, exp: Date.now() + this.ttlSeconds * 1000 });
    void this.tokens.deleteMany({ exp: { $lt: Date.now() } }).catch(() => undefined);
    return { access_token: token, token_type: 'bearer', expires_in: this.ttlSeconds, scope };
  }

  /** The client and scopes behind a bearer token, or undefined if unknown or expired. */
  async introspect(token: string): Promise<AccessContext | undefined> {
    const doc = await this.tokens.findOne({ _id: sha256(token) });
    if (!doc || doc.exp < Date.now()) return undefined;
    return { clientId: doc.clientId, scope: doc.scope };
  }

  private checkSecret(basic: { id: string; secret: string }): RegisteredClient {
    const client = this.clients.get(basic.id);
    const expected = client?.clientSecret;
    const ok = !!expected && expected.length === basic.secret.length && timingSafeEqual(Buffer.from(expected), Buffer.from(basic.secret));
    if (!client || !ok) throw new OAuthError(401, 'invalid_client', 'client authentication failed');
    return client;
  }

  private async checkAssertion(form: Record<string, unknown>, tokenUrl: string): Promise<RegisteredClient> {
    if (form.client_assertion_type !== ASSERTION_TYPE || typeof form.client_assertion !== 'string') {
      throw new OAuthError(400, 'invalid_request', `client_assertion_type must be ${ASSERTION_TYPE} with a client_assertion`);
    }
    let claims: ReturnType<typeof decodeJwt>;
    try {
      claims = decodeJwt(form.client_assertion);
    } catch {
      throw new OAuthError(400, 'invalid_client', 'client_assertion is not a JWT');
    }
    const client = typeof claims.iss === 'string' ? this.clients.get(claims.iss) : undefined;
    if (!client || (!client.jwks && !client.jwksUrl)) throw new OAuthError(400, 'invalid_client', 'unknown client');
    let payload;
    try {
      ({ payload } = await jwtVerify(form.client_assertion, this.keySet(client), {
        issuer: client.clientId,
        subject: client.clientId,
        audience: tokenUrl,
        algorithms: SIGNING_ALGS,
        requiredClaims: ['exp', 'jti'],
        clockTolerance: CLOCK_SKEW_S,
      }));
    } catch (err) {
      throw new OAuthError(400, 'invalid_client', `client_assertion rejected: ${(err as Error).message}`);
    }
    const now = Math.floor(Date.now() / 1000);
    if ((payload.exp as number) > now + MAX_ASSERTION_LIFETIME_S + CLOCK_SKEW_S) {
      throw new OAuthError(400, 'invalid_client', 'client_assertion exp is more than 5 minutes ahead');
    }
    try {
      await this.jtis.insertOne({ _id: `${client.clientId}|${payload.jti}`, exp: ((payload.exp as number) + CLOCK_SKEW_S) * 1000 });
    } catch (err) {
      if (err instanceof DuplicateKeyError) throw new OAuthError(400, 'invalid_grant', 'client_assertion jti was already used');
      throw err;
    }
    void this.jtis.deleteMany({ exp: { $lt: Date.now() } }).catch(() => undefined);
    return client;
  }

  private keySet(client: RegisteredClient): JWTVerifyGetKey {
    if (client.jwks) return createLocalJWKSet(client.jwks);
    let ks = this.remoteKeySets.get(client.clientId);
    if (!ks) {
      ks = createRemoteJWKSet(new URL(client.jwksUrl as string), { timeoutDuration: 5000, cacheMaxAge: 10 * 60_000 });
      this.remoteKeySets.set(client.clientId, ks);
    }
    return ks;
  }
}
