/**
 * npm run bench: speed figures on this machine, each a ratio of two things measured in the same run
 * (never asserted in tests).
 *   npm run bench -- [--large 1000000] [--small 10000] [--members 10000,50000] [--concurrent 100] [--json]
 * Servers run as child processes (`node dist/src/main.js`, the embedded engine), as `npm start` runs
 * them; load comes from this process over loopback. Measures:
 *   - exchange vs download: a member of 10k and of 50k resources; the time of a whole exchange
 *     ($sdh.s2s.invoke-export → Task completed) against a plain bulk download of the same export
 *     (kick-off, polling, files to disk) from the same source: ratio = download time / exchange time
 *   - a store of `--large` resources: RSS, the first query after a restart, and a two-parameter
 *     search's p50 against the same search on a store of `--small` resources
 *   - GET Patient/{id}, and a search page of 50 Observations: requests per second against a bare
 *     Express app serving the same bytes (the median of alternating rounds)
 *   - `--concurrent` exchanges at once (members of about 60 resources): exchanges per second
 *   - export: a whole-population Patient/$export, resources per second, against reading the same
 *     resources straight from the store
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import http from 'node:http';
import { spawn, execFileSync, ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { parseArgs } from 'node:util';
import type { Resource } from 'fhir/r4';
import { generateClientKeys } from '../src/auth/keys';
import { completeConsent } from '../src/requester/consent-completion';
import { SqliteDatabase } from '../src/store/sqlite/sqlite-database';
import { ResourceStore } from '../src/store/resource-store';
import { SearchRegistry } from '../src/fhir/search/registry';
import { RESOURCE_TYPES } from '../src/fhir/resource-types';
import { generatePopulation, SyntheticMember } from './synthetic';

const registry = new SearchRegistry(RESOURCE_TYPES);
const MAIN = path.join(__dirname, '..', 'src', 'main.js');
const percentile = (xs: number[], p: number) => [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor((p / 100) * xs.length))];
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

let lastProgress = '';
function progress(text: string) {
  lastProgress = text;
  if (process.stderr.isTTY) process.stderr.write(`\r\x1b[K[bench] ${text}`);
  else process.stderr.write(`[bench] ${text}\n`);
}

async function timed<T>(fn: () => Promise<T>): Promise<[T, number]> {
  const t = process.hrtime.bigint();
  const r = await fn();
  return [r, Number(process.hrtime.bigint() - t) / 1e6];
}

/** Writes resources straight into a data directory's store, in batches (as an import does). */
async function seed(dataDir: string, chunks: Iterable<Resource[]>, label: string): Promise<number> {
  const db = new SqliteDatabase(dataDir);
  const store = new ResourceStore(db, registry);
  let n = 0;
  for (const chunk of chunks) {
    const byType = new Map<string, Resource[]>();
    for (const r of chunk) byType.set(r.resourceType, [...(byType.get(r.resourceType) ?? []), r]);
    for (const [type, rs] of byType) {
      for (let i = 0; i < rs.length; i += 1000) await store.applyWrites(type, await store.planWrites(type, rs.slice(i, i + 1000)));
    }
    n += chunk.length;
    progress(`${label}: ${n} resources stored`);
  }
  await db.close();
  return n;
}

/** A population of about `total` resources, in chunks, each chunk its own members (ids prefixed by chunk). */
function* population(total: number, prefix: string, members: SyntheticMember[] = []): Generator<Resource[]> {
  for (let made = 0, b = 0; made < total; b++) {
    const { resources, members: list } = generatePopulation({ members: Math.max(1, Math.min(2000, Math.ceil((total - made) / 11.5))), prefix: `${prefix}${b}`, seed: b + 1 });
    members.push(...list);
    made += resources.length;
    yield resources;
  }
}

interface Child {
  base: string;
  tokenUrl: string;
  pid: number;
  proc: ChildProcess;
  stop(): Promise<void>;
}

/** Every server the bench started: stopped when it ends, whatever way it ends (a failed figure included). */
const children = new Set<ChildProcess>();
function killChildren(): void {
  for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
}
process.on('exit', killChildren);

