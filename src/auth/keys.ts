import { randomUUID } from 'node:crypto';
import { exportJWK, generateKeyPair, JWK } from 'jose';

export type SigningAlg = 'ES384' | 'RS384';

/** A new client key pair for SMART Backend Services: the public JWK to register, the private one to keep. */
export async function generateClientKeys(alg: SigningAlg = 'ES384'): Promise<{ publicJwk: JWK; privateJwk: JWK }> {
  const { publicKey, privateKey } = await generateKeyPair(alg, { extractable: true, ...(alg === 'RS384' ? { modulusLength: 2048 } : {}) });
  const kid = randomUUID();
  const publicJwk = { ...(await exportJWK(publicKey)), kid, alg, use: 'sig', key_ops: ['verify'] };
  const privateJwk = { ...(await exportJWK(privateKey)), kid, alg };
  return { publicJwk, privateJwk };
}
