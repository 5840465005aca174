import http from 'node:http';
import { RunningServer } from '../../src/main';
import { generateClientKeys } from '../../src/auth/keys';
import { SyntheticMember } from '../../scripts/synthetic';
import { InvokeExportService } from '../../src/requester/invoke-export';
import { SourcePayerRegistry } from '../../src/requester/source-payers';
import { TaskTracker } from '../../src/requester/task-tracker';
import { capturingLogger, fhir } from '../helpers/server';
import { FakeSource, igResultGroups, ndjson, startFakeSource } from '../helpers/fake-source';
import { createLocalPatient, invokeBody, startRequester, waitForTask } from '../helpers/payers';

/**
 * A source that follows PDex 2.2 to the letter and serves only `$bulk-member-match` and
 * `$davinci-data-export` (§pdex-191, §pdex-129): no `$member-match`, no `Patient/{id}/$export`,
 * no `Patient/$export` (all 404). Its match answer is shaped like the IG's example Groups. The
 * same `Patient/$sdh.s2s.invoke-export` is a bulk exchange of one member there; a run-off asks
 * the same Group again with `_since`; a member whose consent here is revoked or expired gets none.
 */
const members = [
  { patientId: 'm1', memberId: 'MEM-1', family: 'Solo', given: 'Ann', birthDate: '1971-01-01', gender: 'female' },
  { patientId: 'm2', memberId: 'MEM-2', family: 'Solo', given: 'Bob', birthDate: '1972-02-02', gender: 'male' },
] as SyntheticMember[];
const obs = (id: string, patient: string, extra: Record<string, unknown> = {}) => ({ resourceType: 'Observation', id, status: 'final', code: { text: id }, subject: { reference: `Patient/${patient}` }, ...extra });

const CAPABILITIES = {
  resourceType: 'CapabilityStatement',
  status: 'active',
  kind: 'instance',
  fhirVersion: '4.0.1',
  format: ['json'],
  rest: [{
    mode: 'server',
    resource: [{
      type: 'Group',
      operation: [
        { name: 'bulk-member-match', definition: 'http://hl7.org/fhir/us/davinci-pdex/OperationDefinition/BulkMemberMatch' },
        { name: 'davinci-data-export', definition: 'http://hl7.org/fhir/us/davinci-atr/OperationDefinition/davinci-data-export' },
      ],
    }],
  }],
};

/** What the single-member path would ask for: none of it is served here. */
const SINGLE_ROUTES = (l: string) => l.includes('$member-match') || /\/Patient\/(?:[^/]+\/)?\$export$/.test(l);

