import { RunningServer } from '../../src/main';
import { SyntheticMember } from '../../scripts/synthetic';
import { capturingLogger, fhir, startTestServer } from '../helpers/server';
import { hrexExampleConsent, memberMatchBody, NEW_PLAN_NPI, OLD_PLAN_NPI, seedPopulation } from '../helpers/seed';
import { download, kickoff, poll } from '../helpers/bulk';
import { getToken, writeClientsFile } from '../helpers/clients';

/**
 * The source side judges a partner's Consent as the HRex Consent profile says, through HTTP with
 * partner tokens: this payer is HRex's "Old Health Plan" (PAYER_IDENTIFIERS its NPI), the partner
 * `new-plan` is registered with the "New Health Plan" NPI, `third-plan` with another, and
 * `unnamed-plan` without identifiers. A Consent that cannot be honoured grants nothing and
 * answers the same whoever the member is.
 */
const RESULT = 'http://hl7.org/fhir/us/davinci-pdex/CodeSystem/PdexMultiMemberMatchResultCS';
const THIRD_NPI = { system: 'http://hl7.org/fhir/sid/us-npi', value: '5555555555' };
const today = new Date();
const iso = (daysFromNow: number) => new Date(today.getTime() + daysFromNow * 86_400_000).toISOString().slice(0, 10);
const current = { start: iso(-30), end: iso(300) };

/** The Consents no source may honour, each a change to HRex's example Consent (its period covering now). */
const HOSTILE: [string, (c: any) => void][] = [
  ['a deny', (c) => (c.provision.type = 'deny')],
  ['no period', (c) => delete c.provision.period],
  ['an open-ended period', (c) => delete c.provision.period.end],
  ['an expired period', (c) => (c.provision.period = { start: iso(-400), end: iso(-1) })],
  ['another payer as recipient', (c) => (c.provision.actor[1].reference.identifier = THIRD_NPI)],
  ['another payer as source', (c) => (c.provision.actor[0].reference.identifier = THIRD_NPI)],
];
const consentOf = (change?: (c: any) => void) => {
  const c = hrexExampleConsent({ period: { ...current } }) as any;
  change?.(c);
  return c;
};
const bodyWith = (m: SyntheticMember | { family: string; given: string; birthDate: string; memberId: string }, consent: unknown) => {
  const body = memberMatchBody(m);
  body.parameter[2].resource = consent as never;
  return body;
};
/** A result Group's outcome: Group.code (PDex 2.2), else its characteristic (2.1). */
const outcomeOf = (g: any) => [...(g.code?.coding ?? []), ...(g.characteristic ?? []).flatMap((c: any) => c.code?.coding ?? [])].find((c: any) => c.system === RESULT)?.code;