/** `npm start`'s server in a child process; resolves once it listens. */
async function startServerProcess(env: Record<string, string>): Promise<Child> {
  // BENCH_SERVER_NODE_ARGS passes options to the servers' node, e.g. `--cpu-prof --cpu-prof-dir=/tmp/prof` to profile them.
  const nodeArgs = (process.env.BENCH_SERVER_NODE_ARGS ?? '').split(' ').filter(Boolean);
  const proc = spawn(process.execPath, [...nodeArgs, MAIN], { env: { ...process.env, HOST: '127.0.0.1', PORT: '0', LOG_LEVEL: 'warn', ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  children.add(proc);
  proc.once('exit', () => children.delete(proc));
  let out = '';
  const base = await new Promise<string>((resolve, reject) => {
    const onData = (chunk: Buffer) => {
      out += chunk.toString();
      const m = out.match(/"base":"([^"]+)"/);
      if (m) {
        // From here on the logs are drained unread.
        proc.stdout?.off('data', onData);
        proc.stderr?.off('data', onData);
        proc.stdout?.resume();
        if (process.env.BENCH_SERVER_ERRORS) proc.stderr?.pipe(process.stderr);
        else proc.stderr?.resume();
        resolve(m[1]);
      }
    };
    proc.stdout?.on('data', onData);
    proc.stderr?.on('data', onData);
    proc.once('exit', (code) => reject(new Error(`server exited (${code}): ${out.slice(-500)}`)));
  });
  // A requester's record checker compiles the schema on another core as it starts: nothing is timed until that is over.
  await atRest(proc.pid as number);
  return {
    base,
    tokenUrl: base.replace(/\/4_0_1$/, '/oauth/token'),
    pid: proc.pid as number,
    proc,
    async stop() {
      proc.kill('SIGTERM');
      await once(proc, 'exit');
    },
  };
}

/** A server's environment: its data directory, info logs (the `listening` line tells its base), auth off unless asked. */
function serverEnv(dataDir: string, extra: Record<string, string> = {}): Record<string, string> {
  return { DATA_DIR: dataDir, LOG_LEVEL: 'info', AUTH_REQUIRED: 'false', ...extra };
}

/** A process's CPU time so far, in ms (utime and stime of /proc/PID/stat, all threads). */
function cpuMs(pid: number): number {
  const fields = fs.readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ');
  return ((Number(fields[11]) + Number(fields[12])) * 1000) / 100;
}

/** Waits (at most 10 s) until a process uses less than a tenth of a core over a quarter of a second: its start-up work is over. */
async function atRest(pid: number): Promise<void> {
  let last = cpuMs(pid);
  for (let i = 0; i < 40; i++) {
    await sleep(250);
    const now = cpuMs(pid);
    if (now - last < 25) return;
    last = now;
  }
}

function rssMb(pid: number): number {
  const status = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
  return Number(status.match(/VmRSS:\s+(\d+)/)?.[1] ?? 0) / 1024;
}

/** Rounds of reads, each 2 s against this server and then 2 s against the bare app. */
const READ_ROUNDS = 5;

/** Requests per second over `seconds`, with `concurrency` keep-alive connections. */
async function requestsPerSecond(url: string, seconds: number, concurrency = 16): Promise<number> {
  const agent = new http.Agent({ keepAlive: true, maxSockets: concurrency });
  const get = () =>
    new Promise<void>((resolve, reject) => {
      http
        .get(url, { agent, headers: { accept: 'application/fhir+json' } }, (res) => {
          res.on('data', () => undefined);
          res.on('end', () => (res.statusCode === 200 ? resolve() : reject(new Error(`HTTP ${res.statusCode}`))));
        })
        .on('error', reject);
    });
  for (let i = 0; i < concurrency * 20; i++) await get(); // warm-up
  let n = 0;
  const end = Date.now() + seconds * 1000;
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (Date.now() < end) {
        await get();
        n++;
      }
    }),
  );
  agent.destroy();
  return n / seconds;
}

