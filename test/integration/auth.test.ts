import { randomUUID } from 'node:crypto';
import { importJWK, SignJWT } from 'jose';
import { RunningServer } from '../../src/main';
import { loadConfig } from '../../src/config';
import { generateClientKeys } from '../../src/auth/keys';
import { signClientAssertion } from '../../src/requester/client-assertion';
import { fhir, startTestServer } from '../helpers/server';
import { requestToken, TestClient, writeClientsFile, getToken } from '../helpers/clients';

const ASSERTION_TYPE = 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer';

describe('SMART Backend Services authorization', () => {
  let server: RunningServer;
  let clients: Record<string, TestClient>;

  beforeAll(async () => {
    const written = await writeClientsFile([
      { clientId: 'payer-a', scopes: 'system/*.read system/Task.write' },
      { clientId: 'payer-rsa', scopes: 'system/*.rs', alg: 'RS384' },
      { clientId: 'payer-secret', scopes: 'system/*.read', secret: 's3cret-value' },
    ]);
    clients = written.clients;
    server = await startTestServer({ authRequired: true, clientsFile: written.file });
  });
  afterAll(async () => server.stop());

  const assertionForm = (assertion: string, scope = 'system/*.read') => ({ grant_type: 'client_credentials', scope, client_assertion_type: ASSERTION_TYPE, client_assertion: assertion });

  /** An assertion with chosen claims, signed with the given key. */
  async function customAssertion(privateJwk: Record<string, unknown>, claims: { iss?: string; aud?: string; exp?: number; jti?: string }) {
    const key = await importJWK(privateJwk, 'ES384');
    const now = Math.floor(Date.now() / 1000);
    return new SignJWT({})
      .setProtectedHeader({ alg: 'ES384', kid: privateJwk.kid as string, typ: 'JWT' })
      .setIssuer(claims.iss ?? 'payer-a')
      .setSubject(claims.iss ?? 'payer-a')
      .setAudience(claims.aud ?? server.tokenUrl)
      .setJti(claims.jti ?? randomUUID())
      .setExpirationTime(claims.exp ?? now + 120)
      .sign(key);
  }

  it('advertises the token endpoint and methods in smart-configuration, without a token', async () => {
    const res = await fetch(`${server.baseUrl}/.well-known/smart-configuration`);
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toMatch(/^application\/json/);
    const body = await res.json();
    expect(body.token_endpoint).toBe(server.tokenUrl);
    expect(body.token_endpoint_auth_methods_supported).toEqual(expect.arrayContaining(['private_key_jwt', 'client_secret_basic']));
    expect(body.token_endpoint_auth_signing_alg_values_supported).toEqual(expect.arrayContaining(['RS384', 'ES384']));
    expect(body.grant_types_supported).toEqual(['client_credentials']);
  });

  it('issues a token for a good ES384 assertion, and the token opens FHIR routes', async () => {
    const assertion = await signClientAssertion({ clientId: 'payer-a', tokenUrl: server.tokenUrl, privateJwk: clients['payer-a'].privateJwk });
    const res = await requestToken(server.tokenUrl, assertionForm(assertion));
    expect(res.status).toBe(200);
    expect(res.body).toMatchObject({ token_type: 'bearer', scope: 'system/*.read' });
    expect(Number(res.body.expires_in)).toBeGreaterThan(0);
    expect(res.headers.get('cache-control')).toBe('no-store');
    expect((await fhir('GET', `${server.baseUrl}/Patient`)).status).toBe(401);
    expect((await fhir('GET', `${server.baseUrl}/Patient`, undefined, { authorization: 'Bearer not-a-token' })).status).toBe(401);
    const ok = await fhir('GET', `${server.baseUrl}/Patient`, undefined, { authorization: `Bearer ${res.body.access_token}` });
    expect(ok.status).toBe(200);
    expect((await fhir('GET', `${server.baseUrl}/metadata`)).status).toBe(200);
  });

  it('accepts RS384 assertions and v2 scopes', async () => {
    const token = await getToken(server.tokenUrl, clients['payer-rsa'], 'system/Patient.rs');
    expect((await fhir('GET', `${server.baseUrl}/Patient`, undefined, { authorization: `Bearer ${token}` })).status).toBe(200);
    expect((await fhir('GET', `${server.baseUrl}/Coverage`, undefined, { authorization: `Bearer ${token}` })).status).toBe(403);
  });

  it('enforces scopes: a read token cannot write', async () => {
    const token = await getToken(server.tokenUrl, clients['payer-a']);
    const res = await fhir('POST', `${server.baseUrl}/Patient`, { resourceType: 'Patient' }, { authorization: `Bearer ${token}` });
    expect(res.status).toBe(403);
    expect(res.body.resourceType).toBe('OperationOutcome');
  });

  it('rejects a bad signature, a wrong audience, an expired or too-long assertion, a replayed jti and an unknown client', async () => {
    const other = await generateClientKeys('ES384');
    const own = clients['payer-a'].privateJwk as unknown as Record<string, unknown>;
    const now = Math.floor(Date.now() / 1000);
    const cases: [string, string, string][] = [
      ['bad signature', await customAssertion({ ...other.privateJwk, kid: own.kid } as Record<string, unknown>, {}), 'invalid_client'],
      ['wrong aud', await customAssertion(own, { aud: 'https://elsewhere.example.com/token' }), 'invalid_client'],
      ['expired', await customAssertion(own, { exp: now - 600 }), 'invalid_client'],
      ['exp too far ahead', await customAssertion(own, { exp: now + 3600 }), 'invalid_client'],
      ['unknown client', await customAssertion(own, { iss: 'stranger' }), 'invalid_client'],
    ];
    for (const [name, assertion, error] of cases) {
      const res = await requestToken(server.tokenUrl, assertionForm(assertion));
      expect({ name, status: res.status, error: res.body.error }).toEqual({ name, status: 401, error });
    }
    const once = await customAssertion(own, { jti: 'the-same-jti' });
    expect((await requestToken(server.tokenUrl, assertionForm(once))).status).toBe(200);
    const replay = await requestToken(server.tokenUrl, assertionForm(once));
    expect(replay.status).toBe(400);
    expect(replay.body.error).toBe('invalid_grant');
  });

  it('rejects scopes the client may not have, and other grant types', async () => {
    const assertion = await signClientAssertion({ clientId: 'payer-a', tokenUrl: server.tokenUrl, privateJwk: clients['payer-a'].privateJwk });
    const res = await requestToken(server.tokenUrl, assertionForm(assertion, 'system/*.write'));
    expect(res.status).toBe(400);
    expect(res.body.error).toBe('invalid_scope');
    const grant = await requestToken(server.tokenUrl, { grant_type: 'password', username: 'x', password: 'y' });
    expect(grant.body.error).toBe('unsupported_grant_type');
  });

  it('supports client_secret_basic', async () => {
    const basic = (id: string, secret: string) => ({ authorization: `Basic ${Buffer.from(`${id}:${secret}`).toString('base64')}` });
    const good = await requestToken(server.tokenUrl, { grant_type: 'client_credentials', scope: 'system/*.read' }, basic('payer-secret', 's3cret-value'));
    expect(good.status).toBe(200);
    const bad = await requestToken(server.tokenUrl, { grant_type: 'client_credentials', scope: 'system/*.read' }, basic('payer-secret', 'wrong'));
    expect(bad.status).toBe(401);
    expect(bad.body.error).toBe('invalid_client');
  });
});

describe('auth configuration', () => {
  it('refuses to start with auth off on a non-loopback address, and defaults to auth on there', () => {
    expect(() => loadConfig({ HOST: '0.0.0.0', AUTH_REQUIRED: 'false' } as NodeJS.ProcessEnv)).toThrow(/loopback/);
    expect(loadConfig({ HOST: '0.0.0.0' } as NodeJS.ProcessEnv).authRequired).toBe(true);
    expect(loadConfig({ HOST: '127.0.0.1' } as NodeJS.ProcessEnv).authRequired).toBe(false);
  });
});
