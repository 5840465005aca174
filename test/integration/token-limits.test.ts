import fs from 'node:fs';
import path from 'node:path';
import { randomUUID } from 'node:crypto';
import { importJWK, SignJWT } from 'jose';
import { RunningServer } from '../../src/main';
import { loadConfig } from '../../src/config';
import { addressKey, TokenRefusalLimiter } from '../../src/auth/token-rate-limit';
import { fhir, startTestServer } from '../helpers/server';
import { getToken, requestToken, TestClient, writeClientsFile } from '../helpers/clients';

const ASSERTION_TYPE = 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer';
const TOKEN_TYPE = 'type=http://dicom.nema.org/resources/ontology/DCM|110114';

/** The token endpoint as a hostile caller sees it: claims checked as documented, refusals recorded without trusting the claimed id, and bounded. */
describe('token endpoint: claims, body, refusals', () => {
  let server: RunningServer;
  const dirs: string[] = [];
  let clients: Record<string, TestClient>;
  let service: string;
  const basic = (id: string, secret: string) => ({ authorization: `Basic ${Buffer.from(`${id}:${secret}`).toString('base64')}` });
  const tokenEvents = async () => {
    const all: any[] = [];
    for (let offset = 0; ; offset += 100) {
      const page = (await fhir('GET', `${server.baseUrl}/AuditEvent?${TOKEN_TYPE}&_count=100&_offset=${offset}`, undefined, { authorization: `Bearer ${service}` })).body;
      const got = page.entry?.map((e: any) => e.resource) ?? [];
      all.push(...got);
      if (got.length < 100) return all;
    }
  };

  /** An assertion signed with the client's own key and the claims given (undefined: left out). */
  async function assertion(claims: Record<string, unknown>, client = clients['payer-a']) {
    const jwk = client.privateJwk as Record<string, unknown>;
    const now = Math.floor(Date.now() / 1000);
    return new SignJWT({ iss: client.clientId, sub: client.clientId, aud: server.tokenUrl, jti: randomUUID(), exp: now + 120, ...claims })
      .setProtectedHeader({ alg: 'ES384', kid: jwk.kid as string, typ: 'JWT' })
      .sign(await importJWK(jwk, 'ES384'));
  }
  const form = (a: string) => ({ grant_type: 'client_credentials', scope: 'system/*.read', client_assertion_type: ASSERTION_TYPE, client_assertion: a });

  beforeAll(async () => {
    const written = await writeClientsFile([
      { clientId: 'payer-a', scopes: 'system/*.read' },
      { clientId: 'back-office', scopes: 'system/*.*', role: 'service', secret: 'right-secret' },
    ]);
    clients = written.clients;
    // A window far longer than the test: whatever the machine's speed, the burst falls in one window.
    server = await startTestServer({ authRequired: true, clientsFile: written.file, tokenMaxRefusals: 20, tokenRefusalWindowSeconds: 3600 });
    dirs.push(server.config.dataDir, path.dirname(written.file));
    service = (await requestToken(server.tokenUrl, { grant_type: 'client_credentials', scope: 'system/*.*' }, basic('back-office', 'right-secret'))).body.access_token;
    expect(service).toBeTruthy();
  });
  afterAll(async () => {
    await server.stop();
    for (const dir of dirs) fs.rmSync(dir, { recursive: true, force: true });
  });

  it('refuses an iat in the future, a jti that is not a non-empty string, iss/sub that are not strings, and keeps exp within 5 minutes', async () => {
    const now = Math.floor(Date.now() / 1000);
    const cases: [string, Record<string, unknown>][] = [
      ['iat an hour ahead', { iat: now + 3600 }],
      ['iat as text', { iat: String(now) }],
      ['jti an object', { jti: { a: 1 } }],
      ['jti a number', { jti: 12345 }],
      ['jti empty', { jti: '' }],
      ['jti too long', { jti: 'j'.repeat(257) }],
      ['sub an object', { sub: { id: 'payer-a' } }],
      ['exp an hour ahead', { exp: now + 3600 }],
    ];
    for (const [name, claims] of cases) {
      const res = await requestToken(server.tokenUrl, form(await assertion(claims)));
      expect({ name, status: res.status, error: res.body.error, token: res.body.access_token }).toEqual({ name, status: 401, error: 'invalid_client', token: undefined });
    }
    // Within the 60 s skew and the 5 minutes, the same assertion shape is accepted.
    const ok = await requestToken(server.tokenUrl, form(await assertion({ iat: now + 30, exp: now + 290, jti: 'j'.repeat(256) })));
    expect(ok.status).toBe(200);
    expect(ok.body.access_token).toBeTruthy();
    // An object jti never reached the replay store as "[object Object]": the same object is still refused for its type, not as a replay.
    const again = await requestToken(server.tokenUrl, form(await assertion({ jti: { a: 1 } })));
    expect(again.body.error).toBe('invalid_client');
  });

  it('refuses a body that is not a form with 400 invalid_request, and still issues a token for a good one', async () => {
    const good = form(await assertion({}));
    const asJson = await fetch(server.tokenUrl, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(good) });
    expect(asJson.status).toBe(400);
    expect(await asJson.json()).toMatchObject({ error: 'invalid_request' });
    const noBody = await fetch(server.tokenUrl, { method: 'POST', headers: basic('back-office', 'right-secret') });
    expect(noBody.status).toBe(400);
    expect((await noBody.json()).error).toBe('invalid_request');
    const asText = await fetch(server.tokenUrl, { method: 'POST', headers: { 'content-type': 'text/plain' }, body: new URLSearchParams(good).toString() });
    expect(asText.status).toBe(400);
    const issued = await requestToken(server.tokenUrl, form(await assertion({})));
    expect(issued.status).toBe(200);
    expect((await fhir('GET', `${server.baseUrl}/Patient`, undefined, { authorization: `Bearer ${issued.body.access_token}` })).status).toBe(200);
  });

  it('records a refusal with the agent "unauthenticated", the claimed id only as a sanitized detail, and the address', async () => {
    const before = new Set((await tokenEvents()).map((e) => e.id));
    const res = await requestToken(server.tokenUrl, { grant_type: 'client_credentials', scope: 'system/*.read' }, basic('back-office<script>', 'wrong'));
    expect(res.status).toBe(401);
    const added = (await tokenEvents()).filter((e) => !before.has(e.id));
    expect(added).toHaveLength(1);
    const refused = added[0];
    expect(refused.outcome).toBe('4');
    expect(refused.agent).toHaveLength(1);
    expect(refused.agent[0].name).toBe('unauthenticated');
    expect(refused.agent[0].altId).toBeUndefined();
    expect(refused.agent[0].who.identifier).toBeUndefined();
    expect(refused.agent[0].network.address).toMatch(/127\.0\.0\.1|::1/);
    expect(JSON.stringify(refused)).not.toContain('<script>');
    expect(refused.entity[0].detail[0].valueString).toBe('back-office?script?');
    // Not found as the client's own: the trail searched by the real client's id holds none of the refusals.
    const asClient = (await fhir('GET', `${server.baseUrl}/AuditEvent?altid=back-office&_count=100`, undefined, { authorization: `Bearer ${service}` })).body.entry ?? [];
    expect(asClient.every((e: any) => e.resource.outcome === '0')).toBe(true);
  });

  it('cuts a burst of bad requests from one address off at the limit with 429 and Retry-After, writing a bounded number of AuditEvents', async () => {
    const before = await tokenEvents();
    const bad = () => requestToken(server.tokenUrl, { grant_type: 'client_credentials', scope: 'system/*.read' }, basic('back-office', `guess-${randomUUID()}`));
    // 16 at once, then more one by one: 60 requests in all.
    const answers = [...(await Promise.all(Array.from({ length: 16 }, bad)))];
    for (let i = 0; i < 44; i++) answers.push(await bad());
    const statuses = answers.map((a) => a.status);
    expect(statuses.filter((s) => s === 429).length).toBeGreaterThanOrEqual(60 - 20);
    expect(statuses.every((s) => s === 401 || s === 429)).toBe(true);
    const limited = answers.find((a) => a.status === 429)!;
    expect(Number(limited.headers.get('retry-after'))).toBeGreaterThan(0);
    expect(limited.body.error).toBe('invalid_request');
    const after = await tokenEvents();
    const added = after.filter((e) => !before.some((b) => b.id === e.id));
    // At most the allowance (20, some used by the other tests) plus one summary: not one per request.
    expect(added.length).toBeLessThanOrEqual(21);
    expect(added.some((e) => /answered 429/.test(e.outcomeDesc))).toBe(true);
    for (const e of added) {
      expect(e.agent[0].name).toBe('unauthenticated');
      expect(e.agent[0].altId).toBeUndefined();
    }
    // A forged X-Forwarded-For changes nothing while no proxy is trusted.
    expect((await requestToken(server.tokenUrl, { grant_type: 'client_credentials', scope: 'system/*.read' }, { ...basic('back-office', 'x'), 'x-forwarded-for': '10.9.9.9' })).status).toBe(429);
    // Even the real client with the right secret waits out the window from this address; the server still answers.
    expect((await requestToken(server.tokenUrl, { grant_type: 'client_credentials', scope: 'system/*.read' }, basic('back-office', 'right-secret'))).status).toBe(429);
    expect((await fhir('GET', `${server.baseUrl}/metadata`)).status).toBe(200);
    expect((await fhir('GET', `${server.baseUrl}/Patient`, undefined, { authorization: `Bearer ${service}` })).status).toBe(200);
    expect((await tokenEvents()).length).toBe(after.length);
  });
});

