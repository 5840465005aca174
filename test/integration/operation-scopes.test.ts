import fs from 'node:fs';
import { RunningServer } from '../../src/main';
import { fhir, startTestServer } from '../helpers/server';
import { memberMatchBody, seedPopulation } from '../helpers/seed';
import { getToken, requestToken, writeClientsFile } from '../helpers/clients';
import { kickoff } from '../helpers/bulk';

const MEMBER_MATCH_SCOPE = 'http://hl7.org/fhir/us/davinci-hrex/OperationDefinition/member-match';
const BULK_SCOPE = 'http://hl7.org/fhir/us/davinci-pdex/OperationDefinition/BulkMemberMatch';

/** PDex's "Scopes for Operations": a partner that asks for the operations' canonical URLs as scopes, as the IG proposes. */
describe("PDex's operation scopes", () => {
  let server: RunningServer;
  let clients: Awaited<ReturnType<typeof writeClientsFile>>['clients'];
  let dir: string;

  beforeAll(async () => {
    const written = await writeClientsFile([
      { clientId: 'single-plan', scopes: MEMBER_MATCH_SCOPE },
      { clientId: 'bulk-plan', scopes: `${BULK_SCOPE} system/Group.u?code=http://hl7.org/fhir/us/davinci-pdex/ValueSet/PDexMultiMemberMatchResultVS|match` },
      { clientId: 'narrow-plan', scopes: 'system/Coverage.read' },
    ]);
    clients = written.clients;
    server = await startTestServer({ authRequired: true, clientsFile: written.file });
    dir = server.config.dataDir;
  });
  afterAll(async () => {
    await server.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('grants the member-match scope and lets it match, then read only the matched member', async () => {
    const members = await seedPopulation(server, 2);
    const token = await getToken(server.tokenUrl, clients['single-plan'], MEMBER_MATCH_SCOPE);
    const auth = { authorization: `Bearer ${token}` };
    const match = await fhir('POST', `${server.baseUrl}/Patient/$member-match`, memberMatchBody(members[0]), auth);
    expect(match.status).toBe(200);
    expect((await fhir('GET', `${server.baseUrl}/Patient/${members[0].patientId}`, undefined, auth)).status).toBe(200);
    // The scope reads through the access policy: the member it did not match stays unknown.
    expect((await fhir('GET', `${server.baseUrl}/Patient/${members[1].patientId}`, undefined, auth)).status).toBe(404);
    expect((await fhir('GET', `${server.baseUrl}/Patient`, undefined, auth)).body.entry.map((e: any) => e.resource.id)).toEqual([members[0].patientId]);
    // Writing is not part of it.
    expect((await fhir('PUT', `${server.baseUrl}/Patient/${members[0].patientId}`, { resourceType: 'Patient', id: members[0].patientId }, auth)).status).toBe(403);
  });

  it('grants the bulk scopes and lets them start $bulk-member-match', async () => {
    const res = await requestToken(server.tokenUrl, { grant_type: 'client_credentials', scope: BULK_SCOPE });
    expect(res.status).toBe(401); // no client authentication: still refused
    const token = await getToken(server.tokenUrl, clients['bulk-plan'], `${BULK_SCOPE} system/Group.u?code=http://hl7.org/fhir/us/davinci-pdex/ValueSet/PDexMultiMemberMatchResultVS|match`);
    const members = await seedPopulation(server, 1, 'bulk');
    const k = await kickoff(`${server.baseUrl}/Group/$bulk-member-match`, { method: 'POST', token, body: { resourceType: 'Parameters', parameter: [{ name: 'MemberBundle', part: memberMatchBody(members[0]).parameter }] } });
    expect(k.status).toBe(202);
  });

  it('grants an operation scope only to a client registered for it', async () => {
    const res = await getToken(server.tokenUrl, clients['narrow-plan'], MEMBER_MATCH_SCOPE).catch((err: Error) => err.message);
    expect(String(res)).toMatch(/invalid_scope/);
  });
});
