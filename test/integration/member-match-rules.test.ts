import { RunningServer } from '../../src/main';
import { SyntheticMember } from '../../scripts/synthetic';
import { capturingLogger, fhir, startTestServer } from '../helpers/server';
import { memberMatchBody, seedPopulation } from '../helpers/seed';
import { getToken, writeClientsFile } from '../helpers/clients';

/**
 * A hostile partner tries to use $member-match as a search: many guessed identifiers, many family
 * names, no birth date, another member's subscriberId. Each is refused before any look-up, grants
 * nothing, and costs the client one failed match per identifier it put forward, so it reaches 429.
 */
const SYSTEM = 'http://source-payer.example.com/member-id';
const FAMILIES = ['Smith', 'Johnson', 'Williams', 'Brown', 'Jones', 'Garcia', 'Miller', 'Davis', 'Rodriguez', 'Martinez', 'Hernandez', 'Lopez', 'Gonzalez', 'Wilson', 'Anderson', 'Thomas', 'Taylor', 'Moore', 'Jackson', 'Martin', 'Lee'];

type Body = ReturnType<typeof memberMatchBody>;
const withPatient = (body: Body, patient: Record<string, unknown>): Body => ({ ...body, parameter: body.parameter.map((p) => (p.name === 'MemberPatient' ? { ...p, resource: { resourceType: 'Patient', ...patient } } : p)) as Body['parameter'] });
const withCoverage = (body: Body, coverage: Record<string, unknown>): Body => ({ ...body, parameter: body.parameter.map((p) => (p.name === 'CoverageToMatch' ? { ...p, resource: { resourceType: 'Coverage', ...coverage } } : p)) as Body['parameter'] });
/** `n` guessed member ids, the real one among them. */
const guesses = (n: number, real: string, system?: string) => Array.from({ length: n }, (_, i) => ({ ...(system ? { system } : {}), value: i === Math.floor(n / 2) ? real : `MEM-${900000 + i}` }));

