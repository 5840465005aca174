import fs from 'node:fs';
import path from 'node:path';
import { RunningServer } from '../../src/main';
import { AppConfig } from '../../src/config';
import type { Logger } from '../../src/logger';
import { SyntheticMember } from '../../scripts/synthetic';
import { seedPopulation } from './seed';
import { startTestServer, tempDir, fhir } from './server';
import { TestClient, writeClientsFile } from './clients';

export const REQUESTER_CLIENT_ID = 'requesting-payer';
export const SOURCE_ISSUER = 'https://source-payer.example.com';

export interface SourcePayerFixture {
  server: RunningServer;
  members: SyntheticMember[];
  client: TestClient;
  clientsFile: string;
}

/** A source payer: auth on, the requesting payer registered as a client, a seeded population. */
export async function startSource(members = 5, overrides: Partial<AppConfig> = {}, logger?: Logger): Promise<SourcePayerFixture> {
  const { file, clients } = await writeClientsFile([{ clientId: REQUESTER_CLIENT_ID, scopes: 'system/*.read' }]);
  const server = await startTestServer({ authRequired: true, clientsFile: file, ...overrides }, logger);
  const list = members > 0 ? await seedPopulation(server, members) : [];
  return { server, members: list, client: clients[REQUESTER_CLIENT_ID], clientsFile: file };
}

/** How a requesting payer reaches a source payer started by `startSource` (its token URL, FHIR base and our client there). */
export function reaching(source: SourcePayerFixture, payer?: Record<string, unknown>): { tokenUrl: string; fhirBaseUrl: string; client: TestClient; payer?: Record<string, unknown> } {
  return { tokenUrl: source.server.tokenUrl, fhirBaseUrl: source.server.baseUrl, client: source.client, ...(payer ? { payer } : {}) };
}

/** A requesting payer whose registry names the source (optionally reached through a proxy URL). */
export async function startRequester(source: { tokenUrl: string; fhirBaseUrl: string; client: TestClient; payer?: Record<string, unknown> }, overrides: Partial<AppConfig> = {}, logger?: Logger): Promise<RunningServer> {
  const dir = tempDir('requester-config-');
  const sourcePayersFile = path.join(dir, 'source-payers.json');
  fs.writeFileSync(
    sourcePayersFile,
    JSON.stringify([
      {
        issuer: SOURCE_ISSUER,
        name: 'Source Health Plan',
        fhirBaseUrl: source.fhirBaseUrl,
        ...(source.tokenUrl ? { tokenEndpoint: source.tokenUrl } : {}),
        clientId: source.client.clientId,
        clientAuthenticationMode: 'PRIVATE_KEY_JWT',
        privateKeyJwk: source.client.privateJwk,
        scopes: 'system/*.read',
        responderIdentifierSystem: `${SOURCE_ISSUER}/resource-id`,
        ...(source.payer ?? {}),
      },
    ]),
  );
  return startTestServer({
    sourcePayersFile,
    pollMinMs: 50,
    pollMaxMs: 1500,
    remoteRetries: 3,
    remoteRetryBaseMs: 50,
    remoteRetryMaxMs: 1500,
    requestingPayerName: 'New Health Plan',
    ...overrides,
  }, logger);
}

export function invokeBody(localPatientId: string, m: SyntheticMember, opts: { policy?: string; exportParts?: unknown[]; issuer?: string } = {}) {
  const parameter: unknown[] = [
    { name: 'localPatient', valueReference: { reference: `Patient/${localPatientId}` } },
    { name: 'sourceIssuerUrl', valueString: opts.issuer ?? SOURCE_ISSUER },
    {
      name: 'memberMatch',
      part: [
        { name: 'MemberPatient', resource: { resourceType: 'Patient', name: [{ family: m.family, given: [m.given] }], birthDate: m.birthDate } },
        { name: 'CoverageToMatch', resource: { resourceType: 'Coverage', identifier: [{ system: 'http://source-payer.example.com/member-id', value: m.memberId }] } },
        { name: 'Consent', resource: { resourceType: 'Consent', policy: [{ uri: `http://hl7.org/fhir/us/davinci-hrex/StructureDefinition-hrex-consent.html#${opts.policy ?? 'regular'}` }] } },
      ],
    },
  ];
  if (opts.exportParts) parameter.push({ name: 'export', part: opts.exportParts });
  return { resourceType: 'Parameters', parameter };
}

/** Creates the member's Patient at the requesting payer. */
export async function createLocalPatient(requester: RunningServer, m: SyntheticMember): Promise<string> {
  const res = await fhir('POST', `${requester.baseUrl}/Patient`, { resourceType: 'Patient', name: [{ family: m.family, given: [m.given] }], birthDate: m.birthDate, gender: m.gender });
  return res.body.id;
}

/** Polls the Task until it leaves requested/in-progress (or the predicate holds). */
export async function waitForTask(requester: RunningServer, taskId: string, until: (t: any) => boolean = (t) => !['requested', 'in-progress'].includes(t.status), timeoutMs = 30000): Promise<any> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    let task: any;
    try {
      task = (await fhir('GET', `${requester.baseUrl}/Task/${taskId}`)).body;
    } catch {
      task = undefined; // a restarting server
    }
    if (task && until(task)) return task;
    if (Date.now() > deadline) throw new Error(`Task/${taskId} did not get there in time: ${JSON.stringify(task?.status)} ${JSON.stringify(task?.note)}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}
