import http from 'node:http';
import zlib from 'node:zlib';
import { once } from 'node:events';
import { RunningServer } from '../../src/main';
import { generateClientKeys } from '../../src/auth/keys';
import { SyntheticMember } from '../../scripts/synthetic';
import { capturingLogger, fhir } from '../helpers/server';
import { FakeSource, ndjson, startFakeSource } from '../helpers/fake-source';
import { createLocalPatient, invokeBody, startRequester, waitForTask } from '../helpers/payers';

/**
 * A source payer whose answers never end: a gzip bomb where a JSON answer is expected (token,
 * $member-match, the export status), a $bulk-member-match result file that never ends, one that
 * trickles, and text written to be shown (markup, control characters, the member's demographics).
 * Each exchange fails saying which limit, memory stays bounded, and the Task and the logs hold
 * nothing of the source's text raw.
 */
const member = { patientId: 'm1', memberId: 'MEM-1', family: 'Hostile', given: 'Hal', birthDate: '1970-01-01', gender: 'male' } as SyntheticMember;
const INFLATED = 256 * 1024 * 1024;
const MB = 1024 * 1024;

/** `inflated` bytes of one JSON string, gzipped as they are made (a few hundred KB; the test never holds the inflated form). */
async function gzipBomb(inflated: number): Promise<Buffer> {
  const gz = zlib.createGzip({ level: 9 });
  const out: Buffer[] = [];
  gz.on('data', (c: Buffer) => out.push(c));
  const ended = once(gz, 'end');
  gz.write('{"resourceType":"Parameters","access_token":"');
  const chunk = Buffer.alloc(MB, 'A');
  for (let n = 0; n < inflated; n += chunk.length) if (!gz.write(chunk)) await once(gz, 'drain');
  gz.end('"}');
  await ended;
  return Buffer.concat(out);
}

const sendBomb = (res: http.ServerResponse, bomb: Buffer) => {
  res.writeHead(200, { 'content-type': 'application/json', 'content-encoding': 'gzip', 'content-length': String(bomb.length) });
  res.end(bomb);
};

/** The highest resident set size while `fn` runs, above what it was before (sampled; the last sample after it). */
async function peakRssGrowth<T>(fn: () => Promise<T>): Promise<{ value: T; growth: number }> {
  const before = process.memoryUsage().rss;
  let peak = before;
  const timer = setInterval(() => (peak = Math.max(peak, process.memoryUsage().rss)), 5);
  try {
    const value = await fn();
    return { value, growth: Math.max(peak, process.memoryUsage().rss) - before };
  } finally {
    clearInterval(timer);
  }
}

