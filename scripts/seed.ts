/**
 * Seeds a running server with a synthetic member population, through its REST API (PUT, so seeding
 * twice changes nothing but versions):
 *   npm run seed -- --members 100 [--url http://127.0.0.1:3000/4_0_1] [--token T] [--prefix src]
 */
import { parseArgs } from 'node:util';
import { generatePopulation } from './synthetic';

const USAGE = `Seeds a running server with a synthetic member population through its REST API.

  npm run seed -- [--members 100] [--url http://127.0.0.1:3000/4_0_1] [--token T] [--prefix src]
      [--member-system http://source-payer.example.com/member-id] [--concurrency 8]

--token (or FHIR_TOKEN) is a bearer token with write scopes, when the server requires one.`;

async function main() {
  const { values } = parseArgs({
    options: {
      members: { type: 'string', default: '100' },
      url: { type: 'string', default: process.env.FHIR_URL || 'http://127.0.0.1:3000/4_0_1' },
      token: { type: 'string', default: process.env.FHIR_TOKEN },
      prefix: { type: 'string', default: 'src' },
      'member-system': { type: 'string', default: 'http://source-payer.example.com/member-id' },
      concurrency: { type: 'string', default: '8' },
      help: { type: 'boolean', short: 'h' },
    },
  });
  if (values.help) {
    console.log(USAGE);
    return;
  }
  const members = Number(values.members);
  if (!Number.isInteger(members) || members < 1) throw new Error('--members must be a positive integer');
  const { resources, members: list } = generatePopulation({ members, prefix: values.prefix, memberSystem: values['member-system'] });
  const base = (values.url as string).replace(/\/+$/, '');
  const headers: Record<string, string> = { 'content-type': 'application/fhir+json' };
  if (values.token) headers.authorization = `Bearer ${values.token}`;
  let next = 0;
  let done = 0;
  const started = Date.now();
  const worker = async () => {
    while (next < resources.length) {
      const r = resources[next++];
      const res = await fetch(`${base}/${r.resourceType}/${r.id}`, { method: 'PUT', headers, body: JSON.stringify(r) });
      if (!res.ok) throw new Error(`${r.resourceType}/${r.id}: HTTP ${res.status} ${await res.text()}`);
      done++;
      if (done % 500 === 0) process.stderr.write(`\r${done} of ${resources.length} resources`);
    }
  };
  await Promise.all(Array.from({ length: Number(values.concurrency) }, worker));
  if (done >= 500) process.stderr.write('\n');
  console.log(`Seeded ${done} resources for ${members} members into ${base} in ${((Date.now() - started) / 1000).toFixed(1)} s`);
  const m = list[0];
  console.log(`Example member: ${m.given} ${m.family}, born ${m.birthDate}, member id ${m.memberId} (${values['member-system']})`);
}

main().catch((err) => {
  console.error(err.message);
  process.exit(1);
});
