import { RunningServer } from '../../src/main';
import { fhir } from '../helpers/server';
import { createLocalPatient, invokeBody, reaching, SourcePayerFixture, startRequester, startSource, waitForTask } from '../helpers/payers';

/**
 * Issue 26 point 5: two instances of this server, a subscriber and a dependent exchanged together
 * through the group path ($bulk-member-match, then one $davinci-data-export of the MatchedMembers
 * Group). The dependent's Coverage names the subscriber (`Coverage.subscriber`), a mention, not whom
 * the Coverage is about (its beneficiary): the group's files are not refused for it, and each member
 * gets their own records alone.
 */
const ISSUER = 'https://source-payer.example.com';
const SOURCE_ID_SYSTEM = `${ISSUER}/resource-id`;
const memberPart = (local: string, m: Parameters<typeof invokeBody>[1]) => ({ name: 'member', part: (invokeBody(local, m).parameter as { name: string }[]).filter((p) => p.name === 'localPatient' || p.name === 'memberMatch') });
const sourceIdOf = (r: any): string | undefined => r.identifier?.find((i: any) => i.system === SOURCE_ID_SYSTEM)?.value;

describe('a subscriber and a dependent through the group path, between two instances of this server', () => {
  let source: SourcePayerFixture;
  let requester: RunningServer;

  beforeAll(async () => {
    source = await startSource(2);
    // At the source, member 1 is member 0's dependent: their Coverage names member 0 as subscriber.
    const [subscriber, dependent] = source.members;
    const cov = (await source.server.store.read('Coverage', 'src-cov-1')) as any;
    await source.server.store.update('Coverage', 'src-cov-1', {
      ...cov,
      subscriber: { reference: `Patient/${subscriber.patientId}` },
      relationship: { coding: [{ system: 'http://terminology.hl7.org/CodeSystem/subscriber-relationship', code: 'child' }] },
    });
    expect(dependent.patientId).toBe('src-pat-1');
    requester = await startRequester(reaching(source));
  });
  afterAll(async () => {
    await requester.stop();
    await source.server.stop();
  });

  it("completes both members with their own Coverage; the dependent's does not point at the subscriber, and no member is exported on its own", async () => {
    const ms = source.members;
    const locals: string[] = [];
    for (const m of ms) locals.push(await createLocalPatient(requester, m));
    const res = await fhir('POST', `${requester.baseUrl}/Group/$sdh.s2s.invoke-bulk-export`, { resourceType: 'Parameters', parameter: [{ name: 'sourceIssuerUrl', valueString: ISSUER }, ...ms.map((m, i) => memberPart(locals[i], m))] });
    expect(res.status).toBe(200);
    const parent = await waitForTask(requester, res.body.id, (t) => t.status === 'completed', 60000);
    const ids = parent.output.filter((o: any) => o.type.text === 'member-task').map((o: any) => o.valueReference.reference.split('/')[1]);
    const tasks = await Promise.all(ids.map((id: string) => fhir('GET', `${requester.baseUrl}/Task/${id}`).then((r) => r.body)));
    expect(tasks.map((t: any) => t.status)).toEqual(['completed', 'completed']);

    // One export of the group; the group's files were not refused, no member was exported on its own.
    const notes = parent.note.map((n: any) => n.text).join(' ');
    expect(notes).not.toMatch(/exported on its own|left out/);
    for (const t of tasks) expect(t.note.map((n: any) => n.text)).toContain("The source payer matched the member ($bulk-member-match); its data came with the group's $davinci-data-export");
    const exports = (await source.server.store.search('AuditEvent', {})).map((a: any) => a.outcomeDesc as string).filter((d: string) => /started \((patient|group) level\)/.test(d));
    expect(exports.filter((d: string) => d.includes('$davinci-data-export'))).toHaveLength(1);
    expect(exports.filter((d: string) => !d.includes('$davinci-data-export'))).toHaveLength(0);

    // Each member has their own Coverage, and only that one.
    const coverages = async (query: string) => ((await fhir('GET', `${requester.baseUrl}/Coverage?${query}&_count=50`)).body.entry ?? []).map((e: any) => e.resource);
    const [subscriberCov, dependentCov] = [await coverages(`beneficiary=Patient/${locals[0]}`), await coverages(`beneficiary=Patient/${locals[1]}`)];
    expect(subscriberCov.map(sourceIdOf)).toEqual(['src-cov-0']);
    expect(dependentCov.map(sourceIdOf)).toEqual(['src-cov-1']);
    expect(subscriberCov[0].subscriber).toEqual({ reference: `Patient/${locals[0]}` });
    // The dependent's stored Coverage: their card kept, the relationship kept, the subscriber not pointed at (nor named).
    expect(dependentCov[0].subscriberId).toBe('SUB-000002');
    expect(dependentCov[0].relationship.coding[0].code).toBe('child');
    expect(dependentCov[0].subscriber?.reference).toBeUndefined();
    expect(JSON.stringify(dependentCov[0])).not.toContain(locals[0]);
    expect(JSON.stringify(dependentCov[0])).not.toContain('src-pat-0');
    expect((await coverages(`subscriber=Patient/${locals[0]}`)).map(sourceIdOf)).toEqual(['src-cov-0']);
    // The dependent's Task says one record came without its reference to another person, naming no one; the subscriber's says nothing of the kind.
    expect(tasks[1].output.find((o: any) => o.type.text === 'references-not-kept')?.valueInteger).toBe(1);
    expect(tasks[1].note.map((n: any) => n.text).join(' ')).toMatch(/1 record\(s\) referred to a person other than the member; those references were not kept/);
    expect(JSON.stringify(tasks[1])).not.toMatch(new RegExp(`${ms[0].family}|${ms[0].given}|src-pat-0|${locals[0]}`));
    expect(tasks[0].output.find((o: any) => o.type.text === 'references-not-kept')).toBeUndefined();

    // Nothing of one member is attached to the other: every record in a member's compartment came from that member's records at the source.
    const own = { 0: /^src-(cov|cond|cond-sens|obs|enc|eob)-0(-|$)/, 1: /^src-(cov|cond|cond-sens|obs|enc|eob)-1(-|$)/ } as Record<number, RegExp>;
    for (const [i, local] of locals.entries()) {
      let seen = 0;
      for (const [type, param] of [['Coverage', 'beneficiary'], ['Condition', 'patient'], ['Observation', 'patient'], ['Encounter', 'patient'], ['ExplanationOfBenefit', 'patient']]) {
        const found = ((await fhir('GET', `${requester.baseUrl}/${type}?${param}=Patient/${local}&_count=200`)).body.entry ?? []).map((e: any) => sourceIdOf(e.resource));
        for (const id of found) expect(id).toMatch(own[i]);
        seen += found.length;
      }
      expect(seen).toBeGreaterThan(1);
    }
  });
});
