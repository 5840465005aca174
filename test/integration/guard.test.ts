import http from 'node:http';
import { randomUUID } from 'node:crypto';
import { importJWK, SignJWT } from 'jose';
import { RunningServer } from '../../src/main';
import { loadConfig } from '../../src/config';
import type { Logger } from '../../src/logger';
import { SyntheticMember } from '../../scripts/synthetic';
import { capturingLogger, fhir, startTestServer } from '../helpers/server';
import { memberMatchBody, seedPopulation } from '../helpers/seed';
import { getToken, requestToken, TestClient, writeClientsFile } from '../helpers/clients';
import { createLocalPatient, invokeBody, startRequester } from '../helpers/payers';

/** Raw HTTP: the path reaches the server exactly as written (fetch would resolve `.` and `..` segments first). */
function raw(method: string, url: string, headers: Record<string, string> = {}, body?: unknown): Promise<{ status: number; text: string }> {
  const m = url.match(/^(http:\/\/[^/]+)(\/.*)$/) as RegExpMatchArray;
  const { hostname, port } = new URL(m[1]);
  const payload = body ? JSON.stringify(body) : undefined;
  return new Promise((resolve, reject) => {
    const req = http.request({ hostname, port, path: m[2], method, headers: { accept: 'application/fhir+json', ...(payload ? { 'content-type': 'application/fhir+json' } : {}), ...headers } }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, text: Buffer.concat(chunks).toString('utf8') }));
    });
    req.on('error', reject);
    req.end(payload);
  });
}

