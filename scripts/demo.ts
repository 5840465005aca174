/* eslint-disable @typescript-eslint/no-explicit-any */
/**
 * npm run demo: starts a source payer and a requesting payer on loopback, registers the requesting
 * payer as a client of the source (SMART Backend Services, ES384 key), seeds the source, then calls
 * POST Patient/$sdh.s2s.invoke-export on the requesting payer and shows the Task until it is done.
 *   npm run demo -- [--members 25] [--keep]   (--keep leaves both servers running)
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

const ISSUER = 'https://source-payer.example.com';

async function main() {
  const { values } = parseArgs({ options: { members: { type: 'string', default: '25' }, keep: { type: 'boolean', default: false }, help: { type: 'boolean', short: 'h' } } });
  if (values.help) {
    console.log('Two payers on loopback run one whole exchange, showing the Task as it goes.\n\n  npm run demo -- [--members 25] [--keep]   (--keep leaves both servers running)');
    return;
  }
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'p2p-demo-'));
  const logger = createLogger('warn');
  const say = (s: string) => console.log(s);

  // 1. The requesting payer's key pair; its public half registered at the source.
  const { publicJwk, privateJwk } = await generateClientKeys('ES384');
  const clientsFile = path.join(dir, 'source-clients.json');
  fs.writeFileSync(clientsFile, JSON.stringify([{ clientId: 'new-health-plan', jwks: { keys: [publicJwk] }, scopes: 'system/*.read' }]));

  const base = loadConfig({ HOST: '127.0.0.1', PORT: '0' } as NodeJS.ProcessEnv);
  const source = await startServer({ ...base, dataDir: path.join(dir, 'source'), authRequired: true, clientsFile, sourcePayersFile: path.join(dir, 'none.json') }, logger);
  say(`Source payer      ${source.baseUrl}  (auth on, token endpoint ${source.tokenUrl})`);

  // 2. Seed the source with a synthetic population.
  const { resources, members } = generatePopulation({ members: Number(values.members) });
  for (const r of resources) await source.store.update(r.resourceType, r.id as string, r);
  say(`Seeded the source with ${resources.length} resources for ${members.length} members`);

  // 3. The requesting payer, with the source registered under its issuer.
  const sourcePayersFile = path.join(dir, 'source-payers.json');
  fs.writeFileSync(sourcePayersFile, JSON.stringify([{ issuer: ISSUER, name: 'Source Health Plan', fhirBaseUrl: source.baseUrl, clientId: 'new-health-plan', clientAuthenticationMode: 'PRIVATE_KEY_JWT', privateKeyJwk: privateJwk, scopes: 'system/*.read', responderIdentifierSystem: `${ISSUER}/resource-id` }]));
  const requester = await startServer({ ...base, dataDir: path.join(dir, 'requester'), authRequired: false, clientsFile: path.join(dir, 'none.json'), sourcePayersFile, pollMinMs: 200, requestingPayerName: 'New Health Plan' }, logger);
  say(`Requesting payer  ${requester.baseUrl}  (token endpoint discovered from the source's smart-configuration)`);

  // 4. The member joins the new plan: a local Patient.
  const m = members[0];
  const created = await post(`${requester.baseUrl}/Patient`, { resourceType: 'Patient', name: [{ family: m.family, given: [m.given] }], birthDate: m.birthDate, gender: m.gender });
  say(`Local Patient     Patient/${created.body.id} (${m.given} ${m.family}, member ${m.memberId} at the source)`);

  // 5. The operation.
  const res = await post(`${requester.baseUrl}/Patient/$sdh.s2s.invoke-export`, {
    resourceType: 'Parameters',
    parameter: [
      { name: 'localPatient', valueReference: { reference: `Patient/${created.body.id}` } },
      { name: 'sourceIssuerUrl', valueString: ISSUER },
      {
        name: 'memberMatch',
        part: [
          { name: 'MemberPatient', resource: { resourceType: 'Patient', name: [{ family: m.family, given: [m.given] }], birthDate: m.birthDate } },
          { name: 'CoverageToMatch', resource: { resourceType: 'Coverage', identifier: [{ system: 'http://source-payer.example.com/member-id', value: m.memberId }] } },
          { name: 'Consent', resource: { resourceType: 'Consent', policy: [{ uri: 'http://hl7.org/fhir/us/davinci-hrex/StructureDefinition-hrex-consent.html#regular' }] } },
        ],
      },
    ],
  });
  say(`\nPOST Patient/$sdh.s2s.invoke-export → ${res.status}, Content-Location: ${res.headers.get('content-location')}`);
  const taskUrl = `${requester.baseUrl}/Task/${res.body.id}`;

  // 6. Watch the Task.
  let last = '';
  let task = res.body;
  const deadline = Date.now() + 120_000;
  while (['requested', 'in-progress'].includes(task.status) && Date.now() < deadline) {
    const line = `  Task ${task.status.padEnd(11)} ${task.businessStatus?.text ?? ''}`;
    if (line !== last) say(line);
    last = line;
    await new Promise((r) => setTimeout(r, 200));
    task = (await get(taskUrl)).body;
  }
  say(`  Task ${task.status.padEnd(11)} ${task.statusReason?.text ?? task.businessStatus?.text ?? ''}`);
  say('\nTask notes:');
  for (const n of task.note ?? []) say(`  ${n.time}  ${n.text}`);
  say('\nImported:');
  for (const o of task.output ?? []) if (o.type.text.startsWith('count:')) say(`  ${o.type.text.slice(6).padEnd(22)} ${o.valueInteger}`);
  const eobs = (await get(`${requester.baseUrl}/ExplanationOfBenefit?patient=${created.body.id}`)).body;
  say(`\nGET ${requester.baseUrl}/ExplanationOfBenefit?patient=${created.body.id} → ${eobs.total} claims`);

  if (values.keep) {
    say('\nBoth servers keep running; Ctrl-C stops them.');
    process.once('SIGINT', () => void Promise.all([requester.stop(), source.stop()]).then(() => process.exit(0)));
    return;
  }
  await requester.stop();
  await source.stop();
  fs.rmSync(dir, { recursive: true, force: true });
  if (task.status !== 'completed') process.exit(1);
}

async function post(url: string, body: unknown) {
  const res = await fetch(url, { method: 'POST', headers: { 'content-type': 'application/fhir+json' }, body: JSON.stringify(body) });
  return { status: res.status, headers: res.headers, body: (await res.json()) as any };
}
async function get(url: string) {
  const res = await fetch(url);
  return { status: res.status, body: (await res.json()) as any };
}

main().catch((err) => {
  console.error(err instanceof Error ? err.message : err);
  process.exit(1);
});
