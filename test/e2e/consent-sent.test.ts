import { RunningServer } from '../../src/main';
import { generateClientKeys } from '../../src/auth/keys';
import { judgeConsent } from '../../src/responder/consent-policy';
import { SyntheticMember } from '../../scripts/synthetic';
import { fhir, startTestServer } from '../helpers/server';
import { FakeSource, startFakeSource } from '../helpers/fake-source';
import { getToken, writeClientsFile } from '../helpers/clients';
import { NEW_PLAN_NPI, OLD_PLAN_NPI, seedPopulation } from '../helpers/seed';
import { createLocalPatient, invokeBody, REQUESTER_CLIENT_ID, startRequester, waitForTask } from '../helpers/payers';

/**
 * The Consent this server sends a source payer, from the seed's short example (a policy
 * `hrex-consent.html#regular` and nothing else): captured at a fake source, and judged by this
 * server as a source that checks the HRex profile strictly (its own identifiers and the
 * requester's registered).
 */
const HREX_REGULAR = 'http://hl7.org/fhir/us/davinci-hrex/StructureDefinition-hrex-consent.html#regular';
const day = (offset: number) => new Date(Date.now() + offset * 86_400_000).toISOString().slice(0, 10);

describe('the Consent the requesting side sends', () => {
  let fake: FakeSource;
  let requester: RunningServer;
  const member = { patientId: 'm1', memberId: 'MEM-1', family: 'Consenting', given: 'Cora', birthDate: '1970-01-01', gender: 'female' } as SyntheticMember;

  beforeAll(async () => {
    fake = await startFakeSource();
    const { privateJwk } = await generateClientKeys();
    requester = await startRequester({ tokenUrl: '', fhirBaseUrl: fake.base, client: { clientId: 'us', privateJwk }, payer: { identifiers: [OLD_PLAN_NPI] } }, { pollMinMs: 20, pollMaxMs: 200, payerIdentifiers: [NEW_PLAN_NPI], consentDefaultDays: 90 });
  });
  afterAll(async () => {
    await requester.stop();
    await fake.close();
  });

  it("completes the seed's example: permit, a bounded period of CONSENT_DEFAULT_DAYS, the canonical policy, both payers as actors by their identifiers", async () => {
    const local = await createLocalPatient(requester, member);
    const before = day(0);
    const res = await fhir('POST', `${requester.baseUrl}/Patient/$sdh.s2s.invoke-export`, invokeBody(local, member));
    expect(res.status).toBe(200);
    await waitForTask(requester, res.body.id, undefined, 20000);
    const sent = JSON.parse(fake.bodies['/fhir/Patient/$member-match']);
    const consent = sent.parameter.find((p: any) => p.name === 'Consent').resource;
    expect(consent).toMatchObject({
      resourceType: 'Consent',
      status: 'active',
      scope: { coding: [{ system: 'http://terminology.hl7.org/CodeSystem/consentscope', code: 'patient-privacy' }] },
      policy: [{ uri: HREX_REGULAR }],
      provision: { type: 'permit', action: [{ coding: [{ system: 'http://terminology.hl7.org/CodeSystem/consentaction', code: 'disclose' }] }] },
    });
    expect(consent.category).toEqual(expect.arrayContaining([{ coding: [{ system: 'http://terminology.hl7.org/CodeSystem/v3-ActCode', code: 'IDSCL' }] }]));
    expect(consent.patient.reference).toBe(`${requester.baseUrl}/Patient/${local}`);
    expect(Date.parse(consent.dateTime)).not.toBeNaN();
    // From today (as the request was made, or a moment later past midnight) for 90 days.
    expect([before, day(0)]).toContain(consent.provision.period.start);
    expect(Date.parse(consent.provision.period.end) - Date.parse(consent.provision.period.start)).toBe(90 * 86_400_000);
    expect(consent.provision.actor).toEqual([
      { role: { coding: [{ system: 'http://terminology.hl7.org/CodeSystem/provenance-participant-type', code: 'performer' }] }, reference: { type: 'Organization', identifier: OLD_PLAN_NPI, display: 'Source Health Plan' } },
      { role: { coding: [{ system: 'http://terminology.hl7.org/CodeSystem/v3-ParticipationType', code: 'IRCP' }] }, reference: { type: 'Organization', identifier: NEW_PLAN_NPI, display: 'New Health Plan' } },
    ]);
    // A source that checks the HRex profile strictly (this server's judgement) honours it.
    expect(judgeConsent(consent, new Date(), { source: [OLD_PLAN_NPI], recipient: [NEW_PLAN_NPI] })).toEqual({ policy: 'regular' });
    // And it is what the Task's focus records here.
    const task = (await fhir('GET', `${requester.baseUrl}/Task/${res.body.id}`)).body;
    const recorded = (await fhir('GET', `${requester.baseUrl}/${task.focus.reference}`)).body;
    expect(recorded.provision).toEqual(consent.provision);
  });
});

