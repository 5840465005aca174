import fs from 'node:fs';
import path from 'node:path';
import type { JWK } from 'jose';
import { generateClientKeys } from '../../src/auth/keys';
import { RegisteredClient, secretDigest } from '../../src/auth/client-registry';
import { signClientAssertion } from '../../src/requester/client-assertion';
import { tempDir } from './server';

export interface TestClient {
  clientId: string;
  privateJwk: JWK;
}

/** Writes a clients file with freshly generated key pairs (and optional secret clients); returns its path and the private keys. */
export async function writeClientsFile(
  specs: { clientId: string; scopes: string; alg?: 'ES384' | 'RS384'; secret?: string; role?: 'partner' | 'service'; identifiers?: { system: string; value: string }[] }[],
): Promise<{ file: string; clients: Record<string, TestClient> }> {
  const entries: RegisteredClient[] = [];
  const clients: Record<string, TestClient> = {};
  for (const s of specs) {
    if (s.secret) {
      entries.push({ clientId: s.clientId, clientSecretSha256: secretDigest(s.secret), scopes: s.scopes, ...(s.role ? { role: s.role } : {}) });
      continue;
    }
    const { publicJwk, privateJwk } = await generateClientKeys(s.alg ?? 'ES384');
    entries.push({ clientId: s.clientId, jwks: { keys: [publicJwk] }, scopes: s.scopes, ...(s.role ? { role: s.role } : {}), ...(s.identifiers ? { identifiers: s.identifiers } : {}) });
    clients[s.clientId] = { clientId: s.clientId, privateJwk };
  }
  const file = path.join(tempDir('clients-'), 'clients.json');
  fs.writeFileSync(file, JSON.stringify(entries));
  return { file, clients };
}

export async function requestToken(tokenUrl: string, form: Record<string, string>, headers: Record<string, string> = {}) {
  const res = await fetch(tokenUrl, { method: 'POST', headers: { 'content-type': 'application/x-www-form-urlencoded', ...headers }, body: new URLSearchParams(form).toString() });
  return { status: res.status, body: (await res.json()) as Record<string, string>, headers: res.headers };
}

export async function getToken(tokenUrl: string, client: TestClient, scope = 'system/*.read'): Promise<string> {
  const assertion = await signClientAssertion({ clientId: client.clientId, tokenUrl, privateJwk: client.privateJwk });
  const res = await requestToken(tokenUrl, {
    grant_type: 'client_credentials',
    scope,
    client_assertion_type: 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer',
    client_assertion: assertion,
  });
  if (res.status !== 200) throw new Error(`token request failed: ${JSON.stringify(res.body)}`);
  return res.body.access_token;
}