describe('a bulk-only PDex 2.2 source: Patient/$sdh.s2s.invoke-export as a bulk exchange of one member', () => {
  let fake: FakeSource;
  let requester: RunningServer;
  const locals: string[] = [];
  let decide: (patient: any, i: number) => { outcome: 'match' | 'nomatch' | 'consentconstraint'; patientId?: string } = () => ({ outcome: 'match', patientId: 'm1' });
  let groupFiles: Record<string, unknown[]> = {};
  let refuseGroupExport = false;
  /** The transactionTime of the group's export manifest. */
  let transactionTime = '2026-03-01T10:00:00.000Z';

  beforeAll(async () => {
    fake = await startFakeSource();
    fake.capabilityStatement = CAPABILITIES;
    // No single-member route: each is a 404, as at a source that serves the bulk operations only.
    fake.raw = (p, _req, res) => {
      if (!SINGLE_ROUTES(p) && !(refuseGroupExport && p.endsWith('/$davinci-data-export'))) return false;
      res.writeHead(404, { 'content-type': 'application/fhir+json' });
      res.end(JSON.stringify({ resourceType: 'OperationOutcome', issue: [{ severity: 'error', code: 'not-found', diagnostics: 'no such operation' }] }));
      return true;
    };
    const manifestOf = (prefix: string, files: Record<string, unknown[]>) => {
      for (const [type, rs] of Object.entries(files)) fake.files[`${prefix}-${type}`] = ndjson(rs);
      return { transactionTime, request: 'x', requiresAccessToken: true, output: Object.keys(files).map((type) => ({ type, url: `${fake.base}/files/${prefix}-${type}` })), error: [] };
    };
    fake.manifest = (req: http.IncomingMessage) => {
      const of = new URL(req.url ?? '/', fake.origin).searchParams.get('of');
      if (of === 'member-match') return manifestOf('match', { Group: igResultGroups(fake.bodies['/fhir/Group/$bulk-member-match'], decide) });
      if (of === 'Group/G1') return manifestOf('group', groupFiles);
      return { transactionTime: new Date().toISOString(), request: 'x', requiresAccessToken: true, output: [], error: [] };
    };
    const { privateJwk } = await generateClientKeys();
    requester = await startRequester({ tokenUrl: '', fhirBaseUrl: fake.base, client: { clientId: 'us', privateJwk } }, { pollMinMs: 20, pollMaxMs: 200 });
    for (const m of members) locals.push(await createLocalPatient(requester, m));
  });
  afterAll(async () => {
    await requester.stop();
    await fake.close();
  });

  const codesOf = async (local: string) => ((await fhir('GET', `${requester.baseUrl}/Observation?patient=${local}&_count=100`)).body.entry ?? []).map((e: any) => e.resource.code.text).sort();
  const outputOf = (task: any, name: string) => task.output?.find((o: any) => o.type.text === name);
  const exchange = async (i: number) => {
    const res = await fhir('POST', `${requester.baseUrl}/Patient/$sdh.s2s.invoke-export`, invokeBody(locals[i], members[i]));
    expect(res.status).toBe(200);
    return waitForTask(requester, res.body.id, undefined, 20000);
  };
  let completed: any;

  it("completes with the member's data on that member alone, asking nothing of the single-member path", async () => {
    fake.log = [];
    decide = () => ({ outcome: 'match', patientId: 'm1' });
    groupFiles = {
      Patient: [{ resourceType: 'Patient', id: 'm1', name: [{ family: 'Solo', given: ['Ann'] }], birthDate: '1971-01-01' }],
      Observation: [obs('a-1', 'm1', { performer: [{ reference: 'Practitioner/doc1' }] }), obs('a-2', 'm1')],
      Practitioner: [{ resourceType: 'Practitioner', id: 'doc1', name: [{ family: 'Seen' }] }],
    };
    const task = await exchange(0);
    expect({ status: task.status, reason: task.statusReason?.text }).toEqual({ status: 'completed', reason: undefined });
    // One Task (no parent, no child), saying which path ran.
    expect(task.partOf).toBeUndefined();
    expect(outputOf(task, 'exchange-path').valueString).toBe('bulk-of-one');
    expect(task.note.some((n: any) => /^Exchange path bulk-of-one/.test(n.text))).toBe(true);
    expect(outputOf(task, 'MemberId').valueReference.reference).toBe(`${fake.base}/Patient/m1`);
    expect(outputOf(task, 'MatchedMembersGroup').valueReference.reference).toBe(`${fake.base}/Group/G1`);
    // One MemberBundle, the MemberPatient under the Task's id; then the MatchedMembers Group's export, for that member.
    const sent = JSON.parse(fake.bodies['/fhir/Group/$bulk-member-match']).parameter;
    expect(sent.map((p: any) => p.name)).toEqual(['MemberBundle']);
    expect(sent[0].part.find((x: any) => x.name === 'MemberPatient').resource.id).toBe(task.id);
    const exported = JSON.parse(fake.bodies['/fhir/Group/G1/$davinci-data-export']).parameter;
    expect(exported).toEqual(expect.arrayContaining([
      { name: 'exportType', valueCanonical: 'hl7.fhir.us.davinci-pdex#payertopayer' },
      { name: 'patient', valueReference: { reference: 'Patient/m1' } },
    ]));
    expect(fake.log).toEqual(expect.arrayContaining(['GET /fhir/metadata', 'POST /fhir/Group/$bulk-member-match', 'POST /fhir/Group/G1/$davinci-data-export']));
    expect(fake.log.filter(SINGLE_ROUTES)).toEqual([]);
    // The member's records are on the member; nothing on the other local patient.
    expect(await codesOf(locals[0])).toEqual(['a-1', 'a-2']);
    expect(await codesOf(locals[1])).toEqual([]);
    expect(outputOf(task, 'count:Observation').valueInteger).toBe(2);
    expect(outputOf(task, 'transactionTime').valueInstant).toBe(transactionTime);
    completed = task;
  });

  it('fails a member the source does not match, with the reason, importing nothing and exporting nothing', async () => {
    fake.log = [];
    decide = () => ({ outcome: 'nomatch' });
    const before = await codesOf(locals[1]);
    const task = await exchange(1);
    expect({ status: task.status, reason: task.statusReason?.text }).toEqual({ status: 'failed', reason: 'The source payer found no unique match ($bulk-member-match)' });
    expect(outputOf(task, 'exchange-path').valueString).toBe('bulk-of-one');
    expect(await codesOf(locals[1])).toEqual(before);
    expect(fake.log.filter((l) => l.includes('$davinci-data-export'))).toEqual([]);
    expect(fake.log.filter(SINGLE_ROUTES)).toEqual([]);
    // The job keeps nothing of the member's demographics once over.
    expect(JSON.stringify((await requester.runner.get(task.id))?.data)).not.toContain(members[1].birthDate);
  });

  it("fails a member whose consent the source cannot honour, with the bulk exchange's reason", async () => {
    fake.log = [];
    decide = () => ({ outcome: 'consentconstraint' });
    const task = await exchange(1);
    expect({ status: task.status, reason: task.statusReason?.text }).toEqual({ status: 'failed', reason: "The source payer cannot honour the member's consent ($bulk-member-match)" });
    expect(fake.log.filter((l) => l.includes('$davinci-data-export') || SINGLE_ROUTES(l))).toEqual([]);
  });

  it("fails, saying why, when the source refuses the Group's export: a source without Patient/$export is not asked for one", async () => {
    fake.log = [];
    decide = () => ({ outcome: 'match', patientId: 'm2' });
    refuseGroupExport = true;
    try {
      const task = await exchange(1);
      expect(task.status).toBe('failed');
      expect(task.statusReason.text).toMatch(/^\$davinci-data-export kick-off failed \(HTTP 404, not-found\)/);
      expect(fake.log).toContain('POST /fhir/Group/G1/$davinci-data-export');
      expect(fake.log.filter(SINGLE_ROUTES)).toEqual([]);
      expect(await codesOf(locals[1])).toEqual([]);
    } finally {
      refuseGroupExport = false;
    }
  });

  it('runs off through $davinci-data-export of the same Group, _since the last transactionTime as an instant, without matching again', async () => {
    expect(completed?.status).toBe('completed');
    fake.log = [];
    groupFiles = { Observation: [obs('a-3', 'm1')] };
    const since = outputOf(completed, 'transactionTime').valueInstant;
    const res = await fhir('POST', `${requester.baseUrl}/Task/${completed.id}/$sdh.s2s.run-off`);
    expect(res.status).toBe(200);
    const task = await waitForTask(requester, res.body.id, undefined, 20000);
    expect({ status: task.status, reason: task.statusReason?.text }).toEqual({ status: 'completed', reason: undefined });
    expect(outputOf(task, 'exchange-path').valueString).toBe('run-off-davinci-data-export');
    const sent = JSON.parse(fake.bodies['/fhir/Group/G1/$davinci-data-export']).parameter;
    expect(sent).toEqual(expect.arrayContaining([
      { name: 'exportType', valueCanonical: 'hl7.fhir.us.davinci-pdex#payertopayer' },
      { name: '_since', valueInstant: since },
      { name: 'patient', valueReference: { reference: 'Patient/m1' } },
    ]));
    expect(sent.filter((p: any) => p.name === '_since')).toHaveLength(1);
    expect(fake.log.filter((l) => l.includes('member-match') || SINGLE_ROUTES(l))).toEqual([]);
    expect(await codesOf(locals[0])).toEqual(['a-1', 'a-2', 'a-3']);
    // The run-off's own Task names the Group too: the next run-off asks it again.
    expect(outputOf(task, 'MatchedMembersGroup').valueReference.reference).toBe(`${fake.base}/Group/G1`);
    completed = task;
  });

  it('refuses a run-off for a member whose consent here is revoked (409) or has expired (422): nothing is asked of the source', async () => {
    const consentRef = completed.focus.reference;
    const consent = (await fhir('GET', `${requester.baseUrl}/${consentRef}`)).body;
    expect(consent.status).toBe('active');
    const tasksBefore = (await fhir('GET', `${requester.baseUrl}/Task?_summary=count`)).body.total;
    fake.log = [];

    // Expired: its period ended yesterday.
    const yesterday = new Date(Date.now() - 86_400_000).toISOString().slice(0, 10);
    const expired = { ...consent, provision: { ...consent.provision, period: { ...consent.provision.period, start: '2020-01-01', end: yesterday } } };
    expect((await fhir('PUT', `${requester.baseUrl}/${consentRef}`, expired)).status).toBe(200);
    let res = await fhir('POST', `${requester.baseUrl}/Task/${completed.id}/$sdh.s2s.run-off`);
    expect({ status: res.status, type: res.body?.resourceType }).toEqual({ status: 422, type: 'OperationOutcome' });
    expect(res.body.issue[0].diagnostics).toBe(`No run-off for Task/${completed.id}: the member's consent ${consentRef} expired on ${yesterday}`);

    // Revoked: no longer active.
    const revoked = { ...(await fhir('GET', `${requester.baseUrl}/${consentRef}`)).body, status: 'inactive', provision: consent.provision };
    expect((await fhir('PUT', `${requester.baseUrl}/${consentRef}`, revoked)).status).toBe(200);
    res = await fhir('POST', `${requester.baseUrl}/Task/${completed.id}/$sdh.s2s.run-off`);
    expect({ status: res.status, type: res.body?.resourceType }).toEqual({ status: 409, type: 'OperationOutcome' });
    expect(res.body.issue[0].diagnostics).toBe(`No run-off for Task/${completed.id}: the member's consent ${consentRef} is inactive (revoked), not active`);

    // The scheduled run-offs skip the member and say so in the log (no member data).
    const { logger, lines } = capturingLogger();
    const schedule = new InvokeExportService(requester.db, requester.store, SourcePayerRegistry.fromFile(requester.config.sourcePayersFile), new TaskTracker(requester.store), requester.runner, 'New Health Plan', logger);
    await new Promise((r) => setTimeout(r, 20));
    expect(await schedule.startDueRunOffs(1)).toBe(0);
    const skipped = lines.filter((l) => l.includes('run-off skipped')).map((l) => JSON.parse(l));
    expect(skipped).toEqual([expect.objectContaining({ task: completed.id, consent: consentRef, reason: 'revoked' })]);
    for (const secret of [members[0].family, members[0].given, members[0].birthDate]) expect(lines.join('\n')).not.toContain(secret);

    expect((await fhir('GET', `${requester.baseUrl}/Task?_summary=count`)).body.total).toBe(tasksBefore);
    expect(fake.log).toEqual([]);

    // Active again (a new consent in force): the run-off is let through.
    expect((await fhir('PUT', `${requester.baseUrl}/${consentRef}`, { ...revoked, status: 'active' })).status).toBe(200);
    groupFiles = { Observation: [] };
    res = await fhir('POST', `${requester.baseUrl}/Task/${completed.id}/$sdh.s2s.run-off`);
    expect(res.status).toBe(200);
    expect((await waitForTask(requester, res.body.id, undefined, 20000)).status).toBe('completed');
  });
});

