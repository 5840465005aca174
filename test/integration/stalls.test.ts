import { monitorEventLoopDelay } from 'node:perf_hooks';
import { RunningServer } from '../../src/main';
import { MAX_SEARCH_ALTERNATIVES, MAX_SEARCH_PARAMETERS } from '../../src/fhir/search/query';
import { fhir, startTestServer } from '../helpers/server';

/**
 * Requests that used to hold the event loop for seconds or answer 500: a 4 MB resource of 200,000
 * names, searches of 1,000 parameters, hostile JSON Patches. Played as a client over HTTP against
 * a server in this process, so a request that blocks the server blocks this test's other request too.
 */
describe('no request holds the server, and none of these is a 500', () => {
  let server: RunningServer;
  let base: string;

  beforeAll(async () => {
    server = await startTestServer();
    base = server.baseUrl;
  });
  afterAll(async () => server.stop());

  /**
   * Sends `big`, and once the server has taken its whole body in (handed it to the body checker),
   * a `/metadata` read; answers the order in which the two answers came and the big one's answer.
   */
  async function writeWithSmallRead(method: string, url: string, big: string) {
    const order: string[] = [];
    const before = server.bodyChecker.checked;
    const delay = monitorEventLoopDelay({ resolution: 10 });
    delay.enable();
    const started = process.hrtime.bigint();
    const write = fhir(method, url, big).then((res) => {
      order.push('write');
      return res;
    });
    // Waits (in turns of this event loop) until the body is with the checker: that is while the write is under way.
    while (server.bodyChecker.checked === before && order.length === 0) await new Promise((r) => setTimeout(r, 5));
    const read = fhir('GET', `${base}/metadata`).then((res) => {
      order.push('read');
      return res;
    });
    const [written, readRes] = await Promise.all([write, read]);
    const took = Number(process.hrtime.bigint() - started) / 1e6;
    delay.disable();
    expect(readRes.status).toBe(200);
    return { order, written, took, longestTurn: delay.max / 1e6 };
  }

  it('refuses a 4 MB Patient of 200,000 names (422, naming the limit), answering a small read meanwhile; nothing stored', async () => {
    const names = Array.from({ length: 200_000 }, (_, i) => ({ family: `Stall${i}` }));
    const big = JSON.stringify({ resourceType: 'Patient', name: names });
    expect(big.length).toBeGreaterThan(4_000_000);
    const { order, written, took, longestTurn } = await writeWithSmallRead('POST', `${base}/Patient`, big);
    expect(written.status).toBe(422);
    expect(written.body.resourceType).toBe('OperationOutcome');
    expect(written.body.issue[0].code).toBe('too-costly');
    expect(written.body.issue[0].diagnostics).toMatch(/more than 10000 values for the search parameter '(name|family|phonetic)'/);
    // The small read was answered while the large body was being checked, not after it; and no
    // turn of this event loop took more than a fraction of the request's time (it was all of it).
    expect(order).toEqual(['read', 'write']);
    expect(longestTurn).toBeLessThan(took / 2);
    expect((await fhir('GET', `${base}/Patient?family=Stall1&_summary=count`)).body.total).toBe(0);
    expect((await fhir('GET', `${base}/Patient?_summary=count`)).body.total).toBe(0);
  });

  it('the same with PUT and a transaction Bundle: refused, nothing stored', async () => {
    const names = Array.from({ length: 30_000 }, (_, i) => ({ family: `Tx${i}` }));
    const patient = { resourceType: 'Patient', id: 'big-put', name: names };
    const put = await fhir('PUT', `${base}/Patient/big-put`, patient);
    expect(put.status).toBe(422);
    expect((await fhir('GET', `${base}/Patient/big-put`)).status).toBe(404);
    const bundle = { resourceType: 'Bundle', type: 'transaction', entry: [{ resource: { ...patient, id: undefined }, request: { method: 'POST', url: 'Patient' } }] };
    const tx = await fhir('POST', base, bundle);
    expect(tx.status).toBe(422);
    expect(tx.body.resourceType).toBe('OperationOutcome');
    expect((await fhir('GET', `${base}/Patient?family=Tx1&_summary=count`)).body.total).toBe(0);
  });

  it('refuses a Patient of 4 MB of searchable text (422, naming the limit); nothing stored', async () => {
    const names = Array.from({ length: 4_000 }, (_, i) => ({ family: `Wordy${i}`, text: `${'x'.repeat(1000)} ${i}` }));
    const res = await fhir('POST', `${base}/Patient`, { resourceType: 'Patient', name: names });
    expect(res.status).toBe(422);
    expect(res.body.issue[0].diagnostics).toMatch(/more than 1048576 characters of searchable text/);
    expect((await fhir('GET', `${base}/Patient?family=Wordy1&_summary=count`)).body.total).toBe(0);
  });

  it('writes a 4 MB Patient within the limits (201, intact), answering a small read meanwhile', async () => {
    const names = Array.from({ length: 2_000 }, (_, i) => ({ family: `Long${i}`, given: ['Ann', 'Beth'] }));
    const photo = [{ contentType: 'image/png', data: Buffer.alloc(3 * 1024 * 1024, 7).toString('base64') }];
    const big = JSON.stringify({ resourceType: 'Patient', name: names, photo });
    expect(big.length).toBeGreaterThan(4_000_000);
    const { order, written } = await writeWithSmallRead('POST', `${base}/Patient`, big);
    expect(written.status).toBe(201);
    expect(order).toEqual(['read', 'write']);
    const read = await fhir('GET', `${base}/Patient/${written.body.id}`);
    expect(read.body.name).toHaveLength(2_000);
    expect(read.body.name[1999]).toEqual(names[1999]);
    expect(read.body.photo).toEqual(photo);
    expect((await fhir('GET', `${base}/Patient?family=Long1999&_summary=count`)).body.total).toBe(1);
  });

  it('refuses large bodies the worker judges as the small-body parser would: not JSON, a prototype key, too deep', async () => {
    const pad = 'y'.repeat(300 * 1024);
    const notJson = await fhir('POST', `${base}/Patient`, `{"resourceType": "Patient", "text": {"div": "${pad}"`);
    expect(notJson.status).toBe(400);
    expect(notJson.body.issue[0].diagnostics).toMatch(/not valid JSON/);
    const proto = await fhir('POST', `${base}/Patient`, `{"resourceType": "Patient", "__proto__": {"polluted": true}, "text": {"status": "generated", "div": "${pad}"}}`);
    expect(proto.status).toBe(400);
    expect(({} as Record<string, unknown>).polluted).toBeUndefined();
    const deep = `{"resourceType": "Patient", "extension": ${'['.repeat(100)}${']'.repeat(100)}, "text": {"div": "${pad}"}}`;
    const tooDeep = await fhir('POST', `${base}/Patient`, deep);
    expect(tooDeep.status).toBe(400);
    expect(tooDeep.body.issue[0].diagnostics).toMatch(/nests deeper/);
    expect((await fhir('GET', `${base}/Patient?_summary=count`)).body.total).toBe(1);
  });

  it('parses a body of unannounced size (chunked) as one of announced size: JSON, no prototype keys', async () => {
    const chunked = (text: string) =>
      fetch(`${base}/Patient`, {
        method: 'POST',
        headers: { 'content-type': 'application/fhir+json', accept: 'application/fhir+json' },
        body: new ReadableStream({ start: (c) => (c.enqueue(new TextEncoder().encode(text)), c.close()) }),
        duplex: 'half',
      } as RequestInit);
    const ok = await chunked(JSON.stringify({ resourceType: 'Patient', name: [{ family: 'Chunked' }] }));
    expect(ok.status).toBe(201);
    const proto = await chunked('{"resourceType": "Patient", "__proto__": {"polluted": true}}');
    expect(proto.status).toBe(400);
    expect(((await proto.json()) as { issue: { diagnostics: string }[] }).issue[0].diagnostics).toMatch(/forbidden key/);
    const broken = await chunked('{"resourceType": "Patient",');
    expect(broken.status).toBe(400);
    const pad = 'z'.repeat(300 * 1024);
    const large = await chunked(JSON.stringify({ resourceType: 'Patient', name: [{ family: 'ChunkedLarge' }], text: { status: 'generated', div: `<div xmlns="http://www.w3.org/1999/xhtml">${pad}</div>` } }));
    expect(large.status).toBe(201);
    expect(((await large.json()) as { text: { div: string } }).text.div).toContain(pad);
  });

  describe('search size', () => {
    it('answers 1,000 AND-ed parameters with a 400 naming the limit, not a 500', async () => {
      const query = Array.from({ length: 1000 }, (_, i) => `family=f${i}`).join('&');
      const res = await fhir('GET', `${base}/Patient?${query}`);
      expect(res.status).toBe(400);
      expect(res.body.resourceType).toBe('OperationOutcome');
      expect(res.body.issue[0].diagnostics).toMatch(new RegExp(`at most ${MAX_SEARCH_PARAMETERS} parameters`));
      // POST _search too.
      const posted = await fetch(`${base}/Patient/_search`, { method: 'POST', headers: { 'content-type': 'application/x-www-form-urlencoded', accept: 'application/fhir+json' }, body: query });
      expect(posted.status).toBe(400);
    });

    it('takes searches at the limits; over them, a 400', async () => {
      const atLimit = Array.from({ length: MAX_SEARCH_PARAMETERS }, (_, i) => `family:not=f${i}`).join('&');
      expect((await fhir('GET', `${base}/Patient?${atLimit}`)).status).toBe(200);
      expect((await fhir('GET', `${base}/Patient?${atLimit}&family=x`)).status).toBe(400);
      const perParam = MAX_SEARCH_ALTERNATIVES / 2;
      const alternatives = (p: string, value = (i: number) => `v${i}`) => `${p}=${Array.from({ length: perParam }, (_, i) => value(i)).join(',')}`;
      const dates = (i: number) => `ge${1000 + i}-01-01`;
      // As many alternatives as allowed, in the shapes each kind of parameter compiles to.
      for (const q of [`${alternatives('family')}&${alternatives('identifier')}`, `${alternatives('_id')}&${alternatives('general-practitioner')}`, `${alternatives('birthdate', dates)}&${alternatives('family:exact')}`, `${alternatives('name:contains')}&${alternatives('address-city')}`, `${alternatives('_lastUpdated', dates)}&${alternatives('_security:not')}`]) {
        // Posted: some are longer than a URL may be.
        const res = await fetch(`${base}/Patient/_search`, { method: 'POST', headers: { 'content-type': 'application/x-www-form-urlencoded', accept: 'application/fhir+json' }, body: q });
        expect([q.slice(0, 30), res.status, res.status === 200 ? '' : (await res.text()).slice(0, 300)]).toEqual([q.slice(0, 30), 200, '']);
      }
      const over = await fhir('GET', `${base}/Patient?${alternatives('family')}&${alternatives('given')}&family=one-more`);
      expect(over.status).toBe(400);
      expect(over.body.issue[0].diagnostics).toMatch(new RegExp(`at most ${MAX_SEARCH_ALTERNATIVES} values`));
      // Chains at the limit of parameters.
      const chained = Array.from({ length: MAX_SEARCH_PARAMETERS }, (_, i) => `general-practitioner:Practitioner.name=p${i}`).join('&');
      expect((await fhir('GET', `${base}/Patient?${chained}`)).status).toBe(200);
      expect((await fhir('GET', `${base}/metadata`)).status).toBe(200);
    });
  });

  describe('JSON Patch', () => {
    let id: string;
    const patch = (ops: unknown) => fhir('PATCH', `${base}/Patient/${id}`, typeof ops === 'string' ? ops : JSON.stringify(ops), { 'content-type': 'application/json-patch+json' });

    beforeAll(async () => {
      const created = await fhir('POST', `${base}/Patient`, { resourceType: 'Patient', name: [{ family: 'Patchy', given: ['Ann'] }], birthDate: '1980-01-01' });
      id = created.body.id;
    });

    it.each([
      ['add /__proto__/x', 422, [{ op: 'add', path: '/__proto__/x', value: 1 }]],
      ['add /name/0/__proto__/polluted', 422, [{ op: 'add', path: '/name/0/__proto__/polluted', value: true }]],
      ['add /constructor/prototype/x', 422, [{ op: 'add', path: '/constructor/prototype/x', value: 1 }]],
      ['replace /prototype', 422, [{ op: 'replace', path: '/prototype', value: 1 }]],
      ['copy from /__proto__', 422, [{ op: 'copy', from: '/__proto__', path: '/x' }]],
      ['move into its own child', 422, [{ op: 'move', from: '/name/0', path: '/name/0/given/1' }]],
      ['move the name list into itself', 422, [{ op: 'move', from: '/name', path: '/name/0' }]],
      ['a test that fails', 422, [{ op: 'test', path: '/birthDate', value: '1999-09-09' }, { op: 'replace', path: '/birthDate', value: '1981-01-01' }]],
      ['an index out of range', 422, [{ op: 'add', path: '/name/7', value: { family: 'X' } }]],
      ['an index that is not a number', 422, [{ op: 'add', path: '/name/first/family', value: 'X' }]],
      ['removing what is not there', 422, [{ op: 'remove', path: '/gender' }]],
      ['copy from nowhere', 422, [{ op: 'copy', from: '/nowhere', path: '/gender' }]],
      ['a result that breaks the schema', 400, [{ op: 'replace', path: '/birthDate', value: 'yesterday' }]],
      ['a result of another type', 400, [{ op: 'replace', path: '/resourceType', value: 'Observation' }]],
      ['an unknown op', 400, [{ op: 'merge', path: '/gender', value: 'female' }]],
      ['a path that is no JSON Pointer', 400, [{ op: 'add', path: 'gender', value: 'female' }]],
      ['add without a value', 400, [{ op: 'add', path: '/gender' }]],
      ['move without from', 400, [{ op: 'move', path: '/gender' }]],
      ['an operation that is not an object', 400, ['add']],
      ['an empty patch', 400, []],
      ['a patch that is not a list', 400, { op: 'add', path: '/gender', value: 'female' }],
      ['a patch that is not JSON', 400, '[{"op": "add"'],
    ])('refuses %s with a %d OperationOutcome, writing nothing', async (_what, status, ops) => {
      const res = await patch(ops);
      expect(res.status).toBe(status);
      expect(res.body.resourceType).toBe('OperationOutcome');
      const read = await fhir('GET', `${base}/Patient/${id}`);
      expect(read.body.meta.versionId).toBe('1');
      expect(read.body.name).toEqual([{ family: 'Patchy', given: ['Ann'] }]);
      expect(read.body.birthDate).toBe('1980-01-01');
      expect(({} as Record<string, unknown>).x).toBeUndefined();
      expect(({} as Record<string, unknown>).polluted).toBeUndefined();
    });

    it('refuses a patch whose result is over the search-index limits (422), and applies a good one', async () => {
      const many = Array.from({ length: 12_000 }, (_, i) => ({ family: `P${i}` }));
      expect((await patch([{ op: 'replace', path: '/name', value: many }])).status).toBe(422);
      expect((await fhir('GET', `${base}/Patient/${id}`)).body.meta.versionId).toBe('1');
      const ok = await patch([{ op: 'test', path: '/birthDate', value: '1980-01-01' }, { op: 'add', path: '/name/0/given/-', value: 'Beth' }, { op: 'move', from: '/name/0/given', path: '/name/0/prefix' }]);
      expect(ok.status).toBe(200);
      expect(ok.body.meta.versionId).toBe('2');
      expect(ok.body.name).toEqual([{ family: 'Patchy', prefix: ['Ann', 'Beth'] }]);
    });
  });
});