/** A bare Express app answering every GET with the given bytes: the ceiling for a read. */
async function startBareApp(body: string, contentType: string): Promise<{ url: string; stop: () => Promise<void> }> {
  const code = `const express=require('express');const app=express();const body=Buffer.from(process.env.BODY,'base64');app.get('*',(req,res)=>{res.type(process.env.CT).send(body)});const s=app.listen(0,'127.0.0.1',()=>console.log('port '+s.address().port));`;
  const proc = spawn(process.execPath, ['-e', code], { env: { ...process.env, BODY: Buffer.from(body).toString('base64'), CT: contentType }, cwd: path.join(__dirname, '..', '..'), stdio: ['ignore', 'pipe', 'inherit'] });
  children.add(proc);
  proc.once('exit', () => children.delete(proc));
  const port = await new Promise<string>((resolve) => proc.stdout?.on('data', (d: Buffer) => d.toString().match(/port (\d+)/) && resolve((d.toString().match(/port (\d+)/) as RegExpMatchArray)[1])));
  return {
    url: `http://127.0.0.1:${port}/4_0_1/Patient/x`,
    stop: async () => {
      proc.kill();
      await once(proc, 'exit');
    },
  };
}

/** A plain bulk client: kick off, poll honouring Retry-After, stream every file to disk. */
async function plainDownload(url: string, dir: string, token: string): Promise<number> {
  const auth = { authorization: `Bearer ${token}` };
  const k = await fetch(url, { headers: { prefer: 'respond-async', accept: 'application/fhir+json', ...auth } });
  const body = await k.text();
  if (k.status !== 202) throw new Error(`kick-off answered ${k.status}: ${body.slice(0, 300)}`);
  const status = k.headers.get('content-location') as string;
  for (;;) {
    const s = await fetch(status, { headers: auth });
    if (s.status === 200) {
      const manifest = (await s.json()) as { output: { url: string }[] };
      fs.mkdirSync(dir, { recursive: true });
      let bytes = 0;
      for (const [i, o] of manifest.output.entries()) {
        const res = await fetch(o.url, { headers: auth });
        const file = fs.createWriteStream(path.join(dir, `${i}.ndjson`));
        for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
          bytes += chunk.length;
          if (!file.write(chunk)) await once(file, 'drain');
        }
        await new Promise((r) => file.end(r));
      }
      return bytes;
    }
    const wait = Number(s.headers.get('retry-after') ?? 1) * 1000;
    await s.arrayBuffer();
    await sleep(wait);
  }
}

function invokeBody(localId: string, m: SyntheticMember, memberSystem: string) {
  return {
    resourceType: 'Parameters',
    parameter: [
      { name: 'localPatient', valueReference: { reference: `Patient/${localId}` } },
      { name: 'sourceIssuerUrl', valueString: 'https://src.example' },
      {
        name: 'memberMatch',
        part: [
          { name: 'MemberPatient', resource: { resourceType: 'Patient', name: [{ family: m.family, given: [m.given] }], birthDate: m.birthDate } },
          { name: 'CoverageToMatch', resource: { resourceType: 'Coverage', identifier: [{ system: memberSystem, value: m.memberId }] } },
          { name: 'Consent', resource: { resourceType: 'Consent', policy: [{ uri: 'http://hl7.org/fhir/us/davinci-hrex/StructureDefinition-hrex-consent.html#regular' }] } },
        ],
      },
    ],
  };
}

/** Waits until every Task has ended, as a client watching many would: one search per 100 Tasks, ten times a second. */
async function waitForTasks(base: string, ids: string[]): Promise<string[]> {
  const statuses = new Map<string, string>();
  for (;;) {
    const pending = ids.filter((id) => !statuses.has(id));
    for (let i = 0; i < pending.length; i += 100) {
      const page = (await (await fetch(`${base}/Task?_id=${pending.slice(i, i + 100).join(',')}&_elements=status&_count=100`)).json()) as { entry?: { resource: { id: string; status: string } }[] };
      for (const { resource: t } of page.entry ?? []) if (!['requested', 'in-progress'].includes(t.status)) statuses.set(t.id, t.status);
    }
    if (statuses.size === ids.length) return ids.map((id) => statuses.get(id) as string);
    await sleep(100);
  }
}