describe('a run-off where the source no longer declares $davinci-data-export', () => {
  it('falls back to the Bulk Data kick-off, with _since', async () => {
    const fake = await startFakeSource();
    fake.capabilityStatement = CAPABILITIES;
    const { privateJwk } = await generateClientKeys();
    const running: RunningServer[] = [];
    try {
      const requester = await startRequester({ tokenUrl: '', fhirBaseUrl: fake.base, client: { clientId: 'us', privateJwk } }, { pollMinMs: 20, pollMaxMs: 200 });
      running.push(requester);
      fake.manifest = (req: http.IncomingMessage) => {
        const of = new URL(req.url ?? '/', fake.origin).searchParams.get('of');
        if (of === 'member-match') {
          fake.files['match-Group'] = ndjson(igResultGroups(fake.bodies['/fhir/Group/$bulk-member-match'], () => ({ outcome: 'match', patientId: 'm1' })));
          return { transactionTime: new Date().toISOString(), request: 'x', requiresAccessToken: true, output: [{ type: 'Group', url: `${fake.base}/files/match-Group` }], error: [] };
        }
        fake.files.obs = ndjson([obs(`o-${fake.log.length}`, 'm1')]);
        return { transactionTime: '2026-01-02T03:04:05.678Z', request: 'x', requiresAccessToken: true, output: [{ type: 'Observation', url: `${fake.base}/files/obs` }], error: [] };
      };
      const local = await createLocalPatient(requester, members[0]);
      const first = await waitForTask(requester, (await fhir('POST', `${requester.baseUrl}/Patient/$sdh.s2s.invoke-export`, invokeBody(local, members[0]))).body.id, undefined, 20000);
      expect(first.status).toBe('completed');
      // The source now declares Patient/$export and nothing of PDex's bulk operations.
      fake.capabilityStatement = { ...CAPABILITIES, rest: [{ mode: 'server', resource: [{ type: 'Patient', operation: [{ name: 'export', definition: 'http://hl7.org/fhir/uv/bulkdata/OperationDefinition/patient-export' }] }] }] };
      // (The requester keeps a CapabilityStatement for ten minutes: a restarted one reads it anew.)
      // A new port: the client's pooled keep-alive connections to the stopped server are not reused.
      const { config } = requester;
      await running.pop()?.stop();
      const again = await startRequester({ tokenUrl: '', fhirBaseUrl: fake.base, client: { clientId: 'us', privateJwk } }, { pollMinMs: 20, pollMaxMs: 200, dataDir: config.dataDir });
      running.push(again);
      fake.log = [];
      const res = await fhir('POST', `${again.baseUrl}/Task/${first.id}/$sdh.s2s.run-off`);
      expect({ status: res.status, refused: res.status === 200 ? undefined : res.body?.issue?.[0]?.diagnostics }).toEqual({ status: 200, refused: undefined });
      const task = await waitForTask(again, res.body.id, undefined, 20000);
      expect({ status: task.status, reason: task.statusReason?.text }).toEqual({ status: 'completed', reason: undefined });
      expect(task.output.find((o: any) => o.type.text === 'exchange-path').valueString).toBe('run-off-export');
      expect(fake.log).toContain('GET /fhir/Patient/m1/$export');
      expect(fake.exportQuery?.get('_since')).toBe('2026-01-02T03:04:05.678Z');
      expect(fake.log.filter((l) => l.includes('$davinci-data-export') || l.includes('member-match'))).toEqual([]);
    } finally {
      for (const r of running) await r.stop();
      await fake.close();
    }
  });
});
