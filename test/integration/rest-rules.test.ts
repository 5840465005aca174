import { RunningServer } from '../../src/main';
import { fhir, startTestServer } from '../helpers/server';
import { getToken, writeClientsFile } from '../helpers/clients';

/**
 * What a client that sends the wrong thing gets: a 4xx OperationOutcome saying what is wrong, and
 * nothing written. Each case is one a probing client (or a Postman collection) sent.
 */
describe('REST rules and bad input', () => {
  let server: RunningServer;
  let base: string;
  let token: string;
  const auth = () => ({ authorization: `Bearer ${token}` });
  const count = async (type: string) => (await fhir('GET', `${base}/${type}?_summary=count`, undefined, auth())).body.total;
  const raw = (method: string, path: string, body: string | undefined, headers: Record<string, string>) => fetch(`${base}/${path}`, { method, body, headers: { ...auth(), ...headers } });
  const expectOutcome = async (res: Response, status: number) => {
    expect(res.status).toBe(status);
    expect(((await res.json()) as { resourceType: string }).resourceType).toBe('OperationOutcome');
  };

  beforeAll(async () => {
    const { file, clients } = await writeClientsFile([{ clientId: 'back-office', scopes: 'system/*.*', role: 'service' }]);
    server = await startTestServer({ authRequired: true, clientsFile: file, corsOrigins: ['https://app.example.com'] });
    base = server.baseUrl;
    token = await getToken(server.tokenUrl, clients['back-office'], 'system/*.*');
    expect((await fhir('PUT', `${base}/Patient/p1`, { resourceType: 'Patient', id: 'p1', name: [{ family: 'Known' }] }, auth())).status).toBe(201);
  });
  afterAll(async () => server.stop());

  it('415 for a body that is not FHIR JSON, 406 for an answer the client cannot take, 405 with Allow for a method not served', async () => {
    const before = await count('Patient');
    await expectOutcome(await raw('POST', 'Patient', 'resourceType=Patient', { 'content-type': 'text/plain' }), 415);
    await expectOutcome(await raw('PUT', 'Patient/p1', '<Patient/>', { 'content-type': 'application/fhir+xml' }), 415);
    expect(await count('Patient')).toBe(before);
    await expectOutcome(await raw('GET', 'Patient/p1', undefined, { accept: 'application/fhir+xml' }), 406);
    await expectOutcome(await raw('GET', 'Patient/p1?_format=xml', undefined, {}), 406);
    expect((await raw('GET', 'Patient/p1', undefined, { accept: 'application/fhir+json' })).status).toBe(200);
    for (const [method, path, allow] of [['POST', 'Patient/p1', 'GET, PUT, PATCH, DELETE'], ['PATCH', 'Patient', 'GET, POST, PUT, DELETE'], ['PUT', 'Patient/_history', 'GET'], ['DELETE', 'Patient/p1/_history/1', 'GET'], ['GET', '', 'POST'], ['GET', 'Patient/$member-match', 'POST'], ['PUT', 'Patient/p1/$everything', 'GET'], ['DELETE', 'Group/g1/$davinci-data-export', 'POST']]) {
      const res = await raw(method, path, ['DELETE', 'GET'].includes(method) ? undefined : '{}', { 'content-type': 'application/fhir+json' });
      expect({ method, path, status: res.status, allow: res.headers.get('allow') }).toEqual({ method, path, status: 405, allow });
    }
  });

  it('a read tells its length and media type; HEAD sends no body; a conditional read of the current version is 304', async () => {
    const read = await raw('GET', 'Patient/p1', undefined, {});
    const text = await read.text();
    expect(read.headers.get('content-type')).toBe('application/fhir+json; charset=utf-8');
    expect(Number(read.headers.get('content-length'))).toBe(Buffer.byteLength(text));
    // Idle connections stay open past a load balancer's 60 s idle timeout (KEEP_ALIVE_SECONDS).
    expect(read.headers.get('keep-alive')).toBe('timeout=65');
    expect(JSON.parse(text)).toMatchObject({ resourceType: 'Patient', id: 'p1' });
    const head = await raw('HEAD', 'Patient/p1', undefined, {});
    expect(head.status).toBe(200);
    expect(head.headers.get('content-length')).toBe(read.headers.get('content-length'));
    expect(await head.text()).toBe('');
    const etag = read.headers.get('etag') as string;
    expect(etag).toMatch(/^W\/"\d+"$/);
    // (fetch adds Cache-Control: no-cache to a conditional request: the server evaluates it all the same.)
    for (const match of [etag, `W/"0", ${etag}`, '*', etag.slice(2)]) {
      const same = await raw('GET', 'Patient/p1', undefined, { 'if-none-match': match });
      expect({ match, status: same.status }).toEqual({ match, status: 304 });
      expect(same.headers.get('etag')).toBe(etag);
      expect(await same.text()).toBe('');
    }
    const older = await raw('GET', 'Patient/p1', undefined, { 'if-none-match': 'W/"0"' });
    expect(older.status).toBe(200);
    expect((await older.json()).id).toBe('p1');
    const lastModified = read.headers.get('last-modified') as string;
    expect((await raw('GET', 'Patient/p1', undefined, { 'if-modified-since': lastModified })).status).toBe(304);
    expect((await raw('GET', 'Patient/p1/_history/1', undefined, { 'if-modified-since': lastModified })).status).toBe(304);
    const before = new Date(Date.parse(lastModified) - 1000).toUTCString();
    expect((await raw('GET', 'Patient/p1', undefined, { 'if-modified-since': before })).status).toBe(200);
    // If-None-Match decides when both are sent.
    expect((await raw('GET', 'Patient/p1', undefined, { 'if-none-match': 'W/"0"', 'if-modified-since': lastModified })).status).toBe(200);
  });

  it("every answer carries helmet's security headers, a read and an error alike", async () => {
    for (const res of [await raw('GET', 'Patient/p1', undefined, {}), await raw('GET', 'Patient/not-here', undefined, {}), await fetch(`${base}/metadata`)]) {
      expect(res.headers.get('content-security-policy')).toBe("default-src 'none';frame-ancestors 'none'");
      expect(res.headers.get('x-content-type-options')).toBe('nosniff');
      expect(res.headers.get('x-frame-options')).toBe('SAMEORIGIN');
      expect(res.headers.get('referrer-policy')).toBe('no-referrer');
      expect(res.headers.get('x-powered-by')).toBeNull();
      await res.arrayBuffer();
    }
  });

  it('CORS: a preflight needs no token, and only the configured origins are allowed', async () => {
    const preflight = await fetch(`${base}/Patient/p1`, { method: 'OPTIONS', headers: { origin: 'https://app.example.com', 'access-control-request-method': 'GET', 'access-control-request-headers': 'authorization' } });
    expect(preflight.status).toBe(204);
    expect(preflight.headers.get('access-control-allow-origin')).toBe('https://app.example.com');
    expect(preflight.headers.get('access-control-allow-headers')).toMatch(/Authorization/i);
    const read = await fetch(`${base}/Patient/p1`, { headers: { ...auth(), origin: 'https://app.example.com' } });
    expect(read.headers.get('access-control-allow-origin')).toBe('https://app.example.com');
    expect(read.headers.get('access-control-expose-headers')).toMatch(/ETag/);
    const other = await fetch(`${base}/Patient/p1`, { method: 'OPTIONS', headers: { origin: 'https://evil.example.com', 'access-control-request-method': 'GET' } });
    expect(other.headers.get('access-control-allow-origin')).toBeNull();
  });

  it('CORS open to every origin (the default): the same headers on every answer, and preflights answered without a token', async () => {
    const open = await startTestServer({ authRequired: true });
    try {
      const preflight = await fetch(`${open.baseUrl}/Patient/p1`, { method: 'OPTIONS', headers: { origin: 'https://any.example.org', 'access-control-request-method': 'PUT', 'access-control-request-headers': 'authorization,if-match' } });
      expect(preflight.status).toBe(204);
      expect(preflight.headers.get('access-control-allow-origin')).toBe('*');
      expect(preflight.headers.get('access-control-allow-methods')).toMatch(/PUT/);
      expect(preflight.headers.get('access-control-allow-headers')).toMatch(/If-Match/);
      for (const res of [await fetch(`${open.baseUrl}/metadata`, { headers: { origin: 'https://any.example.org' } }), await fetch(`${open.baseUrl}/Patient/p1`, { headers: { origin: 'https://other.example.net' } })]) {
        expect(res.headers.get('access-control-allow-origin')).toBe('*');
        expect(res.headers.get('access-control-expose-headers')).toMatch(/Content-Location.*ETag/);
        await res.arrayBuffer();
      }
    } finally {
      await open.stop();
    }
  });

  it('a POST kick-off needs a Parameters body, with well-formed parts', async () => {
    const kickoff = (body: string | undefined) => raw('POST', 'Patient/$export', body, { 'content-type': 'application/fhir+json', prefer: 'respond-async' });
    for (const body of ['"a string"', 'null', '42', undefined, '[]', '{"resourceType":"Patient"}', '{"resourceType":"Parameters","parameter":[null]}', '{"resourceType":"Parameters","parameter":5}', '{"resourceType":"Parameters","parameter":[{"name":"_type","valueInteger":3}]}']) {
      const res = await kickoff(body);
      expect({ body, status: res.status, location: res.headers.get('content-location') }).toEqual({ body, status: 400, location: null });
    }
    expect((await kickoff('{"resourceType":"Parameters","parameter":[{"name":"_type","valueString":"Patient"}]}')).status).toBe(202);
  });

  it('POST _search takes a form, nothing else', async () => {
    for (const body of ['[1,2]', '"text"', '7']) await expectOutcome(await raw('POST', 'Patient/_search', body, { 'content-type': 'application/json' }), 415);
    const form = await raw('POST', 'Patient/_search', 'family=known', { 'content-type': 'application/x-www-form-urlencoded' });
    expect(((await form.json()) as { entry: { resource: { id: string } }[] }).entry.map((e) => e.resource.id)).toEqual(['p1']);
  });

  it('history paging and dates are checked as search checks them; impossible dates are refused, never rolled over', async () => {
    for (const q of ['_count=-1', '_count=abc', '_offset=-1', '_since=2020-02-30T00:00:00Z', '_since=yesterday']) await expectOutcome(await raw('GET', `Patient/p1/_history?${q}`, undefined, {}), 400);
    for (const q of ['birthdate=2021-02-31', 'birthdate=2021-02-29', 'birthdate=2020-01-01T25:61:00Z', '_lastUpdated=ge2020-13-01']) await expectOutcome(await raw('GET', `Patient?${q}`, undefined, {}), 400);
    expect((await raw('GET', 'Patient?birthdate=2020-02-29', undefined, {})).status).toBe(200);
    await expectOutcome(await raw('GET', 'Patient/$export?_since=2020-02-30T00:00:00Z', undefined, { prefer: 'respond-async' }), 400);
  });

  it('huge and deeply nested resources are a 4xx or stored, never a 500', async () => {
    const before = await count('Patient');
    let extension: Record<string, unknown> = { url: 'http://example.org/x', valueString: 'leaf' };
    for (let i = 0; i < 1000; i++) extension = { url: 'http://example.org/x', extension: [extension] };
    await expectOutcome(await raw('POST', 'Patient', JSON.stringify({ resourceType: 'Patient', extension: [extension] }), { 'content-type': 'application/fhir+json' }), 400);
    expect(await count('Patient')).toBe(before);
    const names = Array.from({ length: 200_000 }, (_, i) => ({ given: [`G${i}`] }));
    const many = await raw('POST', 'Patient', JSON.stringify({ resourceType: 'Patient', name: names }), { 'content-type': 'application/fhir+json' });
    expect(many.status).toBeLessThan(500);
    const given = Array.from({ length: 200_000 }, (_, i) => `G${i}`);
    const one = await raw('POST', 'Patient', JSON.stringify({ resourceType: 'Patient', name: [{ family: 'Long', given }] }), { 'content-type': 'application/fhir+json' });
    expect(one.status).toBeLessThan(500);
    await expectOutcome(await raw('GET', `Patient?_id=${Array.from({ length: 1500 }, (_, i) => `x${i}`).join(',')}`, undefined, {}), 400);
  });
});