/** Where an exchange's time went, from its Task's notes: seconds from the first note to the manifest, the last download, and the end. */
async function phases(base: string, taskId: string): Promise<string> {
  const task = (await (await fetch(`${base}/Task/${taskId}`)).json()) as { note?: { time: string; text: string }[] };
  const notes = task.note ?? [];
  const t0 = Date.parse(notes[0]?.time ?? '');
  const at = (re: RegExp) => {
    const n = notes.find((x) => re.test(x.text));
    return n ? ((Date.parse(n.time) - t0) / 1000).toFixed(1) : '?';
  };
  return `export ready at ${at(/^Export ready/)} s, downloaded at ${at(/^Downloaded/)} s, imported at ${at(/^Imported/)} s`;
}

async function createLocal(base: string, m: SyntheticMember): Promise<string> {
  const res = await fetch(`${base}/Patient`, { method: 'POST', headers: { 'content-type': 'application/fhir+json' }, body: JSON.stringify({ resourceType: 'Patient', name: [{ family: m.family, given: [m.given] }], birthDate: m.birthDate }) });
  if (res.status !== 201) throw new Error(`creating a local patient answered ${res.status}: ${(await res.text()).slice(0, 300)}`);
  return ((await res.json()) as { id: string }).id;
}

interface Figure {
  name: string;
  ratio: number;
  goal: string;
  detail: string;
}