describe('the guard, tried as a hostile client would', () => {
  let server: RunningServer;
  let origin: string;
  let members: SyntheticMember[];
  let partner: string;
  let clients: Record<string, TestClient>;

  beforeAll(async () => {
    const written = await writeClientsFile([
      { clientId: 'partner', scopes: 'system/*.read' },
      { clientId: 'narrow-service', scopes: 'system/Coverage.read', role: 'service' },
    ]);
    clients = written.clients;
    server = await startTestServer({ authRequired: true, clientsFile: written.file });
    origin = new URL(server.baseUrl).origin;
    members = await seedPopulation(server, 2);
    partner = await getToken(server.tokenUrl, clients.partner);
  });
  afterAll(async () => server.stop());

  const bases = ['/%34_0_1', '/4_0_%31', '/%34%5F0%5F1', '/4_0_1%2F', '//4_0_1', '/4_0_1/.', '/4_0_2', '/4_0_1/..', '/4%5f0%5f1'];

  /** Every route family, as [method, path under the base]. */
  const families = (id: string): [string, string, unknown?][] => [
    ['GET', `/Patient/${id}`],
    ['PUT', `/Patient/${id}`, { resourceType: 'Patient', id }],
    ['DELETE', `/Patient/${id}`],
    ['GET', '/Patient'],
    ['POST', '/Patient/_search'],
    ['POST', '/Patient', { resourceType: 'Patient' }],
    ['GET', '/Patient/_history'],
    ['GET', `/Patient/${id}/_history`],
    ['GET', `/Patient/${id}/_history/1`],
    ['POST', '/Patient/$member-match', { resourceType: 'Parameters' }],
    ['POST', '/Patient/$sdh.s2s.invoke-export', { resourceType: 'Parameters' }],
    ['DELETE', '/Task/some-task'],
    ['GET', '/$export'],
    ['GET', '/Patient/$export'],
    ['GET', `/Patient/${id}/$export`],
    ['GET', '/Group/g/$export'],
    ['GET', '/bulkstatus/job'],
    ['DELETE', '/bulkstatus/job'],
    ['GET', '/bulkfiles/job/Patient.ndjson'],
    ['GET', `/Patient/${id}/$access-grants`],
    ['POST', `/Patient/${id}/$revoke-access`],
  ];

  it('answers 404 for any base other than exactly /4_0_1, on every route family, with or without a token', async () => {
    const id = members[0].patientId;
    const seen: string[] = [];
    for (const b of bases) {
      for (const [method, path, body] of families(id)) {
        for (const headers of [{}, { authorization: `Bearer ${partner}` }]) {
          const res = await raw(method, `${origin}${b}${path}`, headers, body);
          if (res.status !== 404) seen.push(`${method} ${b}${path} -> ${res.status}`);
          expect(res.text).not.toContain(members[0].family);
        }
      }
    }
    expect(seen).toEqual([]);
  });

  it('never serves a guarded route without a token, however its path is encoded', async () => {
    const id = members[0].patientId;
    const encodings: [string, (p: string) => string][] = [
      ['plain', (p) => p],
      ['type encoded', (p) => p.replace('/Patient', '/%50atient').replace('/Group', '/%47roup').replace('/Task', '/%54ask')],
      ['lower case', (p) => p.replace('/Patient', '/patient')],
      ['$ encoded', (p) => p.replace('$', '%24')],
      ['slash encoded', (p) => p.replace(/^\/Patient\//, '/Patient%2F')],
    ];
    const leaks: string[] = [];
    for (const [name, encode] of encodings) {
      for (const [method, path, body] of families(id)) {
        const res = await raw(method, `${server.baseUrl}${encode(path)}`, {}, body);
        if (![401, 404].includes(res.status)) leaks.push(`${name}: ${method} ${encode(path)} -> ${res.status}`);
      }
    }
    expect(leaks).toEqual([]);
    // The public routes stay public, and only in their exact spelling.
    expect((await raw('GET', `${server.baseUrl}/metadata`)).status).toBe(200);
    expect((await raw('GET', `${server.baseUrl}/.well-known/smart-configuration`)).status).toBe(200);
    expect((await raw('GET', `${server.baseUrl}/%6Detadata`)).status).toBe(404);
  });

  it('judges scopes on the decoded type: an encoded type name neither widens nor bypasses them', async () => {
    const narrow = await getToken(server.tokenUrl, clients['narrow-service'], 'system/Coverage.read');
    const h = { authorization: `Bearer ${narrow}` };
    expect((await raw('GET', `${server.baseUrl}/Coverage`, h)).status).toBe(200);
    for (const path of [`/Patient/${members[0].patientId}`, '/%50atient', `/%50atient/${members[0].patientId}`, '/Patient']) {
      const res = await raw('GET', `${server.baseUrl}${path}`, h);
      expect({ path, status: res.status }).toEqual({ path, status: path.includes('%') ? 404 : 403 });
    }
    // A partner with no match sees nothing, whatever the spelling.
    for (const path of [`/Patient/${members[0].patientId}`, `/%50atient/${members[0].patientId}`, `/Patient?_id=${members[0].patientId}`]) {
      const res = await raw('GET', `${server.baseUrl}${path}`, { authorization: `Bearer ${partner}` });
      expect(res.text).not.toContain(members[0].family);
      expect(res.status).not.toBe(500);
    }
  });
});

describe('If-Match (RFC 9110)', () => {
  let server: RunningServer;
  beforeAll(async () => {
    server = await startTestServer();
  });
  afterAll(async () => server.stop());

  it('refuses a malformed If-Match with 400 and writes nothing; honours lists, weak and strong tags and *', async () => {
    const url = `${server.baseUrl}/Patient/ifm`;
    const put = (family: string, ifMatch?: string) => fhir('PUT', url, { resourceType: 'Patient', id: 'ifm', name: [{ family }] }, ifMatch === undefined ? {} : { 'if-match': ifMatch });
    expect((await put('v1')).status).toBe(201);
    expect((await put('v2')).status).toBe(200);
    for (const bad of ['"1", "2"x', 'W/"1"x', 'W/"1" junk', '1', 'W/1', '"1', '', ',', '"a"b"']) {
      const res = await put('bad', bad);
      expect({ bad, status: res.status, type: res.body?.resourceType }).toEqual({ bad, status: 400, type: 'OperationOutcome' });
    }
    expect((await fhir('GET', url)).body.meta.versionId).toBe('2');
    expect((await put('stale', 'W/"1"')).status).toBe(412);
    expect((await put('listed', '"1", W/"2"')).status).toBe(200);
    expect((await put('strong', '"3"')).status).toBe(200);
    expect((await put('any', '*')).status).toBe(200);
    expect((await fhir('GET', url)).body).toMatchObject({ meta: { versionId: '5' }, name: [{ family: 'any' }] });
    const none = await fhir('PUT', `${server.baseUrl}/Patient/ifm-none`, { resourceType: 'Patient', id: 'ifm-none' }, { 'if-match': '*' });
    expect(none.status).toBe(412);
    expect((await fhir('GET', `${server.baseUrl}/Patient/ifm-none`)).status).toBe(404);
  });
});

describe('token endpoint, tried with malformed credentials', () => {
  let server: RunningServer;
  let clients: Record<string, TestClient>;
  beforeAll(async () => {
    const written = await writeClientsFile([
      { clientId: 'key-client', scopes: 'system/*.read' },
      { clientId: 'secret-client', scopes: 'system/*.read', secret: 'correct-horse-battery' },
    ]);
    clients = written.clients;
    server = await startTestServer({ authRequired: true, clientsFile: written.file });
  });
  afterAll(async () => server.stop());

  const form = { grant_type: 'client_credentials', scope: 'system/*.read' };

  it('answers 401 invalid_client to every malformed or wrong secret, whatever its length, never 500', async () => {
    const b64 = (s: string) => Buffer.from(s, 'latin1').toString('base64');
    const headers = [
      `Basic ${b64('secret-client:%E0%A4%A')}`,
      `Basic ${b64('%zz:correct-horse-battery')}`,
      `Basic ${b64('secret-client')}`,
      'Basic !!!not-base64!!!',
      'Basic',
      `Basic ${b64('secret-client:x')}`,
      `Basic ${b64('secret-client:correct-horse-batterx')}`,
      `Basic ${b64(`secret-client:${'y'.repeat(500)}`)}`,
      `Basic ${b64('key-client:anything')}`,
      `Basic ${b64('nobody:correct-horse-battery')}`,
    ];
    for (const authorization of headers) {
      const res = await requestToken(server.tokenUrl, form, { authorization });
      expect({ authorization, status: res.status, error: res.body.error }).toEqual({ authorization, status: 401, error: 'invalid_client' });
    }
    const good = await requestToken(server.tokenUrl, form, { authorization: `Basic ${b64('secret-client:correct-horse-battery')}` });
    expect(good.status).toBe(200);
  });

  it('requires kid in a client assertion', async () => {
    const jwk = clients['key-client'].privateJwk as Record<string, unknown>;
    const sign = async (withKid: boolean) =>
      new SignJWT({})
        .setProtectedHeader({ alg: 'ES384', typ: 'JWT', ...(withKid ? { kid: jwk.kid as string } : {}) })
        .setIssuer('key-client')
        .setSubject('key-client')
        .setAudience(server.tokenUrl)
        .setJti(randomUUID())
        .setExpirationTime(Math.floor(Date.now() / 1000) + 120)
        .sign(await importJWK(jwk, 'ES384'));
    const assertion = (a: string) => ({ ...form, client_assertion_type: 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer', client_assertion: a });
    const noKid = await requestToken(server.tokenUrl, assertion(await sign(false)));
    expect(noKid.status).toBe(401);
    expect(noKid.body.error_description).toMatch(/kid/);
    expect((await requestToken(server.tokenUrl, assertion(await sign(true)))).status).toBe(200);
    expect((await requestToken(server.tokenUrl, assertion('not.a.jwt'))).status).toBe(401);
  });
});

describe('authentication defaults', () => {
  it('is on behind a public base URL, off only when reachable from loopback alone or when turned off', () => {
    const cfg = (env: Record<string, string>) => loadConfig(env as NodeJS.ProcessEnv);
    expect(cfg({ HOST: '127.0.0.1', PUBLIC_BASE_URL: 'https://payer.example.com/4_0_1' }).authRequired).toBe(true);
    expect(cfg({ HOST: '127.0.0.1', PUBLIC_BASE_URL: 'https://payer.example.com/4_0_1' }).authReason).toMatch(/PUBLIC_BASE_URL/);
    expect(cfg({ HOST: '127.0.0.1', PUBLIC_BASE_URL: 'http://127.0.0.1:3000/4_0_1' }).authRequired).toBe(false);
    expect(cfg({ HOST: '127.0.0.1', PUBLIC_BASE_URL: 'http://localhost:3000/4_0_1' }).authRequired).toBe(false);
    expect(cfg({ HOST: '127.0.0.1' }).authRequired).toBe(false);
    expect(cfg({ HOST: '127.0.0.1', PUBLIC_BASE_URL: 'https://payer.example.com/4_0_1', AUTH_REQUIRED: 'false' }).authRequired).toBe(false);
    expect(cfg({ HOST: '0.0.0.0' }).authRequired).toBe(true);
    expect(() => cfg({ HOST: '0.0.0.0', AUTH_REQUIRED: 'false' })).toThrow(/loopback/);
  });

  it('says in the start-up log whether authentication is on and why', async () => {
    const { logger, lines } = capturingLogger();
    const server = await startTestServer({ authRequired: true, authReason: 'PUBLIC_BASE_URL https://payer.example.com/4_0_1 is not on a loopback address' }, logger);
    await server.stop();
    expect(lines.join('\n')).toMatch(/authentication ON \(PUBLIC_BASE_URL https:\/\/payer.example.com\/4_0_1 is not on a loopback address\)/);
  });

  it('logs one line per request with its whole path and status, never its query', async () => {
    const { logger, lines } = capturingLogger();
    const server = await startTestServer({}, logger);
    try {
      expect((await fhir('GET', `${server.baseUrl}/Patient?family=Secretname&birthdate=1970-01-02`)).status).toBe(200);
      expect((await fhir('GET', `${server.baseUrl}/Patient/no-such-patient`)).status).toBe(404);
      await new Promise((resolve) => setImmediate(resolve));
      const requests = lines.map((l) => JSON.parse(l)).filter((l) => l.message === 'request');
      expect(requests.map((l) => [l.method, l.path, l.status])).toEqual([
        ['GET', '/4_0_1/Patient', 200],
        ['GET', '/4_0_1/Patient/no-such-patient', 404],
      ]);
      expect(lines.join('\n')).not.toContain('Secretname');
    } finally {
      await server.stop();
    }
  });
});

describe('$member-match brute-force guard', () => {
  /** A server allowing 3 failed matches per client in 10 minutes, `count` members seeded, and each client's Authorization header. */
  async function limited(clientIds: string[], count: number, logger?: Logger) {
    const written = await writeClientsFile(clientIds.map((clientId) => ({ clientId, scopes: 'system/*.read' })));
    const server = await startTestServer({ authRequired: true, clientsFile: written.file, memberMatchMaxFailures: 3, memberMatchWindowSeconds: 600 }, logger);
    const members = await seedPopulation(server, count);
    const auth: Record<string, { authorization: string }> = {};
    for (const id of clientIds) auth[id] = { authorization: `Bearer ${await getToken(server.tokenUrl, written.clients[id])}` };
    return { server, members, auth };
  }

  it('answers 429 with Retry-After past the failure limit, per client, and logs the client without member data', async () => {
    const { logger, lines } = capturingLogger();
    const { server, members: [m], auth: { prober, honest } } = await limited(['prober', 'honest'], 1, logger);
    try {
      const url = `${server.baseUrl}/Patient/$member-match`;
      for (let i = 0; i < 3; i++) expect((await fhir('POST', url, memberMatchBody({ ...m, birthDate: `1900-01-0${i + 1}` }), prober)).status).toBe(422);
      const blocked = await fhir('POST', url, memberMatchBody(m), prober);
      expect(blocked.status).toBe(429);
      expect(blocked.body.resourceType).toBe('OperationOutcome');
      expect(Number(blocked.headers.get('retry-after'))).toBeGreaterThan(0);
      expect((await fhir('POST', url, memberMatchBody(m), honest)).status).toBe(200);
      const log = lines.filter((l) => l.includes('member-match throttled'));
      expect(log.length).toBeGreaterThan(0);
      expect(log[0]).toContain('prober');
      expect(lines.join('\n')).not.toContain(m.family);
    } finally {
      await server.stop();
    }
  });
  it('lets no more failed matches through than the limit when they arrive all at once', async () => {
    const { server, members: [m], auth: { prober } } = await limited(['prober'], 1);
    try {
      const guesses = await Promise.all(Array.from({ length: 12 }, (_, i) => fhir('POST', `${server.baseUrl}/Patient/$member-match`, memberMatchBody({ ...m, birthDate: `1900-01-${String(i + 1).padStart(2, '0')}` }), prober)));
      const statuses = guesses.map((g) => g.status);
      expect(statuses.every((s) => s === 422 || s === 429)).toBe(true);
      // Each 422 is a guess the server evaluated: never more than the limit.
      expect(statuses.filter((s) => s === 422).length).toBeLessThanOrEqual(3);
      expect(statuses.filter((s) => s === 429).length).toBeGreaterThanOrEqual(9);
    } finally {
      await server.stop();
    }
  });

  it("does not hold back an honest client's burst of matches, which mostly succeed", async () => {
    const { server, members, auth: { honest } } = await limited(['honest'], 16);
    try {
      const answers = await Promise.all(members.map((m) => fhir('POST', `${server.baseUrl}/Patient/$member-match`, memberMatchBody(m), honest)));
      expect(answers.map((a) => a.status)).toEqual(members.map(() => 200));
    } finally {
      await server.stop();
    }
  });
});

describe('invoke-export under concurrency', () => {
  it('starts exactly one exchange for 12 concurrent requests for the same member and source', async () => {
    // A source that refuses connections: the exchange stays active (retrying) while the requests race.
    const requester = await startRequester({ tokenUrl: 'http://127.0.0.1:9/oauth/token', fhirBaseUrl: 'http://127.0.0.1:9/4_0_1', client: { clientId: 'x', privateJwk: (await (await import('../../src/auth/keys')).generateClientKeys()).privateJwk } }, { remoteRetries: 0, pollMinMs: 5000 });
    try {
      const m = { patientId: 'p', memberId: 'MEM-1', family: 'Race', given: 'Rae', birthDate: '1970-01-01', gender: 'female' } as SyntheticMember;
      const local = await createLocalPatient(requester, m);
      const results = await Promise.all(Array.from({ length: 12 }, () => fhir('POST', `${requester.baseUrl}/Patient/$sdh.s2s.invoke-export`, invokeBody(local, m))));
      const statuses = results.map((r) => r.status).sort();
      expect(statuses).toEqual([200, ...Array(11).fill(409)]);
      const winner = results.find((r) => r.status === 200)?.body.id;
      for (const r of results.filter((x) => x.status === 409)) expect(r.body.issue[0].diagnostics).toContain(`Task/${winner}`);
      expect((await fhir('GET', `${requester.baseUrl}/Task?_summary=count`)).body.total).toBe(1);
      expect((await requester.runner.find({ kind: 'p2p-exchange' })).length).toBe(1);
    } finally {
      await requester.stop();
    }
  });
});
