import { createHash } from 'node:crypto';
import { RunningServer } from '../../src/main';
import { capturingLogger, fhir, startTestServer } from '../helpers/server';
import { FaultProxy, startFaultProxy } from '../helpers/fault-proxy';
import { createLocalPatient, invokeBody, reaching, SourcePayerFixture, startRequester, startSource, waitForTask } from '../helpers/payers';

/**
 * This server declares both the single-member and the bulk operations, so an exchange between two
 * of them is a bulk exchange of one member ($bulk-member-match, then $davinci-data-export). Its
 * $davinci-data-export applies PDex's five-year window by date of service (§pdex-172), which the
 * synthetic claims (dated 2020–2025) partly fall out of as time passes: the sources here have no
 * window, so that what is compared is the exchange, not the window.
 */
const NO_WINDOW = { serviceWindowYears: 0 };

const bundleIds = (b: any) => (b.entry ?? []).filter((e: any) => e.search?.mode === 'match').map((e: any) => e.resource.id).sort();

describe('payer-to-payer exchange between two servers', () => {
  let source: SourcePayerFixture;
  let requester: RunningServer;
  let op: string;

  beforeAll(async () => {
    source = await startSource(6, NO_WINDOW);
    requester = await startRequester(reaching(source));
    op = `${requester.baseUrl}/Patient/$sdh.s2s.invoke-export`;
  });
  afterAll(async () => {
    await requester.stop();
    await source.server.stop();
  });

  it("runs the seed's request to completion: Task, imported data searchable by patient, Provenance, archive", async () => {
    const m = source.members[1];
    const local = await createLocalPatient(requester, m);
    const res = await fhir('POST', op, invokeBody(local, m));
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toMatch(/^application\/fhir\+json/);
    const task = res.body;
    expect(res.headers.get('content-location')).toBe(`Task/${task.id}`);
    expect(task).toMatchObject({
      resourceType: 'Task',
      status: 'requested',
      code: { coding: [{ system: 'http://hl7.org/fhir/us/davinci-hrex/CodeSystem/hrex-temp', code: 'data-request' }] },
      for: { reference: `Patient/${local}` },
    });
    expect(task.authoredOn).toBeDefined();
    expect(task.input).toEqual(expect.arrayContaining([{ type: { text: 'sourceIssuerUrl' }, valueUrl: 'https://source-payer.example.com' }]));
    expect(JSON.stringify(task)).not.toContain(m.birthDate); // no member demographics on the Task

    const done = await waitForTask(requester, task.id);
    expect(done.status).toBe('completed');
    // Once over, the exchange's job keeps no member demographics.
    const job = await requester.runner.get<{ memberMatch: unknown }>(task.id);
    expect(JSON.stringify(job?.data)).not.toContain(m.birthDate);
    expect(done.businessStatus.text).toBe('completed');
    expect(done.owner.display).toBe('Source Health Plan');
    expect(done.focus.reference).toMatch(/^Consent\//);
    expect(done.meta.tag).toEqual(expect.arrayContaining([expect.objectContaining({ code: 'payer-to-payer-exchange' })]));
    expect(done.note.length).toBeGreaterThan(3);
    const outputs = Object.fromEntries(done.output.map((o: any) => [o.type.text, o]));
    // The source declares $bulk-member-match and $davinci-data-export: the Task says the bulk path ran, and names the member
    // by the MemberId of the bulk answer (a $bulk-member-match result names no MemberIdentifier, as $member-match's does).
    expect(outputs['exchange-path'].valueString).toBe('bulk-of-one');
    expect(outputs.MemberId.valueReference.reference).toBe(`${source.server.baseUrl}/Patient/${m.patientId}`);

    // The member's claims are now here, searchable by the local patient, with their origin kept.
    const sourceEobs = await fhir('GET', `${source.server.baseUrl}/ExplanationOfBenefit?patient=${m.patientId}`, undefined, { authorization: `Bearer ${await sourceToken()}` });
    const eobs = await fhir('GET', `${requester.baseUrl}/ExplanationOfBenefit?patient=${local}`);
    expect(eobs.body.total).toBe(sourceEobs.body.total);
    expect(eobs.body.total).toBeGreaterThan(0);
    expect(outputs['count:ExplanationOfBenefit'].valueInteger).toBe(eobs.body.total);
    const eob = eobs.body.entry[0].resource;
    expect(eob.patient.reference).toBe(`Patient/${local}`);
    expect(eob.identifier).toEqual(expect.arrayContaining([{ system: 'https://source-payer.example.com/resource-id', value: expect.stringMatching(/^src-eob-/) }]));
    expect(eob.meta.source).toMatch(new RegExp(`^${source.server.baseUrl}/ExplanationOfBenefit/src-eob-`));
    // References between imported resources resolve locally.
    const provider = await fhir('GET', `${requester.baseUrl}/${eob.provider.reference}`);
    expect(provider.status).toBe(200);
    const coverage = await fhir('GET', `${requester.baseUrl}/${eob.insurance[0].coverage.reference}`);
    expect(coverage.body.beneficiary.reference).toBe(`Patient/${local}`);
    // The member stays one Patient here.
    expect((await fhir('GET', `${requester.baseUrl}/Patient?_summary=count`)).body.total).toBe(1);

    const provenance = await fhir('GET', `${requester.baseUrl}/${outputs.Provenance.valueReference.reference}`);
    expect(provenance.body.target.map((t: any) => t.reference)).toContain(`ExplanationOfBenefit/${eob.id}`);
    // It names every imported resource, each once.
    const imported = done.output.filter((o: any) => o.type.text.startsWith('count:')).reduce((n: number, o: any) => n + o.valueInteger, 0);
    expect(new Set(provenance.body.target.map((t: any) => t.reference)).size).toBe(imported);
    expect(provenance.body.target).toHaveLength(imported);
    expect(provenance.body.agent[0].who.reference).toBe(done.owner.reference);
    expect(provenance.body.entity.map((e: any) => e.what.reference)).toContain(`Task/${task.id}`);
    // The source's own transmitter Provenance (PDex §pdex-127) came along, linked to the local records, with the source's Organization.
    const received = (await fhir('GET', `${requester.baseUrl}/Provenance?_count=500`)).body.entry.map((e: any) => e.resource);
    const sent = received.filter((r: any) => r.agent.some((a: any) => a.type?.coding?.some((c: any) => c.code === 'transmitter')));
    expect(sent.length).toBeGreaterThan(0);
    const sentTargets = sent.flatMap((r: any) => r.target.map((t: any) => t.reference));
    expect(sentTargets).toEqual(expect.arrayContaining([`Patient/${local}`, `ExplanationOfBenefit/${eob.id}`]));
    for (const who of sent.map((r: any) => r.agent[0].who.reference)) expect((await fhir('GET', `${requester.baseUrl}/${who}`)).status).toBe(200);

    // The files as received are archived and linked from the Task.
    const files = done.output.filter((o: any) => o.type.text === 'received-file');
    expect(files.length).toBeGreaterThan(0);
    const doc = (await fhir('GET', `${requester.baseUrl}/${files[0].valueReference.reference}`)).body;
    const binary = (await fhir('GET', `${requester.baseUrl}/${doc.content[0].attachment.url}`)).body;
    const lines = Buffer.from(binary.data, 'base64').toString('utf8').trim().split('\n').map((l) => JSON.parse(l));
    expect(lines.length).toBe(Number(doc.description.match(/(\d+) resources/)[1]));
    expect(lines[0].id).toMatch(/^src-/); // unaltered: the source's own ids
    // The same bytes, raw, for a client that asks for NDJSON; their hash is the attachment's.
    const raw = await fetch(`${requester.baseUrl}/${doc.content[0].attachment.url}`, { headers: { accept: 'application/fhir+ndjson' } });
    expect(raw.headers.get('content-type')).toMatch(/^application\/fhir\+ndjson/);
    const bytes = Buffer.from(await raw.arrayBuffer());
    expect(bytes.equals(Buffer.from(binary.data, 'base64'))).toBe(true);
    expect(createHash('sha1').update(bytes).digest('base64')).toBe(doc.content[0].attachment.hash);
  });

  it('running the same exchange again leaves no duplicates', async () => {
    const m = source.members[2];
    const local = await createLocalPatient(requester, m);
    const first = await waitForTask(requester, (await fhir('POST', op, invokeBody(local, m))).body.id);
    expect(first.status).toBe('completed');
    const before = await fhir('GET', `${requester.baseUrl}/Observation?patient=${local}`);
    const second = await waitForTask(requester, (await fhir('POST', op, invokeBody(local, m))).body.id);
    expect(second.status).toBe('completed');
    const after = await fhir('GET', `${requester.baseUrl}/Observation?patient=${local}`);
    expect(bundleIds(after.body)).toEqual(bundleIds(before.body));
    // Unchanged records are not even rewritten: still version 1.
    expect(after.body.entry.every((e: any) => e.resource.meta.versionId === '1')).toBe(true);
  });

  it('ends failed, with the reason, when the source finds no match', async () => {
    const m = source.members[3];
    const local = await createLocalPatient(requester, m);
    const res = await fhir('POST', op, invokeBody(local, { ...m, birthDate: '1900-01-01' }));
    expect(res.status).toBe(200);
    const task = await waitForTask(requester, res.body.id);
    expect(task.status).toBe('failed');
    expect(task.statusReason.text).toMatch(/no unique match/i);
    expect((await fhir('GET', `${requester.baseUrl}/Condition?patient=${local}`)).body.total).toBe(0);
  });

  it('ends failed when the source cannot honour the consent', async () => {
    const m = source.members[4];
    const local = await createLocalPatient(requester, m);
    const task = await waitForTask(requester, (await fhir('POST', op, invokeBody(local, m, { policy: 'everything' }))).body.id);
    expect(task.status).toBe('failed');
    // The source codes its refusal consentconstraint: the Task says the consent, not a missing member, is why.
    // (Through $bulk-member-match, the reason is the bulk exchange's: its ConsentConstrained Group carries no text of the source's.)
    expect(task.statusReason.text).toBe("The source payer cannot honour the member's consent ($bulk-member-match)");
    expect((await fhir('GET', `${requester.baseUrl}/ExplanationOfBenefit?patient=${local}`)).body.total).toBe(0);
  });

  it('passes export parameters to the source (_type)', async () => {
    const m = source.members[5];
    const local = await createLocalPatient(requester, m);
    const res = await fhir('POST', op, invokeBody(local, m, { exportParts: [{ name: '_type', valueString: 'Patient,Immunization' }] }));
    expect(res.body.input).toEqual(expect.arrayContaining([{ type: { text: '_type' }, valueString: 'Patient,Immunization' }]));
    const task = await waitForTask(requester, res.body.id);
    expect(task.status).toBe('completed');
    const counts = task.output.filter((o: any) => o.type.text.startsWith('count:')).map((o: any) => o.type.text);
    expect(counts).toEqual(['count:Immunization']);
  });

  it('rejects bad requests with an OperationOutcome and creates nothing', async () => {
    const m = source.members[0];
    const local = await createLocalPatient(requester, m);
    const tasksBefore = (await fhir('GET', `${requester.baseUrl}/Task?_summary=count`)).body.total;
    const good = invokeBody(local, m);
    const without = (name: string) => ({ ...good, parameter: good.parameter.filter((p: any) => p.name !== name) });
    const cases: [string, unknown, number, RegExp][] = [
      ['malformed JSON', '{"resourceType":', 400, /JSON/],
      ['not Parameters', { resourceType: 'Patient' }, 400, /Parameters/],
      ['no localPatient', without('localPatient'), 400, /localPatient/],
      ['no memberMatch', without('memberMatch'), 400, /memberMatch/],
      ['repeated sourceIssuerUrl', { ...good, parameter: [...good.parameter, { name: 'sourceIssuerUrl', valueString: 'x' }] }, 400, /sourceIssuerUrl/],
      ['localPatient of the wrong type', { ...good, parameter: good.parameter.map((p: any) => (p.name === 'localPatient' ? { name: 'localPatient', valueString: 'Patient/1' } : p)) }, 400, /localPatient/],
      ['MemberPatient missing', { ...good, parameter: good.parameter.map((p: any) => (p.name === 'memberMatch' ? { ...p, part: p.part.filter((x: any) => x.name !== 'MemberPatient') } : p)) }, 400, /MemberPatient/],
      ['bad _since', invokeBody(local, m, { exportParts: [{ name: '_since', valueString: 'last week' }] }), 400, /_since/],
      ['unknown local patient', invokeBody('nobody-here', m), 422, /nobody-here/],
      ['unregistered issuer', invokeBody(local, m, { issuer: 'https://evil.example.com' }), 422, /not a registered source payer/],
    ];
    for (const [name, body, status, message] of cases) {
      const res = await fhir('POST', op, body);
      expect({ name, status: res.status, type: res.body?.resourceType }).toEqual({ name, status, type: 'OperationOutcome' });
      expect(res.body.issue[0].diagnostics).toMatch(message);
    }
    expect((await fhir('GET', `${requester.baseUrl}/Task?_summary=count`)).body.total).toBe(tasksBefore);
  });

  it('refuses a second active exchange for the same member and source with 409', async () => {
    const m = source.members[0];
    const local = await createLocalPatient(requester, m);
    const first = await fhir('POST', op, invokeBody(local, m));
    const second = await fhir('POST', op, invokeBody(local, m));
    expect(second.status).toBe(409);
    expect(second.body.issue[0].diagnostics).toContain(`Task/${first.body.id}`);
    expect((await waitForTask(requester, first.body.id)).status).toBe('completed');
    expect((await fhir('POST', op, invokeBody(local, m))).status).toBe(200); // free again once done
  });

  async function sourceToken() {
    const { getToken } = await import('../helpers/clients');
    return getToken(source.server.tokenUrl, source.client);
  }
});

describe('exchange under network faults', () => {
  let source: SourcePayerFixture;
  let proxy: FaultProxy;
  let requester: RunningServer;
  let op: string;

  beforeAll(async () => {
    source = await startSource(8, NO_WINDOW);
    proxy = await startFaultProxy(new URL(source.server.baseUrl).origin);
    requester = await startRequester({ tokenUrl: source.server.tokenUrl, fhirBaseUrl: `${proxy.url}/4_0_1`, client: source.client }, { jobLeaseSeconds: 1 });
    op = `${requester.baseUrl}/Patient/$sdh.s2s.invoke-export`;
  });
  afterAll(async () => {
    await requester.stop();
    await proxy.close();
    await source.server.stop();
  });
  afterEach(() => {
    for (const k of Object.keys(proxy.faults)) delete (proxy.faults as Record<string, unknown>)[k];
  });

  it('honours 429 with Retry-After while polling, then completes', async () => {
    proxy.faults.rateLimitPolls = 2;
    const m = source.members[0];
    const local = await createLocalPatient(requester, m);
    const task = await waitForTask(requester, (await fhir('POST', op, invokeBody(local, m))).body.id);
    expect(task.status).toBe('completed');
    expect(proxy.faults.rateLimitPolls).toBe(0);
    expect(proxy.log.filter((l) => l.startsWith('GET /4_0_1/bulkstatus/')).length).toBeGreaterThanOrEqual(3);
  });

  it('fails on a truncated NDJSON file and imports nothing from it', async () => {
    proxy.faults.truncateType = 'ExplanationOfBenefit';
    const m = source.members[1];
    const local = await createLocalPatient(requester, m);
    const task = await waitForTask(requester, (await fhir('POST', op, invokeBody(local, m))).body.id);
    expect(task.status).toBe('failed');
    expect(task.statusReason.text).toMatch(/ExplanationOfBenefit file line \d+ is not valid JSON/);
    expect((await fhir('GET', `${requester.baseUrl}/ExplanationOfBenefit?patient=${local}`)).body.total).toBe(0);
    expect(proxy.log.some((l) => l.startsWith('DELETE /4_0_1/bulkstatus/'))).toBe(true); // the source's job is cleaned up
  });

  it('refuses a manifest URL on another origin', async () => {
    proxy.faults.foreignType = 'Coverage';
    const m = source.members[2];
    const local = await createLocalPatient(requester, m);
    const task = await waitForTask(requester, (await fhir('POST', op, invokeBody(local, m))).body.id);
    expect(task.status).toBe('failed');
    expect(task.statusReason.text).toMatch(/Refused to download Coverage from http:\/\/127\.0\.0\.2:9/);
  });

  it('stops when the Task is cancelled mid-way, and deletes the export at the source', async () => {
    proxy.faults.holdExport = true;
    const m = source.members[3];
    const local = await createLocalPatient(requester, m);
    const id = (await fhir('POST', op, invokeBody(local, m))).body.id;
    const running = await waitForTask(requester, id, (t) => t.businessStatus?.text?.includes('held by the test'));
    const cancel = await fhir('PUT', `${requester.baseUrl}/Task/${id}`, { ...running, status: 'cancelled' }, { 'if-match': `W/"${running.meta.versionId}"` });
    expect(cancel.status).toBe(200);
    const task = await waitForTask(requester, id, (t) => (t.note ?? []).some((n: any) => /Cancelled/.test(n.text)));
    expect(task.status).toBe('cancelled');
    expect(proxy.log.some((l) => l.startsWith('DELETE /4_0_1/bulkstatus/'))).toBe(true);
    proxy.faults.holdExport = false;
    await new Promise((r) => setTimeout(r, 300));
    expect((await fhir('GET', `${requester.baseUrl}/Task/${id}`)).body.status).toBe('cancelled');
    expect((await fhir('GET', `${requester.baseUrl}/ExplanationOfBenefit?patient=${local}`)).body.total).toBe(0);
  });

  it('resumes after a restart of the requesting server, importing nothing twice', async () => {
    proxy.faults.holdExport = true;
    const m = source.members[4];
    const local = await createLocalPatient(requester, m);
    const id = (await fhir('POST', op, invokeBody(local, m))).body.id;
    await waitForTask(requester, id, (t) => t.businessStatus?.text?.includes('held by the test'));
    const { config, port } = requester;
    await requester.stop();
    proxy.faults.holdExport = false;
    requester = await startRequester({ tokenUrl: source.server.tokenUrl, fhirBaseUrl: `${proxy.url}/4_0_1`, client: source.client }, { dataDir: config.dataDir, port, jobLeaseSeconds: 1 });
    const task = await waitForTask(requester, id);
    expect(task.status).toBe('completed');
    const eobs = await fhir('GET', `${requester.baseUrl}/ExplanationOfBenefit?patient=${local}`);
    expect(eobs.body.total).toBeGreaterThan(0);
    expect(eobs.body.entry.every((e: any) => e.resource.meta.versionId === '1')).toBe(true);
    expect(new Set(eobs.body.entry.map((e: any) => e.resource.identifier.find((i: any) => i.system.endsWith('resource-id')).value)).size).toBe(eobs.body.total);
  });
});

describe('exchange when the source is down, then back', () => {
  it('retries, and completes once the source answers again', async () => {
    const source = await startSource(3, NO_WINDOW);
    const { port, dataDir } = { port: source.server.port, dataDir: source.server.config.dataDir };
    const requester = await startRequester(reaching(source));
    await source.server.stop();
    let restarted: RunningServer | undefined;
    try {
      const m = source.members[0];
      const local = await createLocalPatient(requester, m);
      const id = (await fhir('POST', `${requester.baseUrl}/Patient/$sdh.s2s.invoke-export`, invokeBody(local, m))).body.id;
      const waiting = await waitForTask(requester, id, (t) => (t.note ?? []).some((n: any) => /unavailable/.test(n.text)));
      expect(waiting.status).toBe('in-progress');
      restarted = await startTestServer({ dataDir, port, authRequired: true, clientsFile: source.clientsFile, ...NO_WINDOW });
      const task = await waitForTask(requester, id);
      expect(task.status).toBe('completed');
      expect((await fhir('GET', `${requester.baseUrl}/ExplanationOfBenefit?patient=${local}`)).body.total).toBeGreaterThan(0);
    } finally {
      await requester.stop();
      await restarted?.stop();
    }
  });
});

describe('a burst of exchanges', () => {
  it('answers every one of 40 concurrent requests on a fresh server with its Task, and completes them all', async () => {
    const source = await startSource(40);
    const requester = await startRequester(reaching(source));
    try {
      const locals = await Promise.all(source.members.map((m) => createLocalPatient(requester, m)));
      // All at once, before this server has ever written the source payer's Organization.
      const answers = await Promise.all(source.members.map((m, i) => fhir('POST', `${requester.baseUrl}/Patient/$sdh.s2s.invoke-export`, invokeBody(locals[i], m))));
      expect(answers.map((a) => a.status)).toEqual(answers.map(() => 200));
      const tasks = await Promise.all(answers.map((a) => waitForTask(requester, a.body.id, undefined, 60000)));
      expect(tasks.map((t) => t.status)).toEqual(tasks.map(() => 'completed'));
      expect(new Set(tasks.map((t) => t.owner.reference)).size).toBe(1);
    } finally {
      await requester.stop();
      await source.server.stop();
    }
  });
});

describe('log hygiene', () => {
  it('writes no tokens, keys or member data to the logs of either payer, even at debug level', async () => {
    const sourceLogs = capturingLogger();
    const requesterLogs = capturingLogger();
    const source = await startSource(2, {}, sourceLogs.logger);
    const requester = await startRequester(reaching(source), {}, requesterLogs.logger);
    try {
      const m = source.members[1];
      const local = await createLocalPatient(requester, m);
      const task = await waitForTask(requester, (await fhir('POST', `${requester.baseUrl}/Patient/$sdh.s2s.invoke-export`, invokeBody(local, m))).body.id);
      expect(task.status).toBe('completed');
      const all = [...sourceLogs.lines, ...requesterLogs.lines].join('\n');
      expect(all).toContain('token issued'); // the logs did capture the exchange
      expect(all).toContain('bulk-member-match done'); // the bulk path of one member ran at the source
      for (const secret of [m.family, m.given, m.birthDate, m.memberId, 'access_token', 'Bearer ', 'client_assertion', String(source.client.privateJwk.d)]) {
        expect({ secret, found: all.includes(secret) }).toEqual({ secret, found: false });
      }
    } finally {
      await requester.stop();
      await source.server.stop();
    }
  });
});
