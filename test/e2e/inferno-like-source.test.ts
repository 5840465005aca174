import { RunningServer } from '../../src/main';
import { generateClientKeys } from '../../src/auth/keys';
import { localIdFor } from '../../src/requester/reference-rewriter';
import { SyntheticMember } from '../../scripts/synthetic';
import { capturingLogger, fhir } from '../helpers/server';
import { INFERNO_MEMBER, InfernoLikeSource, startInfernoLikeSource } from '../helpers/inferno-like-source';
import { createLocalPatient, invokeBody, SOURCE_ISSUER, startRequester, waitForTask } from '../helpers/payers';

/**
 * The requesting side against a source shaped like Inferno's mock: MemberIdentifier without a
 * MemberId, polling on another path, `Retry-After` as an HTTP date, a 202 with a partial manifest,
 * files at Binary/{id}, one of them redirected to storage on another origin.
 */
const member = { family: 'Inferno', given: 'Ina', birthDate: '1987-02-20', gender: 'female', memberId: '99999' } as SyntheticMember;

describe('an Inferno-like source payer', () => {
  let fake: InfernoLikeSource;
  const started: RunningServer[] = [];
  afterAll(async () => {
    for (const s of started) await s.stop();
    await fake.close();
  });
  beforeAll(async () => {
    fake = await startInfernoLikeSource();
  });

  async function requesterWith(payer: Record<string, unknown>) {
    const { privateJwk } = await generateClientKeys();
    const { logger, lines } = capturingLogger();
    const requester = await startRequester({ tokenUrl: '', fhirBaseUrl: fake.base, client: { clientId: 'us', privateJwk }, payer }, { pollMinMs: 20, pollMaxMs: 300 }, logger);
    started.push(requester);
    return { requester, lines };
  }

  async function exchange(requester: RunningServer) {
    const local = await createLocalPatient(requester, member);
    const res = await fhir('POST', `${requester.baseUrl}/Patient/$sdh.s2s.invoke-export`, invokeBody(local, member));
    expect(res.status).toBe(200);
    return { local, task: await waitForTask(requester, res.body.id, undefined, 20000) };
  }

  it('finds the member by identifier, follows the 307 to a configured file origin without the token, and imports everything linked to the local patient', async () => {
    const { requester, lines } = await requesterWith({ fileOrigins: [fake.storage.origin] });
    fake.requests.length = 0;
    fake.storage.requests.length = 0;
    const { local, task } = await exchange(requester);
    expect({ status: task.status, reason: task.statusReason?.text }).toEqual({ status: 'completed', reason: undefined });
    expect(task.output.find((o: any) => o.type.text === 'MemberId').valueReference.reference).toBe(`${fake.base}/Patient/${INFERNO_MEMBER.sourceId}`);
    expect(task.output.find((o: any) => o.type.text === 'MemberIdentifier').valueIdentifier.value).toBe('99999');
    const count = (type: string) => task.output.find((o: any) => o.type.text === `count:${type}`)?.valueInteger;
    expect([count('Condition'), count('ExplanationOfBenefit'), count('Practitioner'), count('Organization')]).toEqual([3, 1, 1, 1]);

    // The member was looked up by its identifier (the mock's has no system, so by the bare value).
    const searches = fake.requests.filter((r) => r.line.startsWith('GET /r4/Patient?')).map((r) => r.line);
    expect(searches).toEqual(['GET /r4/Patient?identifier=99999']);
    expect(fake.requests.filter((r) => r.line.startsWith('GET /r4/$export-poll-status?_jobId=job-1')).length).toBeGreaterThanOrEqual(3);
    // Every call to the source carried the token (files too: requiresAccessToken), storage never got it.
    // (The CapabilityStatement, which chooses the exchange's path, is public: it is read without one.)
    expect(fake.requests.filter((r) => !r.line.includes('/token') && !r.line.includes('smart-configuration') && !r.line.startsWith('GET /r4/metadata')).every((r) => r.bearer)).toBe(true);
    expect(fake.storage.requests).toEqual([{ path: '/bucket/f2?sig=abc', authorization: undefined }]);

    // Conditions from storage, linked to the local member; the EOB's contained Coverage too.
    const conditions = (await fhir('GET', `${requester.baseUrl}/Condition?patient=Patient/${local}`)).body.entry.map((e: any) => e.resource);
    expect(conditions).toHaveLength(3);
    expect(conditions.every((c: any) => c.recorder.reference === `Practitioner/${localIdFor(SOURCE_ISSUER, 'Practitioner', 'pr-1')}`)).toBe(true);
    const eob = (await fhir('GET', `${requester.baseUrl}/ExplanationOfBenefit?patient=Patient/${local}`)).body.entry[0].resource;
    expect(eob.contained[0].beneficiary.reference).toBe(`Patient/${local}`);
    expect(eob.contained[0].payor[0].reference).toBe(`Organization/${localIdFor(SOURCE_ISSUER, 'Organization', 'org-1')}`);
    expect(eob.insurance[0].coverage.reference).toBe('#cov');

    // One line says how the exchange ended, with counts and no member data.
    const ended = lines.filter((l) => l.includes('exchange ended'));
    expect(ended).toHaveLength(1);
    expect(JSON.parse(ended[0])).toMatchObject({ task: task.id, issuer: SOURCE_ISSUER, outcome: 'completed', counts: { Condition: 3, ExplanationOfBenefit: 1 } });
    expect(ended[0]).not.toMatch(/Inferno|1987-02-20|99999/);
  });

  it('without fileOrigins, the redirect to storage is refused and nothing is kept', async () => {
    const { requester } = await requesterWith({});
    fake.storage.requests.length = 0;
    const { local, task } = await exchange(requester);
    expect(task.status).toBe('failed');
    expect(task.statusReason.text).toMatch(/refused to call http:\/\/127\.0\.0\.1:\d+, which is not the source payer's origin or one of its fileOrigins/);
    expect(fake.storage.requests).toEqual([]);
    expect((await fhir('GET', `${requester.baseUrl}/Condition?patient=Patient/${local}&_summary=count`)).body.total).toBe(0);
  });

  it('follows at most 5 redirects', async () => {
    const { requester } = await requesterWith({});
    fake.redirectTo = (hop) => `${fake.base}/hop/${hop + 1}`;
    try {
      const { task } = await exchange(requester);
      expect(task.status).toBe('failed');
      expect(task.statusReason.text).toMatch(/more than 5 redirects/);
      const hops = fake.requests.filter((r) => r.line.startsWith('GET /r4/hop/')).map((r) => r.line);
      expect(hops.slice(-5)).toEqual([1, 2, 3, 4, 5].map((n) => `GET /r4/hop/${n}`));
    } finally {
      fake.redirectTo = undefined;
    }
  });
});