describe('Consent judged as the HRex Consent profile says', () => {
  let server: RunningServer;
  let base: string;
  let members: SyntheticMember[];
  const tokens: Record<string, string> = {};
  const auth = (who: string) => ({ authorization: `Bearer ${tokens[who]}` });
  const log = capturingLogger();
  const match = (who: string, body: unknown) => fhir('POST', `${base}/Patient/$member-match`, body, auth(who));
  const grantsOf = async (m: SyntheticMember) =>
    ((await fhir('GET', `${base}/Patient/${m.patientId}/$access-grants`, undefined, auth('service'))).body.parameter ?? []).map((g: any) => Object.fromEntries(g.part.map((p: any) => [p.name, p.valueString ?? p.valueCode ?? p.valueBoolean ?? p.valueDateTime ?? p.valueReference?.reference])));
  const consentsOf = async (m: SyntheticMember) => (await fhir('GET', `${base}/Consent?patient=Patient/${m.patientId}&_summary=count`, undefined, auth('service'))).body.total;

  beforeAll(async () => {
    const { file, clients } = await writeClientsFile([
      { clientId: 'new-plan', scopes: 'system/*.read', identifiers: [NEW_PLAN_NPI] },
      { clientId: 'third-plan', scopes: 'system/*.read', identifiers: [THIRD_NPI] },
      { clientId: 'unnamed-plan', scopes: 'system/*.read' },
      { clientId: 'back-office', scopes: 'system/*.*', role: 'service' },
    ]);
    server = await startTestServer({ authRequired: true, clientsFile: file, payerIdentifiers: [OLD_PLAN_NPI] }, log.logger);
    base = server.baseUrl;
    members = await seedPopulation(server, 10);
    for (const who of ['new-plan', 'third-plan', 'unnamed-plan']) tokens[who] = await getToken(server.tokenUrl, clients[who]);
    tokens.service = await getToken(server.tokenUrl, clients['back-office'], 'system/*.*');
  });
  afterAll(async () => server.stop());

  it('warns once at start-up of the partner registered without identifiers, and of no other', () => {
    const warnings = log.lines.filter((l) => l.includes('registered without identifiers'));
    expect(warnings).toHaveLength(1);
    expect(warnings[0]).toContain('unnamed-plan');
    expect(warnings[0]).not.toMatch(/new-plan|third-plan|back-office/);
    expect(log.lines.some((l) => l.includes('PAYER_IDENTIFIERS is not set'))).toBe(false);
  });

  it.each(HOSTILE)('$member-match refuses %s with a 422 that says so, grants nothing, and answers alike for a member not held here', async (_what, change) => {
    const m = members[0];
    const res = await match('new-plan', bodyWith(m, consentOf(change)));
    expect(res.status).toBe(422);
    expect(res.body.resourceType).toBe('OperationOutcome');
    expect(res.body.issue[0].details.coding).toEqual([{ system: RESULT, code: 'consentconstraint' }]);
    expect(res.body.issue[0].diagnostics).toMatch(/^The consent cannot be honoured: /);
    expect(res.text).not.toContain(m.patientId);
    expect(res.text).not.toContain(m.family);
    const invented = await match('new-plan', bodyWith({ family: 'Nobody', given: 'Invented', birthDate: '1901-01-01', memberId: 'MEM-NOPE' }, consentOf(change)));
    expect({ status: invented.status, body: invented.body }).toEqual({ status: res.status, body: res.body });
    expect((await fhir('GET', `${base}/Patient/${m.patientId}`, undefined, auth('new-plan'))).status).toBe(404);
    expect(await grantsOf(m)).toEqual([]);
    expect(await consentsOf(m)).toBe(0);
  });

  it("honours a Consent shaped exactly like HRex's example, until its period's end", async () => {
    const m = members[1];
    const res = await match('new-plan', bodyWith(m, consentOf()));
    expect(res.status).toBe(200);
    expect(res.body.parameter.find((p: any) => p.name === 'MemberId').valueReference.reference).toBe(`Patient/${m.patientId}`);
    expect((await fhir('GET', `${base}/Patient/${m.patientId}`, undefined, auth('new-plan'))).status).toBe(200);
    const [grant] = await grantsOf(m);
    expect(grant).toMatchObject({ client: 'new-plan', policy: 'regular', active: true });
    // The grant ends when the Consent does (an end given as a date covers that day).
    expect(Date.parse(grant.end)).toBe(Date.parse(current.end) + 86_400_000 - 1);
    expect(Date.parse(grant.start)).toBe(Date.parse(current.start));
    // The same Consent names new-plan as recipient: another registered payer cannot use it.
    const stolen = await match('third-plan', bodyWith(m, consentOf()));
    expect(stolen.status).toBe(422);
    expect((await fhir('GET', `${base}/Patient/${m.patientId}`, undefined, auth('third-plan'))).status).toBe(404);
  });

  it('a partner registered without identifiers is matched on the rest, but not with a Consent naming another registered payer', async () => {
    const m = members[2];
    const named = await match('unnamed-plan', bodyWith(m, consentOf((c) => (c.provision.actor[1].reference.identifier = THIRD_NPI))));
    expect(named.status).toBe(422);
    const denied = await match('unnamed-plan', bodyWith(m, consentOf((c) => (c.provision.type = 'deny'))));
    expect(denied.status).toBe(422);
    // HRex's example names the New Health Plan, which new-plan is registered as: not unnamed-plan's to use.
    expect((await match('unnamed-plan', bodyWith(m, consentOf()))).status).toBe(422);
    expect(await grantsOf(m)).toEqual([]);
    const ok = await match('unnamed-plan', bodyWith(m, consentOf((c) => (c.provision.actor[1].reference = { identifier: { system: 'http://hl7.org/fhir/sid/us-npi', value: '1111111111' }, display: 'Unnamed Plan' }))));
    expect(ok.status).toBe(200);
    expect((await fhir('GET', `${base}/Patient/${m.patientId}`, undefined, auth('unnamed-plan'))).status).toBe(200);
  });

  it('$bulk-member-match puts every member whose Consent cannot be honoured in ConsentConstrained, grants none of them, and exports only the honoured one', async () => {
    const honoured = members[3];
    const hostile = HOSTILE.map((_h, i) => members[4 + i]);
    const body = {
      resourceType: 'Parameters',
      parameter: [
        { name: 'MemberBundle', part: bodyWith(honoured, consentOf()).parameter },
        ...HOSTILE.map(([, change], i) => ({ name: 'MemberBundle', part: bodyWith(hostile[i], consentOf(change)).parameter })),
      ],
    };
    const k = await kickoff(`${base}/Group/$bulk-member-match`, { method: 'POST', body, token: tokens['new-plan'] });
    expect(k.status).toBe(202);
    const done = await poll(k.location as string, tokens['new-plan']);
    expect(done.status).toBe(200);
    const groups = Object.fromEntries((await download(done.body.output.find((o: any) => o.type === 'Group').url, tokens['new-plan'])).resources.map((g: any) => [outcomeOf(g), g]));
    expect(groups.match.member.map((x: any) => x.entity.reference)).toEqual([`Patient/${honoured.patientId}`]);
    expect(groups.consentconstraint.member).toHaveLength(HOSTILE.length);
    const constrained = JSON.stringify(groups.consentconstraint);
    for (const m of hostile) expect(constrained).not.toContain(m.patientId);
    expect(constrained).not.toMatch(/provision|deny|5555555555/);
    for (const m of hostile) {
      expect({ member: m.patientId, status: (await fhir('GET', `${base}/Patient/${m.patientId}`, undefined, auth('new-plan'))).status }).toEqual({ member: m.patientId, status: 404 });
      expect(await grantsOf(m)).toEqual([]);
      expect(await consentsOf(m)).toBe(0);
    }
    // $davinci-data-export of the matched Group asked for every member: only the honoured one comes.
    const exp = await kickoff(`${base}/Group/${groups.match.id}/$davinci-data-export`, {
      method: 'POST',
      body: { resourceType: 'Parameters', parameter: [{ name: '_type', valueString: 'Patient' }, ...[honoured, ...hostile].map((m) => ({ name: 'patient', valueReference: { reference: `Patient/${m.patientId}` } }))] },
      token: tokens['new-plan'],
    });
    expect(exp.status).toBe(202);
    const exported = await poll(exp.location as string, tokens['new-plan']);
    const patients = (await download(exported.body.output.find((o: any) => o.type === 'Patient').url, tokens['new-plan'])).resources.map((r: any) => r.id);
    expect(patients).toEqual([honoured.patientId]);
  });
});
