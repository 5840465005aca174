import { RunningServer } from '../../src/main';
import { generateClientKeys } from '../../src/auth/keys';
import { fhir, startTestServer } from '../helpers/server';
import { getToken } from '../helpers/clients';
import { FakeSource, startFakeSource } from '../helpers/fake-source';
import { createLocalPatient, invokeBody, reaching, SourcePayerFixture, startRequester, startSource, waitForTask } from '../helpers/payers';

/** Many members from one source in one request: a parent Task, one child per member, each ending on its own. */
const memberPart = (local: string, m: Parameters<typeof invokeBody>[1]) => {
  const single = invokeBody(local, m).parameter as { name: string }[];
  return { name: 'member', part: single.filter((p) => p.name === 'localPatient' || p.name === 'memberMatch') };
};

describe('bulk exchange ($sdh.s2s.invoke-bulk-export)', () => {
  let source: SourcePayerFixture;
  let requester: RunningServer;
  let op: string;

  beforeAll(async () => {
    source = await startSource(6);
    // The source declares $bulk-member-match and $davinci-data-export: bulk exchanges use them (the default).
    requester = await startRequester(reaching(source));
    op = `${requester.baseUrl}/Group/$sdh.s2s.invoke-bulk-export`;
  });
  afterAll(async () => {
    await requester.stop();
    await source.server.stop();
  });

  it('exchanges several members at once; one not matched fails alone, the others complete with their own data', async () => {
    const ms = [source.members[0], source.members[3], { ...source.members[4], family: 'Someone-Else', memberId: 'NOPE' }];
    const locals = [];
    for (const m of ms) locals.push(await createLocalPatient(requester, m));
    const body = { resourceType: 'Parameters', parameter: [{ name: 'sourceIssuerUrl', valueString: 'https://source-payer.example.com' }, ...ms.map((m, i) => memberPart(locals[i], m))] };
    const res = await fhir('POST', op, body);
    expect(res.status).toBe(200);
    expect(res.headers.get('content-location')).toBe(`Task/${res.body.id}`);
    const children = res.body.output.filter((o: any) => o.type.text === 'member-task').map((o: any) => o.valueReference.reference.split('/')[1]);
    expect(children).toHaveLength(3);
    const parent = await waitForTask(requester, res.body.id, (t) => t.status === 'completed', 30000);
    expect(Object.fromEntries(parent.output.filter((o: any) => o.type.text.startsWith('members:')).map((o: any) => [o.type.text, o.valueInteger]))).toEqual({ 'members:completed': 2, 'members:failed': 1, 'members:cancelled': 0 });
    const tasks = await Promise.all(children.map((id: string) => fhir('GET', `${requester.baseUrl}/Task/${id}`).then((r) => r.body)));
    expect(tasks.map((t: any) => t.status)).toEqual(['completed', 'completed', 'failed']);
    expect(tasks.every((t: any) => t.partOf[0].reference === `Task/${res.body.id}`)).toBe(true);
    expect(tasks[2].statusReason.text).toMatch(/no unique match/i);
    // The source declares $bulk-member-match: all members were matched in that one request, none by its own $member-match.
    expect(tasks[2].statusReason.text).toMatch(/\$bulk-member-match/);
    // It also declares $davinci-data-export: the matched members' data came in one export of the MatchedMembers Group.
    for (const t of tasks.slice(0, 2)) expect(t.note.map((n: any) => n.text)).toContain("The source payer matched the member ($bulk-member-match); its data came with the group's $davinci-data-export");
    const exports = (await source.server.store.search('AuditEvent', {})).map((a: any) => a.outcomeDesc as string).filter((d: string) => /started \((patient|group) level\)/.test(d));
    expect(exports.filter((d: string) => d.includes('$davinci-data-export'))).toHaveLength(1);
    expect(exports.filter((d: string) => !d.includes('$davinci-data-export'))).toHaveLength(0);
    expect(tasks[0].output.find((o: any) => o.type.text === 'MemberId').valueReference.reference).toBe(`${source.server.baseUrl}/Patient/${ms[0].patientId}`);
    // Each MemberPatient went under its member's Task id, and the source's result Groups (Group.code) kept it: that is how each answer found its member.
    const results = (await source.server.store.search('Group', {})) as any[];
    expect(results.map((g) => g.code.coding[0].code).sort()).toEqual(['match', 'nomatch']);
    expect(results.flatMap((g) => g.contained.map((c: any) => c.id)).sort()).toEqual([...children].sort());
    // Each member's data landed on that member, and only there: the claims of the last five years
    // (PDex's window for $davinci-data-export; the synthetic claims are created on their service date).
    const now = new Date();
    const windowStart = new Date(Date.UTC(now.getUTCFullYear() - 5, now.getUTCMonth(), now.getUTCDate())).toISOString();
    for (const [i, m] of ms.slice(0, 2).entries()) {
      const local = (await fhir('GET', `${requester.baseUrl}/ExplanationOfBenefit?patient=${locals[i]}&_summary=count`)).body.total;
      const token = await sourceToken();
      const there = (await fhir('GET', `${source.server.baseUrl}/ExplanationOfBenefit?patient=${m.patientId}&created=ge${windowStart}&_summary=count`, undefined, { authorization: `Bearer ${token}` })).body.total;
      expect(local).toBe(there);
    }
    expect((await fhir('GET', `${requester.baseUrl}/ExplanationOfBenefit?patient=${locals[2]}&_summary=count`)).body.total).toBe(0);
    // The children are found from the parent.
    expect((await fhir('GET', `${requester.baseUrl}/Task?part-of=Task/${res.body.id}&_summary=count`)).body.total).toBe(3);
  });

  it('a member whose consent the source cannot honour fails alone; a restart of the requesting server mid-way loses and repeats nothing', async () => {
    const ms = [source.members[1], source.members[2]];
    const locals = [];
    for (const m of ms) locals.push(await createLocalPatient(requester, m));
    const parts = ms.map((m, i) => memberPart(locals[i], m));
    // Member 2's consent has ended: the source refuses to match under it.
    const consent = (parts[1].part.find((p: any) => p.name === 'memberMatch') as any).part.find((p: any) => p.name === 'Consent').resource;
    consent.provision = { period: { start: '2020-01-01', end: '2021-01-01' } };
    const res = await fhir('POST', op, { resourceType: 'Parameters', parameter: [{ name: 'sourceIssuerUrl', valueString: 'https://source-payer.example.com' }, ...parts] });
    expect(res.status).toBe(200);
    // The requesting server stops as soon as the request is answered, and comes back on the same data.
    const { config, port } = requester;
    await requester.stop();
    requester = await startRequester(reaching(source), { dataDir: config.dataDir, port, jobLeaseSeconds: 1 });
    op = `${requester.baseUrl}/Group/$sdh.s2s.invoke-bulk-export`;
    const parent = await waitForTask(requester, res.body.id, (t) => t.status === 'completed', 30000);
    const counts = Object.fromEntries(parent.output.filter((o: any) => o.type.text.startsWith('members:')).map((o: any) => [o.type.text, o.valueInteger]));
    expect(counts).toEqual({ 'members:completed': 1, 'members:failed': 1, 'members:cancelled': 0 });
    const failed = (await fhir('GET', `${requester.baseUrl}/Task?part-of=Task/${res.body.id}&status=failed`)).body.entry[0].resource;
    expect(failed.statusReason.text).toMatch(/cannot honour the member's consent/);
    const eobs = (await fhir('GET', `${requester.baseUrl}/ExplanationOfBenefit?patient=${locals[0]}&_count=100`)).body.entry.map((e: any) => e.resource);
    expect(eobs.length).toBeGreaterThan(0);
    expect(eobs.every((e: any) => e.meta.versionId === '1')).toBe(true);
    expect((await fhir('GET', `${requester.baseUrl}/ExplanationOfBenefit?patient=${locals[1]}&_summary=count`)).body.total).toBe(0);
  });

  it('checks every member before recording anything', async () => {
    const before = (await fhir('GET', `${requester.baseUrl}/Task?_summary=count`)).body.total;
    const m = source.members[1];
    const local = await createLocalPatient(requester, m);
    const shared = { name: 'sourceIssuerUrl', valueString: 'https://source-payer.example.com' };
    expect((await fhir('POST', op, { resourceType: 'Parameters', parameter: [shared, memberPart(local, m), { name: 'member', part: [{ name: 'localPatient', valueReference: { reference: `Patient/${local}` } }] }] })).status).toBe(400);
    expect((await fhir('POST', op, { resourceType: 'Parameters', parameter: [shared, memberPart(local, m), memberPart('not-here', m)] })).status).toBe(422);
    expect((await fhir('POST', op, { resourceType: 'Parameters', parameter: [shared, memberPart(local, m), memberPart(local, m)] })).status).toBe(400);
    expect((await fhir('GET', `${requester.baseUrl}/Task?_summary=count`)).body.total).toBe(before);
  });

  it('a run-off asks only for what changed since the last exchange, without matching again', async () => {
    const m = source.members[5];
    const local = await createLocalPatient(requester, m);
    const first = await waitForTask(requester, (await fhir('POST', `${requester.baseUrl}/Patient/$sdh.s2s.invoke-export`, invokeBody(local, m))).body.id);
    expect(first.status).toBe('completed');
    expect(first.output.find((o: any) => o.type.text === 'transactionTime').valueInstant).toMatch(/^\d{4}-/);
    // At the source, one claim changes and nothing else.
    const eob = (await source.server.store.search('ExplanationOfBenefit', { 's.patient': `Patient/${m.patientId}` }))[0] as any;
    await source.server.store.update('ExplanationOfBenefit', eob.id, { ...eob, outcome: 'partial' });
    const res = await fhir('POST', `${requester.baseUrl}/Task/${first.id}/$sdh.s2s.run-off`);
    expect(res.status).toBe(200);
    expect(res.body.basedOn[0].reference).toBe(`Task/${first.id}`);
    const done = await waitForTask(requester, res.body.id);
    expect(done.status).toBe('completed');
    expect(done.input.find((i: any) => i.type.text === '_since').valueString).toBe(first.output.find((o: any) => o.type.text === 'transactionTime').valueInstant);
    expect(done.note.map((n: any) => n.text).join(' ')).not.toMatch(/matched the member/);
    const counts = Object.fromEntries(done.output.filter((o: any) => o.type.text.startsWith('count:')).map((o: any) => [o.type.text, o.valueInteger]));
    // The changed claim, and the directory records it refers to (sent again, found unchanged, not rewritten); nothing else.
    expect(counts['count:ExplanationOfBenefit']).toBe(1);
    // (and the source's transmitter Provenance of this run-off: PDex §pdex-127, one per exchange)
    expect(Object.keys(counts).filter((k) => !/ExplanationOfBenefit|Practitioner|Organization|Location|Medication|Provenance/.test(k))).toEqual([]);
    const practitioners = (await fhir('GET', `${requester.baseUrl}/Practitioner?_count=100`)).body.entry.map((e: any) => e.resource.meta.versionId);
    expect(new Set(practitioners)).toEqual(new Set(['1']));
    const here = (await fhir('GET', `${requester.baseUrl}/ExplanationOfBenefit?patient=${local}&_count=100`)).body.entry.map((e: any) => e.resource);
    expect(here.filter((e: any) => e.outcome === 'partial')).toHaveLength(1);
    expect((await fhir('POST', `${requester.baseUrl}/Task/${res.body.id}x/$sdh.s2s.run-off`)).status).toBe(404);
  });

  async function sourceToken(): Promise<string> {
    const { getToken } = await import('../helpers/clients');
    return getToken(source.server.tokenUrl, source.client);
  }
});

describe('a bulk exchange member by member (bulkMemberMatch: false, as with a source without the bulk operations)', () => {
  it("matches and exports each member on its own; each ends with its own data", async () => {
    const source = await startSource(3);
    const requester = await startRequester(reaching(source, { bulkMemberMatch: false }));
    try {
      const ms = [source.members[0], source.members[1], { ...source.members[2], family: 'Someone-Else', memberId: 'NOPE' }];
      const locals: string[] = [];
      for (const m of ms) locals.push(await createLocalPatient(requester, m));
      const res = await fhir('POST', `${requester.baseUrl}/Group/$sdh.s2s.invoke-bulk-export`, { resourceType: 'Parameters', parameter: [{ name: 'sourceIssuerUrl', valueString: 'https://source-payer.example.com' }, ...ms.map((m, i) => memberPart(locals[i], m))] });
      expect(res.status).toBe(200);
      const parent = await waitForTask(requester, res.body.id, (t) => t.status === 'completed', 30000);
      expect(Object.fromEntries(parent.output.filter((o: any) => o.type.text.startsWith('members:')).map((o: any) => [o.type.text, o.valueInteger]))).toEqual({ 'members:completed': 2, 'members:failed': 1, 'members:cancelled': 0 });
      const failed = (await fhir('GET', `${requester.baseUrl}/Task?part-of=Task/${res.body.id}&status=failed`)).body.entry[0].resource;
      expect(failed.statusReason.text).toMatch(/no unique match/);
      expect(failed.statusReason.text).not.toMatch(/bulk-member-match/);
      // The source saw one $member-match and one export per member, no bulk operation.
      const audit = (await source.server.store.search('AuditEvent', {})).map((a: any) => a.outcomeDesc as string);
      expect(audit.filter((d) => /\$bulk-member-match|\$davinci-data-export/.test(d))).toEqual([]);
      expect(audit.filter((d) => /^\$export started \(patient level\)/.test(d))).toHaveLength(2);
      for (const [i, m] of ms.slice(0, 2).entries()) {
        const token = await getToken(source.server.tokenUrl, source.client);
        const there = (await fhir('GET', `${source.server.baseUrl}/ExplanationOfBenefit?patient=${m.patientId}&_summary=count`, undefined, { authorization: `Bearer ${token}` })).body.total;
        expect((await fhir('GET', `${requester.baseUrl}/ExplanationOfBenefit?patient=${locals[i]}&_summary=count`)).body.total).toBe(there);
      }
    } finally {
      await requester.stop();
      await source.server.stop();
    }
  });
});

describe('a bulk exchange while the source restarts', () => {
  it('completes every member once the source is back, each with its own data, nothing twice', async () => {
    const source = await startSource(3);
    const { port, dataDir } = { port: source.server.port, dataDir: source.server.config.dataDir };
    const requester = await startRequester(reaching(source));
    let restarted: RunningServer | undefined;
    try {
      const locals: string[] = [];
      for (const m of source.members) locals.push(await createLocalPatient(requester, m));
      const res = await fhir('POST', `${requester.baseUrl}/Group/$sdh.s2s.invoke-bulk-export`, { resourceType: 'Parameters', parameter: [{ name: 'sourceIssuerUrl', valueString: 'https://source-payer.example.com' }, ...source.members.map((m, i) => memberPart(locals[i], m))] });
      expect(res.status).toBe(200);
      // The source goes down as the exchange starts, and comes back on the same data.
      await source.server.stop();
      await new Promise((r) => setTimeout(r, 300));
      restarted = await startTestServer({ dataDir, port, authRequired: true, clientsFile: source.clientsFile });
      const parent = await waitForTask(requester, res.body.id, (t) => t.status === 'completed', 60000);
      expect(parent.output.find((o: any) => o.type.text === 'members:completed').valueInteger).toBe(3);
      for (const [i, local] of locals.entries()) {
        const eobs = (await fhir('GET', `${requester.baseUrl}/ExplanationOfBenefit?patient=${local}&_count=100`)).body.entry ?? [];
        expect(eobs.every((e: any) => e.resource.meta.versionId === '1')).toBe(true);
        // Written once: the member's id at the source added (PDex data mapping, issue 26), once.
        const patient = (await fhir('GET', `${requester.baseUrl}/Patient/${local}`)).body;
        expect(patient.meta.versionId).toBe('2');
        const tokens = patient.identifier.map((x: any) => `${x.system}|${x.value}`);
        expect(new Set(tokens).size).toBe(tokens.length);
        expect(tokens).toContain(`https://source-payer.example.com/resource-id|${source.members[i].patientId}`);
      }
    } finally {
      await requester.stop();
      await restarted?.stop();
    }
  });
});

describe('cancelling a bulk exchange', () => {
  let fake: FakeSource;
  let requester: RunningServer;
  beforeAll(async () => {
    fake = await startFakeSource();
    const { privateJwk } = await generateClientKeys();
    requester = await startRequester({ tokenUrl: '', fhirBaseUrl: fake.base, client: { clientId: 'us', privateJwk } }, { pollMinMs: 20, pollMaxMs: 200 });
  });
  afterAll(async () => {
    await requester.stop();
    await fake.close();
  });

  it('cancels the children still running (a source without $bulk-member-match: each member matched on its own)', async () => {
    fake.memberMatch = (res) => {
      res.writeHead(503, { 'retry-after': '1' });
      res.end();
    };
    const members = [0, 1].map((i) => ({ patientId: `m${i}`, memberId: `M-${i}`, family: `Fam${i}`, given: 'G', birthDate: '1970-01-01', gender: 'male' as const }));
    const locals = [];
    for (const m of members) locals.push(await createLocalPatient(requester, m));
    const res = await fhir('POST', `${requester.baseUrl}/Group/$sdh.s2s.invoke-bulk-export`, { resourceType: 'Parameters', parameter: [{ name: 'sourceIssuerUrl', valueString: 'https://source-payer.example.com' }, ...members.map((m, i) => memberPart(locals[i], m))] });
    expect(res.status).toBe(200);
    const running = await waitForTask(requester, res.body.id, (t) => t.status === 'in-progress', 10000);
    // The fake declares no $bulk-member-match: the children ask $member-match themselves.
    await new Promise((r) => setTimeout(r, 300));
    expect(fake.log.filter((l) => l === 'POST /fhir/Patient/$member-match').length).toBeGreaterThanOrEqual(2);
    expect((await fhir('PUT', `${requester.baseUrl}/Task/${running.id}`, { ...running, status: 'cancelled' }, { 'if-match': `W/"${running.meta.versionId}"` })).status).toBe(200);
    for (const o of res.body.output.filter((x: any) => x.type.text === 'member-task')) {
      const child = await waitForTask(requester, o.valueReference.reference.split('/')[1], undefined, 10000);
      expect(child.status).toBe('cancelled');
    }
  });
});
