import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import { createLocalJWKSet, createRemoteJWKSet, decodeJwt, decodeProtectedHeader, jwtVerify, JWTVerifyGetKey } from 'jose';
import { Collection, Database, DuplicateKeyError, StoredDoc } from '../store/types';
import { ClientRegistry, RegisteredClient, Role, roleOf } from './client-registry';
import { grantable } from './scopes';

export const ASSERTION_TYPE = 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer';
export const SIGNING_ALGS = ['RS384', 'ES384'];
const MAX_ASSERTION_LIFETIME_S = 300;
/** The longest `jti` accepted (it is stored until the assertion expires). */
export const MAX_JTI_LENGTH = 256;
/** Clock skew accepted between the client and this server, on the assertion's `exp` (and `nbf`/`iat` when present). */
export const CLOCK_SKEW_S = 60;

/** An OAuth error answer: `{error, error_description}` with its HTTP status. */
export class OAuthError extends Error {
  constructor(readonly status: 400 | 401, readonly error: string, description: string) {
    super(description);
  }
}

/** A failed client authentication: always 401 invalid_client, whatever was wrong. */
export const invalidClient = (description = 'client authentication failed') => new OAuthError(401, 'invalid_client', description);

/** Who is calling, as established by a bearer token. */
export interface AccessContext {
  clientId: string;
  scope: string;
  role: Role;
}

interface TokenDoc extends StoredDoc {
  clientId: string;
  scope: string;
  role: Role;
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

  /** Expired tokens and assertion ids are swept by their expiry. */
  async ensureIndexes(): Promise<void> {
    await this.tokens.createIndex(['exp']);
    await this.jtis.createIndex(['exp']);
  }

  /** Handles a token request's form fields; `basic` is the decoded Authorization: Basic pair, if any. */
  async issue(form: Record<string, unknown>, tokenUrl: string, basic?: { id: string; secret: string }): Promise<{ clientId: string; body: { access_token: string; token_type: 'bearer'; expires_in: number; scope: string } }> {
    if (form.grant_type !== 'client_credentials') throw new OAuthError(400, 'unsupported_grant_type', 'grant_type must be client_credentials');
    const client = basic ? this.checkSecret(basic) : await this.checkAssertion(form, tokenUrl);
    const requested = typeof form.scope === 'string' ? form.scope : '';
    if (!requested.trim()) throw new OAuthError(400, 'invalid_scope', 'scope is required');
    const granted = grantable(requested, client.scopes);
    if (granted.length === 0) throw new OAuthError(400, 'invalid_scope', 'none of the requested scopes may be granted to this client');
    const token = randomBytes(32).toString('base64url');
    const scope = granted.join(' ');
    await this.tokens.insertOne({ _id: sha256(token), clientId: client.clientId, scope, role: roleOf(client), exp: Date.now() + this.ttlSeconds * 1000 });
    void this.tokens.deleteMany({ exp: { $lt: Date.now() } }).catch(() => undefined);
    return { clientId: client.clientId, body: { access_token: token, token_type: 'bearer', expires_in: this.ttlSeconds, scope } };
  }

  /** The client and scopes behind a bearer token, or undefined if unknown or expired. */
  async introspect(token: string): Promise<AccessContext | undefined> {
    const doc = await this.tokens.findOne({ _id: sha256(token) });
    if (!doc || doc.exp < Date.now()) return undefined;
    // A token from before roles existed is a partner's: the narrower view.
    return { clientId: doc.clientId, scope: doc.scope, role: doc.role ?? 'partner' };
  }

  /**
   * Compares digests of equal length, so neither the time taken nor the answer tells anything about
   * the registered secret's length; an unknown client costs the same comparison.
   */
  private checkSecret(basic: { id: string; secret: string }): RegisteredClient {
    const client = this.clients.get(basic.id);
    // Digests compared in constant time: the stored SHA-256, or that of an older file's plain secret.
    const stored = client?.clientSecretSha256 ? Buffer.from(client.clientSecretSha256, 'base64url') : createHash('sha256').update(client?.clientSecret ?? randomBytes(32)).digest();
    const given = createHash('sha256').update(basic.secret).digest();
    const ok = stored.length === given.length && timingSafeEqual(stored, given) && (client?.clientSecret !== undefined || client?.clientSecretSha256 !== undefined);
    if (!client || !ok) throw invalidClient();
    return client;
  }

  private async checkAssertion(form: Record<string, unknown>, tokenUrl: string): Promise<RegisteredClient> {
    if (form.client_assertion_type !== ASSERTION_TYPE || typeof form.client_assertion !== 'string') {
      throw invalidClient(`client_assertion_type must be ${ASSERTION_TYPE} with a client_assertion`);
    }
    let claims: ReturnType<typeof decodeJwt>;
    let kid: unknown;
    try {
      claims = decodeJwt(form.client_assertion);
      kid = decodeProtectedHeader(form.client_assertion).kid;
    } catch {
      throw invalidClient('client_assertion is not a JWT');
    }
    if (typeof kid !== 'string' || !kid) throw invalidClient('client_assertion has no kid in its header');
    const client = typeof claims.iss === 'string' ? this.clients.get(claims.iss) : undefined;
    if (!client || (!client.jwks && !client.jwksUrl)) throw invalidClient('unknown client');
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
      throw invalidClient(`client_assertion rejected: ${(err as Error).message}`);
    }
    const now = Math.floor(Date.now() / 1000);
    if ((payload.exp as number) > now + MAX_ASSERTION_LIFETIME_S + CLOCK_SKEW_S) {
      throw invalidClient('client_assertion exp is more than 5 minutes ahead');
    }
    // jose checks iat's type, not that it is past: an assertion is not issued in the future (beyond the skew).
    if (payload.iat !== undefined && (typeof payload.iat !== 'number' || payload.iat > now + CLOCK_SKEW_S)) {
      throw invalidClient('client_assertion iat is in the future');
    }
    if (typeof payload.jti !== 'string' || payload.jti.length === 0 || payload.jti.length > MAX_JTI_LENGTH) {
      throw invalidClient(`client_assertion jti must be a string of 1 to ${MAX_JTI_LENGTH} characters`);
    }
    if (typeof payload.iss !== 'string' || typeof payload.sub !== 'string') throw invalidClient('client_assertion iss and sub must be strings');
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
