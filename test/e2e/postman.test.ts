import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import type { AddressInfo } from 'node:net';
import { RunningServer } from '../../src/main';
import { startTestServer, tempDir } from '../helpers/server';
import { seedPopulation } from '../helpers/seed';
import { writeClientsFile } from '../helpers/clients';

// eslint-disable-next-line @typescript-eslint/no-var-requires
const newman = require('newman');

/**
 * The Postman collection a payer's engineers import (postman/), run with newman as they would run
 * it, against a started server that is its own source payer: every assertion in it must pass.
 */
const freePort = () =>
  new Promise<number>((resolve) => {
    const s = net.createServer().listen(0, '127.0.0.1', () => {
      const port = (s.address() as AddressInfo).port;
      s.close(() => resolve(port));
    });
  });

describe('the Postman collection, run by newman', () => {
  let server: RunningServer;
  afterAll(async () => server?.stop());

  it('passes every assertion: discovery, token, REST, $member-match, an exchange followed to the end, a bulk export', async () => {
    const port = await freePort();
    const base = `http://127.0.0.1:${port}/4_0_1`;
    const { file, clients } = await writeClientsFile([
      { clientId: 'back-office', scopes: 'system/*.*', role: 'service', secret: 'postman-secret' },
      { clientId: 'self', scopes: 'system/*.read' },
    ]);
    const payersFile = path.join(tempDir('postman-'), 'source-payers.json');
    fs.writeFileSync(payersFile, JSON.stringify([{ issuer: 'https://source-payer.example.com', name: 'Source Health Plan', fhirBaseUrl: base, tokenEndpoint: `http://127.0.0.1:${port}/oauth/token`, clientId: 'self', clientAuthenticationMode: 'PRIVATE_KEY_JWT', privateKeyJwk: clients.self.privateJwk, scopes: 'system/*.read' }]));
    server = await startTestServer({ port, authRequired: true, clientsFile: file, sourcePayersFile: payersFile, pollMinMs: 50 });
    const member = (await seedPopulation(server, 3))[0];
    const collection = JSON.parse(fs.readFileSync(path.join(__dirname, '..', '..', 'postman', 'p2p-fhir-server.postman_collection.json'), 'utf8'));
    const environment = JSON.parse(fs.readFileSync(path.join(__dirname, '..', '..', 'postman', 'p2p-fhir-server.postman_environment.json'), 'utf8'));
    const values: Record<string, string> = {
      base,
      tokenUrl: server.tokenUrl,
      clientId: 'back-office',
      clientSecret: 'postman-secret',
      memberFamily: member.family,
      memberGiven: member.given,
      memberBirthDate: member.birthDate,
      memberId: member.memberId,
    };
    for (const v of environment.values) if (v.key in values) v.value = values[v.key];
    const summary: any = await new Promise((resolve, reject) => newman.run({ collection, environment, reporters: [] }, (err: Error | null, s: unknown) => (err ? reject(err) : resolve(s))));
    const failures = summary.run.failures.map((f: any) => `${f.source?.name}: ${f.error?.test ?? ''} ${f.error?.message}`);
    expect(failures).toEqual([]);
    const assertions = summary.run.stats.assertions;
    expect(assertions.total).toBeGreaterThanOrEqual(14);
    expect(assertions.failed).toBe(0);
  }, 120_000);
});