describe('token endpoint behind a trusted proxy (TRUST_PROXY)', () => {
  it('counts each caller by the address the proxy forwarded, and records that address', async () => {
    const written = await writeClientsFile([{ clientId: 'back-office', scopes: 'system/*.*', role: 'service', secret: 'right-secret' }]);
    const server = await startTestServer({ authRequired: true, clientsFile: written.file, tokenMaxRefusals: 2, tokenRefusalWindowSeconds: 3600, trustProxy: 'loopback' });
    try {
      const from = (address: string, secret = 'wrong') =>
        requestToken(server.tokenUrl, { grant_type: 'client_credentials', scope: 'system/*.*' }, { authorization: `Basic ${Buffer.from(`back-office:${secret}`).toString('base64')}`, 'x-forwarded-for': address });
      expect([(await from('203.0.113.7')).status, (await from('203.0.113.7')).status, (await from('203.0.113.7')).status]).toEqual([401, 401, 429]);
      expect((await from('198.51.100.2')).status).toBe(401);
      const service = (await from('198.51.100.3', 'right-secret')).body.access_token;
      const events = (await fhir('GET', `${server.baseUrl}/AuditEvent?_count=100`, undefined, { authorization: `Bearer ${service}` })).body.entry.map((e: any) => e.resource);
      expect(events.filter((e: any) => e.outcome === '4').map((e: any) => e.agent[0].network.address).sort()).toEqual(['198.51.100.2', '203.0.113.7', '203.0.113.7', '203.0.113.7']);
    } finally {
      await server.stop();
      for (const dir of [server.config.dataDir, path.dirname(written.file)]) fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it('refuses TRUST_PROXY=true (any client could name its own address)', () => {
    expect(() => loadConfig({ TRUST_PROXY: 'true' } as NodeJS.ProcessEnv)).toThrow(/TRUST_PROXY/);
    expect(loadConfig({ TRUST_PROXY: '1' } as NodeJS.ProcessEnv).trustProxy).toBe(1);
    expect(loadConfig({} as NodeJS.ProcessEnv).trustProxy).toBeUndefined();
    expect(loadConfig({} as NodeJS.ProcessEnv)).toMatchObject({ tokenMaxRefusals: 20, tokenRefusalWindowSeconds: 60 });
  });
});

describe('TokenRefusalLimiter', () => {
  it('gives a window of refusals per address, gives back successes, and forgets the window when it ends (fake clock)', () => {
    let now = 0;
    const limiter = new TokenRefusalLimiter({ maxRefusals: 3, windowMs: 60_000 }, () => now);
    for (let i = 0; i < 3; i++) expect('key' in limiter.take('10.0.0.1')).toBe(true);
    const blocked = limiter.take('10.0.0.1');
    expect(blocked).toEqual({ blocked: { retryAfterSeconds: 60, first: true, refusals: 3 } });
    expect(limiter.take('10.0.0.1')).toMatchObject({ blocked: { first: false } });
    expect('key' in limiter.take('10.0.0.2')).toBe(true);
    const ok = limiter.take('10.0.0.3') as { key: string };
    limiter.giveBack(ok.key);
    for (let i = 0; i < 3; i++) expect('key' in limiter.take('10.0.0.3')).toBe(true);
    now = 60_000;
    expect('key' in limiter.take('10.0.0.1')).toBe(true);
  });

  it('counts an IPv6 host by its /64 and an IPv4-mapped address as IPv4', () => {
    expect(addressKey('2001:db8:1:2:aaaa::1')).toBe(addressKey('2001:db8:1:2:bbbb:cccc:dddd:eeee'));
    expect(addressKey('2001:db8:1:2::1')).toBe('2001:db8:1:2::/64');
    expect(addressKey('2001:db8:1:3::1')).not.toBe(addressKey('2001:db8:1:2::1'));
    expect(addressKey('::1')).toBe('0:0:0:0::/64');
    expect(addressKey('::ffff:10.1.2.3')).toBe('10.1.2.3');
  });

  it('keeps the table bounded under a flood of addresses: new ones share one bucket', () => {
    const now = 0;
    const limiter = new TokenRefusalLimiter({ maxRefusals: 2, windowMs: 60_000, maxAddresses: 100 }, () => now);
    const outcomes = Array.from({ length: 10_000 }, (_, i) => limiter.take(`10.${(i >> 16) & 255}.${(i >> 8) & 255}.${i & 255}`));
    expect(limiter.size).toBeLessThanOrEqual(101);
    expect(outcomes.filter((o) => 'key' in o).length).toBeLessThanOrEqual(100 * 2 + 2);
  });
});