describe("two instances, the source checking the HRex Consent strictly: the seed's example still exchanges", () => {
  let source: RunningServer;
  let members: SyntheticMember[];
  let client: { clientId: string; privateJwk: any };
  const started: RunningServer[] = [];
  // `single`: registered with bulkMemberMatch: false, so that the exchange is $member-match, whose refusal says why (this
  // server declares the bulk operations too, and a single exchange with it is otherwise a $bulk-member-match of one member,
  // whose ConsentConstrained Group says no more than that).
  const requesterFor = async (payerIdentifiers: { system: string; value: string }[], sourceIdentifiers?: { system: string; value: string }[], single = false) => {
    const payer = { ...(sourceIdentifiers ? { identifiers: sourceIdentifiers } : {}), ...(single ? { bulkMemberMatch: false } : {}) };
    const r = await startRequester({ tokenUrl: source.tokenUrl, fhirBaseUrl: source.baseUrl, client, payer }, { payerIdentifiers });
    started.push(r);
    return r;
  };

  beforeAll(async () => {
    // The source is the Old Health Plan; the requesting payer is registered there as the New Health Plan.
    const { file, clients } = await writeClientsFile([{ clientId: REQUESTER_CLIENT_ID, scopes: 'system/*.read', identifiers: [NEW_PLAN_NPI] }]);
    client = clients[REQUESTER_CLIENT_ID];
    // No five-year window at the source: its $davinci-data-export would leave out the older synthetic claims (dated 2020–2025).
    source = await startTestServer({ authRequired: true, clientsFile: file, payerIdentifiers: [OLD_PLAN_NPI], serviceWindowYears: 0 });
    members = await seedPopulation(source, 5);
  });
  afterAll(async () => {
    for (const r of started) await r.stop();
    await source.stop();
  });

  const grantsAtSource = async (m: SyntheticMember) => {
    const token = await getToken(source.tokenUrl, client);
    // The partner sees the member only if granted.
    return (await fhir('GET', `${source.baseUrl}/Patient/${m.patientId}`, undefined, { authorization: `Bearer ${token}` })).status;
  };

  it('completes when both payers are registered by their identifiers', async () => {
    const requester = await requesterFor([NEW_PLAN_NPI], [OLD_PLAN_NPI]);
    const m = members[0];
    const local = await createLocalPatient(requester, m);
    const task = await waitForTask(requester, (await fhir('POST', `${requester.baseUrl}/Patient/$sdh.s2s.invoke-export`, invokeBody(local, m))).body.id);
    expect({ status: task.status, reason: task.statusReason?.text }).toEqual({ status: 'completed', reason: undefined });
    expect((await fhir('GET', `${requester.baseUrl}/ExplanationOfBenefit?patient=${local}&_summary=count`)).body.total).toBeGreaterThan(0);
    expect(await grantsAtSource(m)).toBe(200);
  });

  it('a bulk exchange (Group/$sdh.s2s.invoke-bulk-export; $bulk-member-match where the source declares it) completes every member under the completed Consents', async () => {
    const requester = await requesterFor([NEW_PLAN_NPI], [OLD_PLAN_NPI]);
    const pair = [members[3], members[4]];
    const member = [];
    for (const m of pair) {
      const single = invokeBody(await createLocalPatient(requester, m), m).parameter as { name: string }[];
      member.push({ name: 'member', part: single.filter((p) => p.name === 'localPatient' || p.name === 'memberMatch') });
    }
    const res = await fhir('POST', `${requester.baseUrl}/Group/$sdh.s2s.invoke-bulk-export`, { resourceType: 'Parameters', parameter: [{ name: 'sourceIssuerUrl', valueString: 'https://source-payer.example.com' }, ...member] });
    expect(res.status).toBe(200);
    const parent = await waitForTask(requester, res.body.id, undefined, 60000);
    const children = [];
    for (const o of parent.output.filter((x: any) => x.type.text === 'member-task')) children.push(await waitForTask(requester, o.valueReference.reference.split('/')[1], undefined, 60000));
    expect(children.map((c) => c.status)).toEqual(['completed', 'completed']);
    for (const m of pair) expect(await grantsAtSource(m)).toBe(200);
  });

  it('fails, granting nothing, when the requester names the source payer by another identifier', async () => {
    const requester = await requesterFor([NEW_PLAN_NPI], [{ system: 'http://hl7.org/fhir/sid/us-npi', value: '5555555555' }], true);
    const m = members[1];
    const local = await createLocalPatient(requester, m);
    const task = await waitForTask(requester, (await fhir('POST', `${requester.baseUrl}/Patient/$sdh.s2s.invoke-export`, invokeBody(local, m))).body.id);
    expect(task.status).toBe('failed');
    expect(task.statusReason.text).toMatch(/consent cannot be honoured: consent does not name this payer as the source/);
    expect((await fhir('GET', `${requester.baseUrl}/ExplanationOfBenefit?patient=${local}&_summary=count`)).body.total).toBe(0);
    expect(await grantsAtSource(m)).toBe(404);
  });

  it('fails when the requester has no PAYER_IDENTIFIERS (the recipient named by name only), the source knowing its identifiers', async () => {
    const requester = await requesterFor([], [OLD_PLAN_NPI], true);
    const m = members[2];
    const local = await createLocalPatient(requester, m);
    const task = await waitForTask(requester, (await fhir('POST', `${requester.baseUrl}/Patient/$sdh.s2s.invoke-export`, invokeBody(local, m))).body.id);
    expect(task.status).toBe('failed');
    expect(task.statusReason.text).toMatch(/consent cannot be honoured: consent does not name the requesting payer as the recipient/);
    expect(await grantsAtSource(m)).toBe(404);
  });

  it('through the bulk path of one member, the same Consent fails with the bulk answer\'s reason, granting nothing', async () => {
    const requester = await requesterFor([NEW_PLAN_NPI], [{ system: 'http://hl7.org/fhir/sid/us-npi', value: '5555555555' }]);
    const m = members[1];
    const local = await createLocalPatient(requester, m);
    const task = await waitForTask(requester, (await fhir('POST', `${requester.baseUrl}/Patient/$sdh.s2s.invoke-export`, invokeBody(local, m))).body.id);
    expect(task.output.find((o: any) => o.type.text === 'exchange-path').valueString).toBe('bulk-of-one');
    expect({ status: task.status, reason: task.statusReason?.text }).toEqual({ status: 'failed', reason: "The source payer cannot honour the member's consent ($bulk-member-match)" });
    expect((await fhir('GET', `${requester.baseUrl}/ExplanationOfBenefit?patient=${local}&_summary=count`)).body.total).toBe(0);
    expect(await grantsAtSource(m)).toBe(404);
  });
});