describe('a source payer whose JSON answers are gzip bombs', () => {
  let fake: FakeSource;
  let requester: RunningServer;
  let local: string;
  let bomb: Buffer;
  const logs = capturingLogger();

  beforeAll(async () => {
    bomb = await gzipBomb(INFLATED);
    fake = await startFakeSource();
    const { privateJwk } = await generateClientKeys();
    requester = await startRequester({ tokenUrl: '', fhirBaseUrl: fake.base, client: { clientId: 'us', privateJwk } }, { pollMinMs: 20, pollMaxMs: 200 }, logs.logger);
    local = await createLocalPatient(requester, member);
  }, 60_000);
  afterAll(async () => {
    await requester.stop();
    await fake.close();
  });
  beforeEach(() => {
    fake.raw = undefined;
    fake.memberMatch = undefined;
    fake.manifest = undefined;
    fake.output = [];
    fake.files = {};
  });

  async function exchange(): Promise<any> {
    const res = await fhir('POST', `${requester.baseUrl}/Patient/$sdh.s2s.invoke-export`, invokeBody(local, member, { issuer: 'https://source-payer.example.com' }));
    expect(res.status).toBe(200);
    return waitForTask(requester, res.body.id, undefined, 30_000);
  }

  async function expectBounded(reason: RegExp) {
    const { value: task, growth } = await peakRssGrowth(exchange);
    expect({ status: task.status, reason: task.statusReason?.text }).toEqual({ status: 'failed', reason: expect.stringMatching(reason) });
    // Not a transient fault: the exchange failed at once, it was not retried.
    expect(task.note.map((n: any) => n.text).join('\n')).not.toMatch(/retrying/);
    expect(growth).toBeLessThan(100 * MB);
    expect((await fhir('GET', `${requester.baseUrl}/metadata`)).status).toBe(200);
    expect((await fhir('GET', `${requester.baseUrl}/Condition?_summary=count`)).body.total).toBe(0);
  }

  it('the bomb is small and would inflate to hundreds of MB', () => {
    expect(bomb.length).toBeLessThan(400 * 1024);
    expect(bomb.length * 500).toBeLessThan(INFLATED);
  });

  it('as the token answer: the exchange fails at REMOTE_MAX_JSON_BYTES, counted after decompression', async () => {
    // First in this file: the token is not cached yet.
    fake.raw = (p, _req, res) => (p === '/token' ? (sendBomb(res, bomb), true) : false);
    await expectBounded(/^token request failed: the source's answer is larger than the limit of 4194304 bytes \(REMOTE_MAX_JSON_BYTES\)$/);
  });

  it('as the $member-match answer', async () => {
    fake.memberMatch = (res) => sendBomb(res, bomb);
    await expectBounded(/^\$member-match failed: the source's answer is larger than the limit of 4194304 bytes/);
  });

  it('as the export status (the manifest)', async () => {
    fake.raw = (p, _req, res) => (p === '/fhir/status' ? (sendBomb(res, bomb), true) : false);
    await expectBounded(/^export status failed: the source's answer is larger than the limit of 4194304 bytes/);
  });

  it("as an error answer: the source's error body is read within the same limit", async () => {
    fake.memberMatch = (res) => {
      res.writeHead(422, { 'content-type': 'application/fhir+json', 'content-encoding': 'gzip' });
      res.end(bomb);
    };
    await expectBounded(/larger than the limit of 4194304 bytes/);
  });

  it("keeps the source's text out of the logs and shows it on the Task only plain, short and without the member's demographics", async () => {
    logs.lines.length = 0;
    const hostile = `<script>alert(1)</script> no member Hostile, Hal born 1970-01-01, id MEM-1, phone 555-867-5309, hal@example.com\u001b[2J\u0000\u202e${'x'.repeat(5000)}`;
    fake.memberMatch = (res) => {
      res.writeHead(422, { 'content-type': 'application/fhir+json' });
      res.end(JSON.stringify({ resourceType: 'OperationOutcome', issue: [{ severity: 'error', code: 'not-found', diagnostics: hostile }] }));
    };
    const task = await exchange();
    expect(task.status).toBe('failed');
    const shown = JSON.stringify([task.statusReason, task.note, task.businessStatus, task.output ?? []]);
    expect(task.statusReason.text).toMatch(/^The source payer found no unique match: /);
    const logged = logs.lines.join('\n');
    for (const [where, text] of [['Task', shown], ['logs', logged]]) {
      for (const raw of ['<script', '</script', 'alert(1)</', 'Hostile', 'Hal ', '1970-01-01', 'MEM-1', '867-5309', 'hal@example.com', '\u001b', '\\u001b', '\\u0000', '\u202e', '\\u202e', 'x'.repeat(300)]) {
        expect({ where, has: raw, found: text.includes(raw) }).toEqual({ where, has: raw, found: false });
      }
    }
    // The log says what failed and how, not what the source wrote.
    expect(logged).toMatch(/"reason":"The source payer found no unique match: \$member-match failed \(HTTP 422, not-found\)"/);
    expect(task.statusReason.text.length).toBeLessThanOrEqual(300);
  });

  it("a source's error files and X-Progress reach the Task's outputs and notes the same way", async () => {
    logs.lines.length = 0;
    let polls = 0;
    fake.output = [{ type: 'Condition', name: 'conds' }];
    fake.files = {
      conds: ndjson([{ resourceType: 'Condition', id: 'c1', subject: { reference: 'Patient/m1' }, code: { text: 'ok' } }]),
      errors: ndjson([{ resourceType: 'OperationOutcome', issue: [{ severity: 'error', code: 'processing', diagnostics: '<img src=x onerror=alert(1)> Patient Hostile, Hal (1970-01-01) was not exported' }] }]),
    };
    fake.raw = (p, _req, res) => {
      if (p !== '/fhir/status' || ++polls > 1) return false;
      res.writeHead(202, { 'x-progress': '<b>exporting Hostile 1970-01-01</b>', 'retry-after': '0' });
      res.end();
      return true;
    };
    fake.manifest = () => ({ transactionTime: new Date().toISOString(), request: 'x', requiresAccessToken: true, output: [{ type: 'Condition', url: `${fake.base}/files/conds` }], error: [{ type: 'OperationOutcome', url: `${fake.base}/files/errors` }] });
    const task = await exchange();
    expect(task.status).toBe('completed');
    const errors = task.output.filter((o: any) => o.type.text === 'source-error').map((o: any) => o.valueString);
    expect(errors).toHaveLength(1);
    expect(errors[0]).toMatch(/^img src=x onerror=alert\(1\) Patient \[redacted\], \[redacted\] \(\[redacted\]\) was not exported$/);
    // Every version of the Task, the notes and progress shown on the way included.
    const history = (await fhir('GET', `${requester.baseUrl}/Task/${task.id}/_history`)).body;
    expect(history.entry.length).toBeGreaterThan(3);
    expect(history.entry.some((e: any) => /exporting: bexporting \[redacted\] \[redacted\]\/b/.test(e.resource.businessStatus?.text ?? ''))).toBe(true);
    const shown = JSON.stringify(history);
    for (const raw of ['<img', '<b>', 'Hostile', '1970-01-01']) expect({ raw, found: shown.includes(raw) }).toEqual({ raw, found: false });
    const logged = logs.lines.join('\n');
    for (const raw of ['onerror', 'Hostile', '1970-01-01', '<b>']) expect({ raw, found: logged.includes(raw) }).toEqual({ raw, found: false });
  });
});

describe('a source payer whose JSON answer trickles', () => {
  it('is bounded in time as a whole (REMOTE_TIMEOUT_MS), not only between bytes: the exchange ends at its deadline', async () => {
    const fake = await startFakeSource();
    const { privateJwk } = await generateClientKeys();
    // One byte every 100 ms never trips an idle timeout of 1 s: only a bound on the whole answer ends it.
    const requester = await startRequester({ tokenUrl: '', fhirBaseUrl: fake.base, client: { clientId: 'us', privateJwk } }, { pollMinMs: 20, pollMaxMs: 200, remoteTimeoutMs: 1000, remoteRetries: 0, exchangeTimeoutSeconds: 5 });
    const answers: http.ServerResponse[] = [];
    fake.raw = (p, _req, res) => {
      if (p !== '/fhir/status') return false;
      res.writeHead(200, { 'content-type': 'application/json' });
      res.write('{"output":[');
      const t = setInterval(() => res.write(' '), 100);
      res.on('close', () => clearInterval(t));
      answers.push(res);
      return true;
    };
    try {
      const local = await createLocalPatient(requester, member);
      const res = await fhir('POST', `${requester.baseUrl}/Patient/$sdh.s2s.invoke-export`, invokeBody(local, member, { issuer: 'https://source-payer.example.com' }));
      const task = await waitForTask(requester, res.body.id, undefined, 40_000);
      expect(task.status).toBe('failed');
      expect(task.statusReason.text).toMatch(/export status failed: the source did not finish its answer within 1000 ms|did not finish within 5 s/);
      expect(task.note.map((n: any) => n.text).join('\n')).toMatch(/The source payer is unavailable \(network error\); retrying/);
      // Every trickling answer was given up on, none is still open.
      expect(answers.length).toBeGreaterThan(0);
      await new Promise((r) => setTimeout(r, 200));
      expect(answers.every((a) => a.destroyed || a.writableEnded || a.closed)).toBe(true);
    } finally {
      await requester.stop();
      await fake.close();
    }
  });
});

const RESULT = 'http://hl7.org/fhir/us/davinci-pdex/CodeSystem/PdexMultiMemberMatchResultCS';
const bulkMembers = [
  { patientId: 'm1', memberId: 'MEM-1', family: 'Bulky', given: 'Ann', birthDate: '1971-01-01', gender: 'female' },
  { patientId: 'm2', memberId: 'MEM-2', family: 'Bulky', given: 'Bob', birthDate: '1972-02-02', gender: 'male' },
] as SyntheticMember[];
const memberPart = (localId: string, m: SyntheticMember) => ({ name: 'member', part: (invokeBody(localId, m).parameter as { name: string }[]).filter((p) => p.name === 'localPatient' || p.name === 'memberMatch') });

describe('a $bulk-member-match result file without end', () => {
  let fake: FakeSource;
  const running: RunningServer[] = [];
  const limits = { pollMinMs: 20, pollMaxMs: 200, exchangeMaxFileBytes: 64 * 1024, downloadIdleTimeoutMs: 700 };

  beforeAll(async () => {
    fake = await startFakeSource();
    fake.groupOperations = ['bulk-member-match', 'davinci-data-export'];
    // The match is done: its manifest lists one Group file, which `fake.file` serves as each case wants.
    fake.manifest = (req) => {
      const of = new URL(req.url ?? '/', fake.origin).searchParams.get('of');
      if (of !== 'member-match') return undefined;
      return { transactionTime: new Date().toISOString(), request: 'x', requiresAccessToken: true, output: [{ type: 'Group', url: `${fake.base}/files/result` }], error: [] };
    };
  });
  afterAll(async () => {
    for (const r of running) await r.stop();
    await fake.close();
  });

  async function requesterWith(overrides: Record<string, unknown>): Promise<{ requester: RunningServer; locals: string[] }> {
    const { privateJwk } = await generateClientKeys();
    const requester = await startRequester({ tokenUrl: '', fhirBaseUrl: fake.base, client: { clientId: 'us', privateJwk } }, { ...limits, ...overrides });
    running.push(requester);
    const locals = [];
    for (const m of bulkMembers) locals.push(await createLocalPatient(requester, m));
    return { requester, locals };
  }

  /** Runs a bulk exchange of both members; answers the parent and the children once all have ended. */
  async function bulkExchange(requester: RunningServer, locals: string[]) {
    const res = await fhir('POST', `${requester.baseUrl}/Group/$sdh.s2s.invoke-bulk-export`, { resourceType: 'Parameters', parameter: [{ name: 'sourceIssuerUrl', valueString: 'https://source-payer.example.com' }, ...bulkMembers.map((m, i) => memberPart(locals[i], m))] });
    expect(res.status).toBe(200);
    const parent = await waitForTask(requester, res.body.id, (t) => t.status === 'completed', 60_000);
    const children = await Promise.all(parent.output.filter((o: any) => o.type.text === 'member-task').map((o: any) => fhir('GET', `${requester.baseUrl}/Task/${o.valueReference.reference.split('/')[1]}`).then((r) => r.body)));
    return { parent, children };
  }

  /**
   * A Group line, over and over, as fast as the requester reads: 250 times the limit. (It stops at
   * 16 MB, so that a requester that keeps every Group, as it once did, cannot take the test's
   * memory with it; one within the limits stops at 64 KB.)
   */
  const endless = (res: http.ServerResponse) => {
    res.writeHead(200, { 'content-type': 'application/fhir+ndjson' });
    const group = { resourceType: 'Group', id: 'G1', type: 'person', actual: true, characteristic: [{ code: { coding: [{ system: RESULT, code: 'match' }] }, valueBoolean: true, exclude: false }] };
    const chunk = ndjson(Array.from({ length: 100 }, () => group));
    let sent = 0;
    const pump = () => {
      for (;;) {
        if (sent > 16 * MB) return void res.end();
        sent += chunk.length;
        if (!res.write(chunk)) break;
      }
      res.once('drain', pump);
    };
    res.on('close', () => res.removeAllListeners('drain'));
    pump();
  };

  /** One byte every `ms`, never the end of the line. */
  const trickle = (ms: number) => (res: http.ServerResponse) => {
    res.writeHead(200, { 'content-type': 'application/fhir+ndjson' });
    res.write('{');
    const t = setInterval(() => res.write(' '), ms);
    res.on('close', () => clearInterval(t));
  };

  it('a file without end stops at the per-file byte limit: every member fails saying so, memory stays bounded, the source is not asked again member by member', async () => {
    const { requester, locals } = await requesterWith({});
    fake.log.length = 0;
    fake.file = (name, res) => (name === 'result' ? (endless(res), true) : false);
    const { value, growth } = await peakRssGrowth(() => bulkExchange(requester, locals));
    expect(value.children.map((t: any) => t.status)).toEqual(['failed', 'failed']);
    for (const t of value.children) expect(t.statusReason.text).toMatch(/^The source payer's \$bulk-member-match went over a limit: the \$bulk-member-match result file is larger than the limit of 65536 bytes per file$/);
    expect(growth).toBeLessThan(100 * MB);
    expect(fake.log).not.toContain('POST /fhir/Patient/$member-match');
    expect(fake.log).toContain('DELETE /fhir/status');
    expect((await fhir('GET', `${requester.baseUrl}/metadata`)).status).toBe(200);
  });

  it("a file that stops sending fails at the idle limit", async () => {
    const { requester, locals } = await requesterWith({});
    fake.file = (name, res) => (name === 'result' ? (trickle(5000)(res), true) : false);
    const { children } = await bulkExchange(requester, locals);
    expect(children.map((t: any) => t.status)).toEqual(['failed', 'failed']);
    for (const t of children) expect(t.statusReason.text).toMatch(/went over a limit: the source sent nothing for 1 s while sending the \$bulk-member-match result file/);
  });

  it("a file trickling a byte at a time, under the idle limit, fails at the exchange's deadline (EXCHANGE_TIMEOUT_SECONDS)", async () => {
    // Bytes keep coming, more often than the idle limit: only the deadline ends it (the trickle itself never would).
    const { requester, locals } = await requesterWith({ exchangeTimeoutSeconds: 4, downloadIdleTimeoutMs: 10_000 });
    fake.file = (name, res) => (name === 'result' ? (trickle(100)(res), true) : false);
    const { children } = await bulkExchange(requester, locals);
    expect(children.map((t: any) => t.status)).toEqual(['failed', 'failed']);
    for (const t of children) expect(t.statusReason.text).toMatch(/went over a limit: (the exchange's deadline passed while downloading the \$bulk-member-match result file|the source did not finish \$bulk-member-match within the exchange's 4 s)/);
  });
});
