/**
 * npm run bench: speed figures on this machine, printed as a table (never asserted in tests).
 *   npm run bench -- [--members 200] [--writes 2000]
 * Measures, against real HTTP servers on loopback with the embedded engine:
 *   - writes: PUT throughput with concurrency 8
 *   - search: latency of ExplanationOfBenefit?patient=… and Patient?family=…&birthdate=…
 *   - export: time for a patient-level export of the whole population
 *   - exchange: one member's $sdh.s2s.invoke-export, from the call to the Task completed
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { loadConfig } from '../src/config';
import { createLogger } from '../src/logger';
import { startServer } from '../src/main';
import { generateClientKeys } from '../src/auth/keys';
import { generatePopulation } from './synthetic';

const percentile = (xs: number[], p: number) => [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor((p / 100) * xs.length))];

async function timed<T>(fn: () => Promise<T>): Promise<[T, number]> {
  const t = process.hrtime.bigint();
  const r = await fn();
  return [r, Number(process.hrtime.bigint() - t) / 1e6];
}

async function main() {
  const { values } = parseArgs({ options: { members: { type: 'string', default: '200' }, writes: { type: 'string', default: '2000' } } });
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'p2p-bench-'));
  const logger = createLogger('error');
  const base = loadConfig({ HOST: '127.0.0.1', PORT: '0' } as NodeJS.ProcessEnv);
  const { publicJwk, privateJwk } = await generateClientKeys('ES384');
  const clientsFile = path.join(dir, 'clients.json');
  fs.writeFileSync(clientsFile, JSON.stringify([{ clientId: 'bench', jwks: { keys: [publicJwk] }, scopes: 'system/*.read' }]));
  const source = await startServer({ ...base, dataDir: path.join(dir, 's'), exportDir: path.join(dir, 's', 'x'), authRequired: false, clientsFile, sourcePayersFile: path.join(dir, 'none') }, logger);
  const rows: [string, string][] = [];

  // Writes
  const { resources, members } = generatePopulation({ members: Number(values.members) });
  const writes = resources.slice(0, Math.min(resources.length, Number(values.writes)));
  let next = 0;
  const [, writeMs] = await timed(() =>
    Promise.all(
      Array.from({ length: 8 }, async () => {
        while (next < writes.length) {
          const r = writes[next++];
          const res = await fetch(`${source.baseUrl}/${r.resourceType}/${r.id}`, { method: 'PUT', headers: { 'content-type': 'application/fhir+json' }, body: JSON.stringify(r) });
          if (!res.ok) throw new Error(`PUT failed: ${res.status}`);
          await res.arrayBuffer();
        }
      }),
    ),
  );
  rows.push(['writes (PUT, 8 concurrent)', `${writes.length} in ${(writeMs / 1000).toFixed(2)} s = ${Math.round(writes.length / (writeMs / 1000))}/s`]);
  for (const r of resources.slice(writes.length)) await source.store.update(r.resourceType, r.id as string, r);
  rows.push(['population', `${members.length} members, ${resources.length} resources`]);

  // Search latency
  for (const [label, make] of [
    ['search EOB?patient=', (i: number) => `ExplanationOfBenefit?patient=${members[i % members.length].patientId}`],
    ['search Patient?family&birthdate', (i: number) => `Patient?family=${encodeURIComponent(members[i % members.length].family)}&birthdate=${members[i % members.length].birthDate}`],
  ] as [string, (i: number) => string][]) {
    const lat: number[] = [];
    for (let i = 0; i < 200; i++) {
      const [, ms] = await timed(async () => (await fetch(`${source.baseUrl}/${make(i)}`)).arrayBuffer());
      lat.push(ms);
    }
    rows.push([label, `p50 ${percentile(lat, 50).toFixed(1)} ms, p95 ${percentile(lat, 95).toFixed(1)} ms (200 requests)`]);
  }

  // Whole-population export
  const [lines, exportMs] = await timed(async () => {
    const k = await fetch(`${source.baseUrl}/Patient/$export`, { headers: { prefer: 'respond-async' } });
    const status = k.headers.get('content-location') as string;
    for (;;) {
      const s = await fetch(status);
      if (s.status === 200) {
        const manifest = (await s.json()) as { output: { url: string }[] };
        let n = 0;
        for (const o of manifest.output) n += (await (await fetch(o.url)).text()).split('\n').filter(Boolean).length;
        return n;
      }
      await s.arrayBuffer();
      await new Promise((r) => setTimeout(r, 50));
    }
  });
  rows.push(['Patient/$export, whole population', `${lines} resources in ${(exportMs / 1000).toFixed(2)} s (incl. downloads)`]);

  // One exchange end to end
  const payersFile = path.join(dir, 'payers.json');
  fs.writeFileSync(payersFile, JSON.stringify([{ issuer: 'https://src.example', fhirBaseUrl: source.baseUrl, tokenEndpoint: source.tokenUrl, clientId: 'bench', clientAuthenticationMode: 'PRIVATE_KEY_JWT', privateKeyJwk: privateJwk, scopes: 'system/*.read' }]));
  const requester = await startServer({ ...base, dataDir: path.join(dir, 'r'), exportDir: path.join(dir, 'r', 'x'), authRequired: false, clientsFile: path.join(dir, 'none'), sourcePayersFile: payersFile, pollMinMs: 50 }, logger);
  const m = members[1];
  const local = (await (await fetch(`${requester.baseUrl}/Patient`, { method: 'POST', headers: { 'content-type': 'application/fhir+json' }, body: JSON.stringify({ resourceType: 'Patient', name: [{ family: m.family }] }) })).json()) as { id: string };
  const [task, exchangeMs] = await timed(async () => {
    const res = await fetch(`${requester.baseUrl}/Patient/$sdh.s2s.invoke-export`, {
      method: 'POST',
      headers: { 'content-type': 'application/fhir+json' },
      body: JSON.stringify({
        resourceType: 'Parameters',
        parameter: [
          { name: 'localPatient', valueReference: { reference: `Patient/${local.id}` } },
          { name: 'sourceIssuerUrl', valueString: 'https://src.example' },
          { name: 'memberMatch', part: [
            { name: 'MemberPatient', resource: { resourceType: 'Patient', name: [{ family: m.family, given: [m.given] }], birthDate: m.birthDate } },
            { name: 'CoverageToMatch', resource: { resourceType: 'Coverage', identifier: [{ system: 'http://source-payer.example.com/member-id', value: m.memberId }] } },
            { name: 'Consent', resource: { resourceType: 'Consent', policy: [{ uri: '#regular' }] } },
          ] },
        ],
      }),
    });
    const id = ((await res.json()) as { id: string }).id;
    for (;;) {
      const t = (await (await fetch(`${requester.baseUrl}/Task/${id}`)).json()) as { status: string };
      if (!['requested', 'in-progress'].includes(t.status)) return t;
      await new Promise((r) => setTimeout(r, 20));
    }
  });
  rows.push(['exchange (invoke-export → Task done)', `${task.status} in ${(exchangeMs / 1000).toFixed(2)} s (includes the source's Retry-After: 1 s poll)`]);

  await requester.stop();
  await source.stop();
  fs.rmSync(dir, { recursive: true, force: true });
  const w = Math.max(...rows.map((r) => r[0].length));
  console.log(`\nnode ${process.version}, ${os.cpus().length} cores, embedded engine\n`);
  for (const [k, v] of rows) console.log(`${k.padEnd(w)}  ${v}`);
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