async function main() {
  const { values } = parseArgs({
    options: {
      large: { type: 'string', default: '1000000' },
      small: { type: 'string', default: '10000' },
      members: { type: 'string', default: '10000,50000' },
      concurrent: { type: 'string', default: '100' },
      bulk: { type: 'string', default: '1000' },
      json: { type: 'boolean', default: false },
      help: { type: 'boolean', short: 'h' },
    },
  });
  if (values.help) {
    console.log('Speed figures, each a ratio of two things measured in this run (see the header of scripts/bench.ts).\n\n  npm run bench -- [--large 1000000] [--small 10000] [--members 10000,50000] [--concurrent 100] [--bulk 1000] [--json]\n\nA size of 0 skips its part.');
    return;
  }
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'p2p-bench-'));
  const figures: Figure[] = [];
  const started = Date.now();
  try {
    // 1. Exchange against a plain download of the same export, from the same source.
    const sizes = (values.members as string).split(',').map(Number).filter((n) => n > 0);
    const sourceDir = path.join(dir, 'source');
    const big: { size: number; member: SyntheticMember; system: string }[] = [];
    await seed(
      sourceDir,
      (function* () {
        for (const size of sizes) {
          const system = `http://source-payer.example.com/member-id-${size}`;
          const { resources, members } = generatePopulation({ members: 1, prefix: `big${size}`, memberSystem: system, encounters: Math.round((size - 25) / 3), seed: size });
          big.push({ size, member: members[0], system });
          yield resources;
        }
      })(),
      'source for the exchanges',
    );
    const { publicJwk, privateJwk } = await generateClientKeys('ES384');
    const clientsFile = path.join(dir, 'clients.json');
    fs.writeFileSync(clientsFile, JSON.stringify([{ clientId: 'bench', jwks: { keys: [publicJwk] }, scopes: 'system/*.read' }]));
    const source = await startServerProcess(serverEnv(sourceDir, { CLIENTS_FILE: clientsFile, AUTH_REQUIRED: 'true', PUBLIC_BASE_URL: '' }));
    const payersFile = path.join(dir, 'payers.json');
    // The member-match path, as the plain download it is compared with asks Patient/{id}/$export (a source declaring the bulk operations would otherwise be asked through them, with their window of service dates).
    fs.writeFileSync(payersFile, JSON.stringify([{ issuer: 'https://src.example', fhirBaseUrl: source.base, tokenEndpoint: source.tokenUrl, clientId: 'bench', clientAuthenticationMode: 'PRIVATE_KEY_JWT', privateKeyJwk: privateJwk, scopes: 'system/*.read', bulkMemberMatch: false }]));
    for (const { size, member, system } of sizes.length ? big : []) {
      const requester = await startServerProcess(serverEnv(path.join(dir, `requester-${size}`), { SOURCE_PAYERS_FILE: payersFile, POLL_MIN_MS: '50' }));
      // The plain download, with a token of its own, asks for what the exchange asks for (no `_type`: all the source has).
      const token = await benchToken(source.tokenUrl, privateJwk);
      const patientId = member.patientId;
      // The partner's grant to the member comes from its $member-match, as in the exchange (not timed).
      // Its Consent completed as the requesting side completes the short one it is given (HRex's profile).
      const parts = (invokeBody('x', member, system).parameter[2] as { part: { name: string; resource: Resource }[] }).part.map((p) =>
        p.name === 'Consent' ? { ...p, resource: completeConsent(p.resource as never, { source: { name: 'Source' }, recipient: { name: 'Bench' }, localPatientUrl: `${source.base}/Patient/x`, defaultDays: 30, now: new Date() }) } : p,
      );
      const match = await fetch(`${source.base}/Patient/$member-match`, { method: 'POST', headers: { 'content-type': 'application/fhir+json', authorization: `Bearer ${token}` }, body: JSON.stringify({ resourceType: 'Parameters', parameter: parts }) });
      if (match.status !== 200) throw new Error(`$member-match answered ${match.status}`);
      await match.arrayBuffer();
      progress(`plain download of a ${size}-resource member`);
      const [bytes, downloadMs] = await timed(() => plainDownload(`${source.base}/Patient/${patientId}/$export`, path.join(dir, `download-${size}`), token));
      progress(`exchange of a ${size}-resource member`);
      const local = await createLocal(requester.base, member);
      let taskId = '';
      const [status, exchangeMs] = await timed(async () => {
        const res = await fetch(`${requester.base}/Patient/$sdh.s2s.invoke-export`, { method: 'POST', headers: { 'content-type': 'application/fhir+json' }, body: JSON.stringify(invokeBody(local, member, system)) });
        taskId = ((await res.json()) as { id: string }).id;
        return (await waitForTasks(requester.base, [taskId]))[0];
      });
      if (status !== 'completed') {
        const task = (await (await fetch(`${requester.base}/Task/${taskId}`)).json()) as { statusReason?: { text?: string } };
        throw new Error(`the ${size}-resource exchange ended ${status}: ${task.statusReason?.text ?? 'no reason given'}`);
      }
      figures.push({
        name: `exchange of a ${size}-resource member vs plain download`,
        ratio: downloadMs / exchangeMs,
        goal: '>= 1.0',
        detail: `download ${(downloadMs / 1000).toFixed(2)} s (${(bytes / 1e6).toFixed(1)} MB), exchange ${(exchangeMs / 1000).toFixed(2)} s (${await phases(requester.base, taskId)})`,
      });
      await requester.stop();
    }
    await source.stop();

    // 2. A large store and a small one: memory, the first query after a restart, two-parameter searches.
    if (Number(values.large) > 0 && Number(values.small) > 0) {
    const stores: Record<string, { dir: string; members: SyntheticMember[]; count: number }> = {};
    for (const [label, n] of [['small', Number(values.small)], ['large', Number(values.large)]] as const) {
      const members: SyntheticMember[] = [];
      const storeDir = path.join(dir, label);
      const count = await seed(storeDir, population(n, label, members), `${label} store`);
      stores[label] = { dir: storeDir, members, count };
    }
    // The stores' pages reach the disk before anything is timed: the kernel writing back a freshly
    // seeded million resources during the read rounds took CPU from one side of them.
    progress('writing the seeded stores to disk');
    execFileSync('sync');
    const searchP50: Record<string, number> = {};
    for (const label of ['small', 'large']) {
      const { dir: storeDir, members, count } = stores[label];
      progress(`restarting on the ${label} store (${count} resources)`);
      const server = await startServerProcess(serverEnv(storeDir));
      const q = (i: number) => {
        const m = members[(i * 7919) % members.length];
        return `${server.base}/Patient?family=${encodeURIComponent(m.family)}&birthdate=${m.birthDate}`;
      };
      const [, firstMs] = await timed(async () => (await fetch(q(0))).arrayBuffer());
      const lat: number[] = [];
      for (let i = 1; i <= 300; i++) {
        const [, ms] = await timed(async () => (await fetch(q(i))).arrayBuffer());
        lat.push(ms);
      }
      searchP50[label] = percentile(lat, 50);
      if (label === 'large') {
        figures.push({ name: `first query after a restart, ${count} resources`, ratio: firstMs / 1000, goal: '< 1.0 (seconds)', detail: `${firstMs.toFixed(0)} ms` });
      } else {
        progress('GET Patient/{id} against a bare Express app');
        figures.push(await againstBareApp(`${server.base}/Patient/${members[0].patientId}`, 'GET Patient/{id} vs a bare Express app', '>= 0.5'));
        progress('a search page against a bare Express app');
        figures.push(await againstBareApp(`${server.base}/Observation?_count=50`, 'GET Observation?_count=50 (a page of 50) vs a bare Express app', 'none set'));
        progress('whole-population export');
        figures.push(await exportFigure(server.base, storeDir, count));
      }
      if (label === 'large') {
        const rss = rssMb(server.pid);
        figures.push({ name: `server RSS holding ${count} resources`, ratio: rss / 400, goal: '< 1.0 (of 400 MB)', detail: `${rss.toFixed(0)} MB after the searches` });
      }
      await server.stop();
    }
    figures.push({
      name: `Patient?family&birthdate p50, ${stores.large.count} vs ${stores.small.count} resources`,
      ratio: searchP50.large / searchP50.small,
      goal: '<= 2.0',
      detail: `${searchP50.large.toFixed(2)} ms vs ${searchP50.small.toFixed(2)} ms`,
    });
    }

    // 3. Many exchanges at once.
    const concurrent = Number(values.concurrent);
    if (concurrent > 0) {
      const system = 'http://source-payer.example.com/member-id';
      const manyDir = path.join(dir, 'many-source');
      const members: SyntheticMember[] = [];
      await seed(
        manyDir,
        (function* () {
          const p = generatePopulation({ members: concurrent, prefix: 'many', memberSystem: system, encounters: 18 });
          members.push(...p.members);
          yield p.resources;
        })(),
        'source for concurrent exchanges',
      );
      const src = await startServerProcess(serverEnv(manyDir, { CLIENTS_FILE: clientsFile, AUTH_REQUIRED: 'true' }));
      fs.writeFileSync(payersFile, JSON.stringify([{ issuer: 'https://src.example', fhirBaseUrl: src.base, tokenEndpoint: src.tokenUrl, clientId: 'bench', clientAuthenticationMode: 'PRIVATE_KEY_JWT', privateKeyJwk: privateJwk, scopes: 'system/*.read', bulkMemberMatch: false }]));
      const requester = await startServerProcess(serverEnv(path.join(dir, 'many-requester'), { SOURCE_PAYERS_FILE: payersFile, POLL_MIN_MS: '50' }));
      const locals = await Promise.all(members.map((m) => createLocal(requester.base, m)));
      progress(`${concurrent} concurrent exchanges`);
      const [statuses, ms] = await timed(async () => {
        const ids = await Promise.all(
          members.map(async (m, i) => {
            const res = await fetch(`${requester.base}/Patient/$sdh.s2s.invoke-export`, { method: 'POST', headers: { 'content-type': 'application/fhir+json' }, body: JSON.stringify(invokeBody(locals[i], m, system)) });
            if (res.status !== 200) throw new Error(`invoke-export answered ${res.status}: ${(await res.text()).slice(0, 300)}`);
            return ((await res.json()) as { id: string }).id;
          }),
        );
        return waitForTasks(requester.base, ids);
      });
      const completed = statuses.filter((s) => s === 'completed').length;
      const perSecond = completed / (ms / 1000);
      figures.push({ name: `${concurrent} concurrent exchanges (about 60 resources each)`, ratio: perSecond / 10, goal: '>= 1.0 (of 10/s)', detail: `${completed} completed in ${(ms / 1000).toFixed(2)} s = ${perSecond.toFixed(1)}/s` });
      await requester.stop();
      await src.stop();
    }
    // 4. Many members in one request ($sdh.s2s.invoke-bulk-export), two servers.
    const bulk = Number(values.bulk);
    if (bulk > 0) {
      const system = 'http://source-payer.example.com/member-id';
      const bulkDir = path.join(dir, 'bulk-source');
      const members: SyntheticMember[] = [];
      const resources = await seed(
        bulkDir,
        (function* () {
          for (let b = 0; b * 250 < bulk; b++) {
            const p = generatePopulation({ members: Math.min(250, bulk - b * 250), prefix: `bulk${b}`, memberSystem: system, encounters: 18, seed: 100 + b });
            // Member ids unique across batches.
            for (const r of p.resources as any[]) for (const id of r.identifier ?? []) if (id.system === system) id.value = `${id.value}-${b}`;
            members.push(...p.members.map((m) => ({ ...m, memberId: `${m.memberId}-${b}` })));
            yield p.resources;
          }
        })(),
        'source for the bulk exchange',
      );
      const src = await startServerProcess(serverEnv(bulkDir, { CLIENTS_FILE: clientsFile, AUTH_REQUIRED: 'true' }));
      // Both ways of a bulk exchange: one $member-match and one export per member (the default), and
      // the source's $bulk-member-match with one $davinci-data-export of the group (bulkMemberMatch: true).
      for (const group of [false, true]) {
        const how = group ? 'by $bulk-member-match and one group export' : 'member by member';
        fs.writeFileSync(payersFile, JSON.stringify([{ issuer: 'https://src.example', fhirBaseUrl: src.base, tokenEndpoint: src.tokenUrl, clientId: 'bench', clientAuthenticationMode: 'PRIVATE_KEY_JWT', privateKeyJwk: privateJwk, scopes: 'system/*.read', bulkMemberMatch: group }]));
        const requester = await startServerProcess(serverEnv(path.join(dir, `bulk-requester-${group ? 'group' : 'each'}`), { SOURCE_PAYERS_FILE: payersFile, POLL_MIN_MS: '50' }));
        const locals: string[] = [];
        for (const m of members) locals.push(await createLocal(requester.base, m));
        progress(`one request for ${members.length} members, ${how}`);
        let peak = { source: 0, requester: 0 };
        const sampler = setInterval(() => {
          peak = { source: Math.max(peak.source, rssMb(src.pid)), requester: Math.max(peak.requester, rssMb(requester.pid)) };
        }, 500);
        const [parent, ms] = await timed(async () => {
          const body = {
            resourceType: 'Parameters',
            parameter: [
              { name: 'sourceIssuerUrl', valueString: 'https://src.example' },
              ...members.map((m, i) => ({ name: 'member', part: (invokeBody(locals[i], m, system).parameter as { name: string }[]).filter((p) => p.name === 'localPatient' || p.name === 'memberMatch') })),
            ],
          };
          const res = await fetch(`${requester.base}/Group/$sdh.s2s.invoke-bulk-export`, { method: 'POST', headers: { 'content-type': 'application/fhir+json' }, body: JSON.stringify(body) });
          const id = ((await res.json()) as { id: string }).id;
          for (;;) {
            const t = (await (await fetch(`${requester.base}/Task/${id}`)).json()) as { status: string; output?: { type: { text: string }; valueInteger?: number }[]; businessStatus?: { text?: string } };
            if (t.status === 'completed' || t.status === 'cancelled') return t;
            progress(`one request for ${members.length} members, ${how}: ${t.businessStatus?.text ?? t.status}`);
            await sleep(1000);
          }
        });
        clearInterval(sampler);
        const completed = parent.output?.find((o) => o.type.text === 'members:completed')?.valueInteger ?? 0;
        figures.push({ name: `${members.length} members (${resources} resources at the source) in one request, ${how}`, ratio: ms / 120_000, goal: '< 1.0 (of 2 min)', detail: `${completed} completed in ${(ms / 1000).toFixed(1)} s; peak RSS source ${peak.source.toFixed(0)} MB, requester ${peak.requester.toFixed(0)} MB (goal < 500)` });
        await requester.stop();
      }
      await src.stop();
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
  if (process.stderr.isTTY && lastProgress) process.stderr.write('\r\x1b[K');
  if (values.json) {
    console.log(JSON.stringify({ node: process.version, cores: os.cpus().length, engine: 'embedded (SQLite)', seconds: Math.round((Date.now() - started) / 1000), figures }, null, 2));
    return;
  }
  const w = Math.max(...figures.map((f) => f.name.length));
  console.log(`\nnode ${process.version}, ${os.cpus().length} cores, embedded engine (SQLite), ${Math.round((Date.now() - started) / 1000)} s\n`);
  console.log(`${'figure'.padEnd(w)}  ratio   goal               measured`);
  for (const f of figures) console.log(`${f.name.padEnd(w)}  ${f.ratio.toFixed(2).padStart(5)}   ${f.goal.padEnd(17)}  ${f.detail}`);
}

/**
 * Requests per second of `url` against a bare Express app serving the same bytes: alternating
 * rounds, the median round's ratio (a slow moment of the machine weighs on one round of both).
 */
async function againstBareApp(url: string, name: string, goal: string): Promise<Figure> {
  const res = await fetch(url);
  if (res.status !== 200) throw new Error(`${url} answered ${res.status}`);
  const bare = await startBareApp(await res.text(), res.headers.get('content-type') as string);
  const rounds: { ours: number; bare: number }[] = [];
  for (let i = 0; i < READ_ROUNDS; i++) rounds.push({ ours: await requestsPerSecond(url, 2), bare: await requestsPerSecond(bare.url, 2) });
  await bare.stop();
  rounds.sort((a, b) => a.ours / a.bare - b.ours / b.bare);
  const mid = rounds[Math.floor(READ_ROUNDS / 2)];
  return { name, ratio: mid.ours / mid.bare, goal, detail: `${Math.round(mid.ours)} vs ${Math.round(mid.bare)} requests/s (16 connections; median of ${READ_ROUNDS} alternating rounds, ratios ${rounds.map((r) => (r.ours / r.bare).toFixed(2)).join('–')})` };
}

async function benchToken(tokenUrl: string, privateJwk: unknown): Promise<string> {
  const { signClientAssertion } = await import('../src/requester/client-assertion');
  const assertion = await signClientAssertion({ clientId: 'bench', tokenUrl, privateJwk: privateJwk as never });
  const res = await fetch(tokenUrl, {
    method: 'POST',
    headers: { 'content-type': 'application/x-www-form-urlencoded' },
    body: new URLSearchParams({ grant_type: 'client_credentials', scope: 'system/*.read', client_assertion_type: 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer', client_assertion: assertion }).toString(),
  });
  return ((await res.json()) as { access_token: string }).access_token;
}

/** A whole-population export (kick-off to the last file read) against streaming the same resources from the store in this process. */
async function exportFigure(base: string, storeDir: string, count: number): Promise<Figure> {
  const [lines, exportMs] = await timed(async () => {
    const k = await fetch(`${base}/Patient/$export`, { headers: { prefer: 'respond-async' } });
    await k.arrayBuffer();
    const status = k.headers.get('content-location') as string;
    for (;;) {
      const s = await fetch(status);
      if (s.status === 200) {
        const manifest = (await s.json()) as { output: { url: string }[] };
        let n = 0;
        for (const o of manifest.output) for (const ch of (await (await fetch(o.url)).text())) if (ch === '\n') n++;
        return n;
      }
      await s.arrayBuffer();
      await sleep(50);
    }
  });
  // The floor: every resource read from the store and serialised, no HTTP, no job.
  const db = new SqliteDatabase(storeDir);
  const store = new ResourceStore(db, registry);
  const [read, readMs] = await timed(async () => {
    let n = 0;
    for (const type of RESOURCE_TYPES) for await (const r of store.stream(type, {}, 1000)) n += JSON.stringify(r).length > 0 ? 1 : 0;
    return n;
  });
  await db.close();
  void count;
  return { name: 'Patient/$export of every member vs reading the store', ratio: readMs / exportMs, goal: 'no worse', detail: `${lines} resources in ${(exportMs / 1000).toFixed(2)} s = ${Math.round(lines / (exportMs / 1000))}/s (store read: ${read} in ${(readMs / 1000).toFixed(2)} s)` };
}

for (const signal of ['SIGINT', 'SIGTERM'] as const) process.once(signal, () => process.exit(130));
main().catch((err) => {
  console.error(err instanceof Error ? err.message : err);
  process.exit(1);
});
