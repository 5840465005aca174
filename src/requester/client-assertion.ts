import { randomUUID } from 'node:crypto';
import { importJWK, JWK, SignJWT } from 'jose';

/**
 * A SMART Backend Services client assertion: iss = sub = client id, aud = the token endpoint,
 * a unique jti, and an expiry five minutes ahead at most (we use four).
 */
export async function signClientAssertion(args: { clientId: string; tokenUrl: string; privateJwk: JWK; lifetimeSeconds?: number }): Promise<string> {
  const alg = args.privateJwk.alg ?? (args.privateJwk.kty === 'EC' ? 'ES384' : 'RS384');
  const key = await importJWK(args.privateJwk, alg);
  const now = Math.floor(Date.now() / 1000);
  return new SignJWT({})
    .setProtectedHeader({ alg, kid: args.privateJwk.kid, typ: 'JWT' })
    .setIssuer(args.clientId)
    .setSubject(args.clientId)
    .setAudience(args.tokenUrl)
    .setJti(randomUUID())
    .setIssuedAt(now)
    .setExpirationTime(now + (args.lifetimeSeconds ?? 240))
    .sign(key);
}
