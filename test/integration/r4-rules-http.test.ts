import { RunningServer } from '../../src/main';
import { fhir, startTestServer } from '../helpers/server';
import { getToken, writeClientsFile } from '../helpers/clients';
import { kickoff } from '../helpers/bulk';
import { asSent, BROKEN } from '../helpers/r4-broken';
import { isServedType } from '../../src/fhir/resource-types';

/**
 * Issue 24, the low items, played through HTTP by a client that sends what R4 forbids: every such
 * write (create, update, PATCH, transaction entry) is a 400 OperationOutcome naming the element and
 * nothing is stored; a batch or transaction with two entries of one fullUrl is refused whole; every
 * answer carries the security headers, early errors too, and `Cache-Control: no-store` wherever it
 * may carry member data.
 */
describe('R4 rules on write, unique fullUrls, security headers and no-store', () => {
  let server: RunningServer;
  let base: string;
  let origin: string;
  let token: string;
  const auth = () => ({ authorization: `Bearer ${token}` });
  const send = (method: string, path: string, text: string | undefined, headers: Record<string, string> = {}) =>
    fetch(`${base}/${path}`, { method, body: text, headers: { accept: 'application/fhir+json', 'content-type': 'application/fhir+json', ...auth(), ...headers } });
  const count = async (type: string, q = '') => (await fhir('GET', `${base}/${type}?_summary=count${q}`, undefined, auth())).body.total;

  beforeAll(async () => {
    const { file, clients } = await writeClientsFile([{ clientId: 'back-office', scopes: 'system/*.*', role: 'service' }]);
    server = await startTestServer({ authRequired: true, clientsFile: file, bodyLimit: '64kb' });
    base = server.baseUrl;
    origin = new URL(base).origin;
    token = await getToken(server.tokenUrl, clients['back-office'], 'system/*.*');
    expect((await fhir('PUT', `${base}/Patient/kept`, { resourceType: 'Patient', id: 'kept', name: [{ family: 'Kept' }] }, auth())).status).toBe(201);
  });
  afterAll(async () => server.stop());

  const served = BROKEN.filter(([, r]) => isServedType(r.resourceType as string));

  it.each(served)('refuses %s on create, update, PATCH and in a transaction: 400 naming the element, nothing stored', async (name, resource, where) => {
    const type = resource.resourceType as string;
    const before = await count(type);
    const outcomeOf = async (res: Response) => {
      const body = (await res.json()) as { resourceType: string; issue: { expression?: string[]; diagnostics: string }[] };
      return { status: res.status, resourceType: body.resourceType, expression: body.issue[0].expression, diagnostics: body.issue[0].diagnostics };
    };
    const expected = { status: 400, resourceType: 'OperationOutcome', expression: [where], diagnostics: expect.stringContaining(where) };

    expect({ name, create: await outcomeOf(await send('POST', type, asSent(resource))) }).toEqual({ name, create: expected });
    const id = `broken-${BROKEN.indexOf(BROKEN.find(([n]) => n === name)!)}`;
    expect({ name, update: await outcomeOf(await send('PUT', `${type}/${id}`, asSent({ ...resource, id }))) }).toEqual({ name, update: expected });
    expect((await fhir('GET', `${base}/${type}/${id}`, undefined, auth())).status).toBe(404);

    const tx = { resourceType: 'Bundle', type: 'transaction', entry: [{ fullUrl: 'urn:uuid:1b7f6c5e-0000-4000-8000-000000000001', resource, request: { method: 'POST', url: type } }] };
    const txAnswer = await outcomeOf(await send('POST', '', asSent(tx)));
    expect({ name, status: txAnswer.status, diagnostics: txAnswer.diagnostics }).toEqual({ name, status: 400, diagnostics: expect.stringContaining(where) });
    expect(await count(type)).toBe(before);

    // PATCH that would turn a stored Patient into the broken one: refused, the stored version unchanged.
    if (type === 'Patient') {
      const ops = Object.entries(resource).filter(([k]) => k !== 'resourceType').map(([k, v]) => ({ op: 'add', path: `/${k}`, value: v }));
      const patched = await send('PATCH', 'Patient/kept', asSent(ops), { 'content-type': 'application/json-patch+json' });
      expect({ name, patch: patched.status }).toEqual({ name, patch: 400 });
      const kept = await fhir('GET', `${base}/Patient/kept`, undefined, auth());
      expect(kept.body.meta.versionId).toBe('1');
      expect(kept.body.name).toEqual([{ family: 'Kept' }]);
    }
  });

  it('refuses a transaction or a batch with two entries of one fullUrl, before writing any entry', async () => {
    const before = await count('Patient');
    const fullUrl = 'urn:uuid:5d1e7a3c-1111-4000-8000-000000000002';
    const entry = (family: string) => ({ fullUrl, resource: { resourceType: 'Patient', name: [{ family }] }, request: { method: 'POST', url: 'Patient' } });
    for (const type of ['transaction', 'batch']) {
      const bundle = {
        resourceType: 'Bundle',
        type,
        entry: [entry('First'), entry('Second'), { resource: { resourceType: 'Observation', status: 'final', code: { text: 'x' }, subject: { reference: fullUrl } }, request: { method: 'POST', url: 'Observation' } }],
      };
      const res = await fhir('POST', base, bundle, auth());
      expect({ type, status: res.status, resourceType: res.body.resourceType, expression: res.body.issue?.[0].expression }).toEqual({ type, status: 400, resourceType: 'OperationOutcome', expression: ['Bundle.entry[1].fullUrl'] });
      expect(res.body.issue[0].diagnostics).toMatch(/unique/);
    }
    expect(await count('Patient')).toBe(before);
    expect(await count('Patient', '&family=First')).toBe(0);
    expect(await count('Patient', '&family=Second')).toBe(0);
    expect(await count('Observation')).toBe(0);
    // The same entries with fullUrls of their own go through.
    const fine = await fhir('POST', base, { resourceType: 'Bundle', type: 'transaction', entry: [{ ...entry('Own'), fullUrl: 'urn:uuid:5d1e7a3c-1111-4000-8000-000000000003' }] }, auth());
    expect(fine.status).toBe(200);
  });

  const SECURITY = ['x-content-type-options', 'content-security-policy', 'x-frame-options', 'referrer-policy', 'cross-origin-resource-policy', 'x-dns-prefetch-control'];
  const securityOf = (res: Response) => Object.fromEntries(SECURITY.map((h) => [h, res.headers.get(h) !== null]));
  const allSecurity = Object.fromEntries(SECURITY.map((h) => [h, true]));

  it('sends the security headers and Cache-Control: no-store on early errors: 404 outside the base, 405, 406, 413, 415, malformed JSON, 401', async () => {
    const cases: [string, Promise<Response>, number][] = [
      ['404 outside the base', fetch(`${origin}/nowhere`), 404],
      ['404 under the base', fetch(`${base}/Spaceship/1`, { headers: auth() }), 404],
      ['405', send('DELETE', 'Patient/_history', undefined), 405],
      ['406', send('GET', 'Patient/kept', undefined, { accept: 'application/fhir+xml' }), 406],
      ['413', send('POST', 'Patient', JSON.stringify({ resourceType: 'Patient', name: [{ text: 'x'.repeat(100_000) }] })), 413],
      ['415', send('POST', 'Patient', '<Patient/>', { 'content-type': 'application/fhir+xml' }), 415],
      ['malformed JSON', send('POST', 'Patient', '{"resourceType":'), 400],
      ['401 without a token', fetch(`${base}/Patient/kept`, { headers: { accept: 'application/fhir+json' } }), 401],
      ['401 with a bad token', fetch(`${base}/Patient/kept`, { headers: { authorization: 'Bearer nonsense' } }), 401],
    ];
    for (const [name, pending, status] of cases) {
      const res = await pending;
      await res.text();
      expect({ name, status: res.status, security: securityOf(res), nosniff: res.headers.get('x-content-type-options'), cache: res.headers.get('cache-control') }).toEqual({ name, status, security: allSecurity, nosniff: 'nosniff', cache: 'no-store' });
    }
  });

  it('sends Cache-Control: no-store on reads, searches, writes, export status and tokens; a conditional read still answers 304; the conformance resources may be cached', async () => {
    const read = await send('GET', 'Patient/kept', undefined);
    await read.text();
    const etag = read.headers.get('etag') as string;
    const revalidated = await send('GET', 'Patient/kept', undefined, { 'if-none-match': etag });
    const search = await send('GET', 'Patient?family=Kept', undefined);
    const everything = await send('GET', 'Patient/kept/$everything', undefined);
    const write = await send('PUT', 'Patient/written', JSON.stringify({ resourceType: 'Patient', id: 'written', name: [{ family: 'W' }] }));
    const started = await kickoff(`${base}/Patient/$export`, { token });
    expect(started.status).toBe(202);
    const status = await fetch(started.location as string, { headers: auth() });
    for (const [name, res, code] of [['read', read, 200], ['304', revalidated, 304], ['search', search, 200], ['$everything', everything, 200], ['write', write, 201], ['export status', status, status.status]] as const) {
      if (!res.bodyUsed) await res.text();
      expect({ name, status: res.status, cache: res.headers.get('cache-control'), security: securityOf(res) }).toEqual({ name, status: code, cache: 'no-store', security: allSecurity });
    }
    expect([200, 202]).toContain(status.status);
    const tokenAnswer = await fetch(server.tokenUrl, { method: 'POST', headers: { 'content-type': 'application/x-www-form-urlencoded' }, body: 'grant_type=client_credentials' });
    await tokenAnswer.text();
    expect({ cache: tokenAnswer.headers.get('cache-control'), security: securityOf(tokenAnswer) }).toEqual({ cache: 'no-store', security: allSecurity });
    for (const path of ['metadata', '.well-known/smart-configuration', 'OperationDefinition?_count=1']) {
      const res = await fetch(`${base}/${path}`, { headers: { accept: 'application/fhir+json', ...auth() } });
      await res.text();
      expect({ path, status: res.status, cache: res.headers.get('cache-control'), security: securityOf(res) }).toEqual({ path, status: 200, cache: null, security: allSecurity });
    }
  });
});