describe('$member-match cannot be used to search', () => {
  let server: RunningServer;
  let members: SyntheticMember[];
  let url: string;
  let token: string;
  let service: string;
  let lines: string[];
  const auth = (t = token) => ({ authorization: `Bearer ${t}` });
  // What each hostile request below costs, one failure per identifier it names; two more are left.
  const COSTS = { tenThousand: 10_000, birthDateOnly: 1, familyOnlyNoSystem: 1, noSystem: 1, fifty: 50, secondSubscriber: 2, secondFamily: 1, manyNames: 1 };
  const HOSTILE = Object.values(COSTS).reduce((a, b) => a + b, 0);
  const LEFT = 2;

  beforeAll(async () => {
    const { file, clients } = await writeClientsFile([
      { clientId: 'prober', scopes: 'system/*.read' },
      { clientId: 'back-office', scopes: 'system/*.*', role: 'service' },
    ]);
    const captured = capturingLogger();
    lines = captured.lines;
    server = await startTestServer({ authRequired: true, clientsFile: file, memberMatchMaxFailures: HOSTILE + LEFT, memberIdSystem: SYSTEM }, captured.logger);
    members = await seedPopulation(server, 4);
    url = `${server.baseUrl}/Patient/$member-match`;
    token = await getToken(server.tokenUrl, clients.prober);
    service = await getToken(server.tokenUrl, clients['back-office'], 'system/*.*');
  });
  afterAll(async () => server.stop());

  /** The request fails with a 422 OperationOutcome naming no member data of `m`. */
  async function refused(body: unknown, m: SyntheticMember) {
    const res = await fhir('POST', url, body, auth());
    expect(res.status).toBe(422);
    expect(res.body.resourceType).toBe('OperationOutcome');
    for (const secret of [m.memberId, m.family, m.birthDate, m.patientId]) expect(res.text).not.toContain(secret);
    return res.body.issue[0].diagnostics as string;
  }

  it('10,000 guessed ids without a system and 21 family names, no birth date: refused', async () => {
    const m = members[0];
    const body = withCoverage(withPatient(memberMatchBody(m), { name: [...FAMILIES.slice(0, 10), m.family, ...FAMILIES.slice(10, 20)].map((family) => ({ family })) }), { identifier: guesses(10_000, m.memberId) });
    expect(await refused(body, m)).toMatch(/10000 different member identifiers/);
  });

  it('a member id and a birth date only: refused', async () => {
    const m = members[0];
    expect(await refused(withPatient(memberMatchBody(m), { birthDate: m.birthDate }), m)).toMatch(/family name/);
  });

  it('an id without a system and a family name only: refused', async () => {
    const m = members[0];
    await refused(withCoverage(withPatient(memberMatchBody(m), { name: [{ family: m.family }] }), { identifier: [{ value: m.memberId }] }), m);
  });

  it('an id without the payer\'s member id system, even with the right demographics: refused', async () => {
    const m = members[0];
    expect(await refused(withCoverage(memberMatchBody(m), { identifier: [{ value: m.memberId }] }), m)).toMatch(/member id system/);
  });

  it('50 ids with the right system and the right demographics: refused', async () => {
    const m = members[0];
    expect(await refused(withCoverage(memberMatchBody(m), { identifier: guesses(50, m.memberId, SYSTEM) }), m)).toMatch(/50 different member identifiers/);
  });

  it("another member's subscriberId as a second candidate: refused", async () => {
    const [m, other] = members;
    // The subscriberId narrows what the identifier finds (both must be the Coverage's): it never reaches a second member.
    const body = withCoverage(memberMatchBody(m), { identifier: [{ system: SYSTEM, value: other.memberId }], subscriberId: `SUB-${m.memberId.slice(4)}` });
    expect(await refused(body, m)).not.toMatch(/identifier/);
    const reversed = withCoverage(memberMatchBody(m), { identifier: [{ system: SYSTEM, value: m.memberId }], subscriberId: `SUB-${other.memberId.slice(4)}` });
    expect(await refused(reversed, m)).not.toMatch(/identifier/);
  });

  it("the member's family as a second name after a wrong official one: no match", async () => {
    const m = members[0];
    await refused(withPatient(memberMatchBody(m), { name: [{ use: 'official', family: 'Nobody', given: [m.given] }, { family: m.family, given: [m.given] }], birthDate: m.birthDate }), m);
    await refused(withPatient(memberMatchBody(m), { name: [m.family, 'A', 'B', 'C'].map((family) => ({ family, given: [m.given] })), birthDate: m.birthDate }), m);
  });

  it('none of them granted anything: the partner cannot read the members, no Consent was stored, nothing was logged', async () => {
    for (const m of members.slice(0, 2)) {
      expect((await fhir('GET', `${server.baseUrl}/Patient/${m.patientId}`, undefined, auth())).status).toBe(404);
      const obs = await fhir('GET', `${server.baseUrl}/Observation?patient=Patient/${m.patientId}`, undefined, auth());
      expect(obs.body.entry ?? []).toEqual([]);
    }
    expect((await fhir('GET', `${server.baseUrl}/Consent?_summary=count`, undefined, auth(service))).body.total).toBe(0);
    const logged = lines.join('\n');
    for (const secret of [members[0].memberId, members[0].birthDate, members[1].memberId]) expect(logged).not.toContain(secret);
  });

  it('a card with both the member id and its own subscriber id (as HRex\'s Coverage example) matches', async () => {
    const m = members[2];
    const body = withCoverage(memberMatchBody(m), { identifier: [{ system: SYSTEM, value: m.memberId }], subscriberId: `SUB-${m.memberId.slice(4)}` });
    const res = await fhir('POST', url, body, auth());
    expect(res.status).toBe(200);
  });

  it('an honest request still matches, then the allowance left (charged per identifier) runs out into 429', async () => {
    const m = members[2];
    const ok = await fhir('POST', url, memberMatchBody(m), auth());
    expect(ok.status).toBe(200);
    expect(ok.body.parameter.find((p: { name: string }) => p.name === 'MemberId').valueReference.reference).toBe(`Patient/${m.patientId}`);
    expect((await fhir('GET', `${server.baseUrl}/Patient/${m.patientId}`, undefined, auth())).status).toBe(200);
    // A match costs nothing; what is left after the hostile requests is exactly LEFT guesses.
    for (let i = 0; i < LEFT; i++) expect((await fhir('POST', url, memberMatchBody({ ...members[3], birthDate: '1901-01-01' }), auth())).status).toBe(422);
    const throttled = await fhir('POST', url, memberMatchBody(members[3]), auth());
    expect(throttled.status).toBe(429);
    expect(throttled.body.resourceType).toBe('OperationOutcome');
    expect(Number(throttled.headers.get('retry-after'))).toBeGreaterThan(0);
    expect((await fhir('GET', `${server.baseUrl}/Patient/${members[3].patientId}`, undefined, auth())).status).toBe(404);
    expect((await fhir('GET', `${server.baseUrl}/metadata`)).status).toBe(200);
  });
});

describe('$member-match allowance: a request naming many identifiers uses it up at once', () => {
  it('50 guesses from a client allowed 10 failures: refused, and its next honest request is 429', async () => {
    const { file, clients } = await writeClientsFile([{ clientId: 'prober', scopes: 'system/*.read' }]);
    const server = await startTestServer({ authRequired: true, clientsFile: file, memberMatchMaxFailures: 10 });
    try {
      const [m] = await seedPopulation(server, 1);
      const auth = { authorization: `Bearer ${await getToken(server.tokenUrl, clients.prober)}` };
      const url = `${server.baseUrl}/Patient/$member-match`;
      expect((await fhir('POST', url, withCoverage(memberMatchBody(m), { identifier: guesses(50, m.memberId, SYSTEM) }), auth)).status).toBe(422);
      const next = await fhir('POST', url, memberMatchBody(m), auth);
      expect(next.status).toBe(429);
      expect(Number(next.headers.get('retry-after'))).toBeGreaterThan(0);
      expect((await fhir('GET', `${server.baseUrl}/Patient/${m.patientId}`, undefined, auth)).status).toBe(404);
    } finally {
      await server.stop();
    }
  });
});
