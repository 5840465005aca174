import fs from 'node:fs';
import path from 'node:path';
import { RunningServer } from '../../src/main';
import { generateClientKeys } from '../../src/auth/keys';
import { SyntheticMember } from '../../scripts/synthetic';
import { fhir, startTestServer, tempDir } from '../helpers/server';
import { FakeSource, ndjson, startFakeSource } from '../helpers/fake-source';
import { NEW_PLAN_NPI } from '../helpers/seed';
import { createLocalPatient, invokeBody, waitForTask } from '../helpers/payers';

/**
 * Ingestion as PDex's data-mapping page says, through two source payers on loopback that send the
 * same practitioner (the same NPI under ids of their own), each its own Organization carrying the
 * identifiers it is registered with, an active Coverage, and a transmitter Provenance like the
 * IG's ExampleProvenanceTransmitter.
 */
const NPI = 'http://hl7.org/fhir/sid/us-npi';
const SHARED_NPI = '1999999999';
const member = { patientId: 'm1', memberId: 'MEM-1', family: 'Ingest', given: 'Ida', birthDate: '1971-02-03', gender: 'female' } as SyntheticMember;
const MB = { system: 'http://terminology.hl7.org/CodeSystem/v2-0203', code: 'MB' };

interface Source {
  fake: FakeSource;
  issuer: string;
  system: string;
  npi: string;
  ids: { pract: string; payer: string; enc: string; cov: string; loc: string };
}

async function startSource(tag: string, npi: string, memberId: string): Promise<Source> {
  const fake = await startFakeSource();
  const issuer = `https://payer-${tag}.example.com`;
  const ids = { pract: `${tag}-dr-1`, payer: `${tag}-plan`, enc: `${tag}-enc-1`, cov: `${tag}-cov-1`, loc: `${tag}-site-1` };
  fake.memberMatch = (res) => {
    res.writeHead(200, { 'content-type': 'application/fhir+json' });
    res.end(JSON.stringify({ resourceType: 'Parameters', parameter: [{ name: 'MemberIdentifier', valueIdentifier: { type: { coding: [MB] }, system: `${issuer}/member-id`, value: memberId } }, { name: 'MemberId', valueReference: { reference: 'Patient/m1' } }] }));
  };
  const files: Record<string, unknown[]> = {
    Patient: [{ resourceType: 'Patient', id: 'm1', name: [{ family: member.family, given: [member.given] }], birthDate: member.birthDate, identifier: [{ type: { coding: [MB] }, system: `${issuer}/member-id`, value: memberId }] }],
    Encounter: [{ resourceType: 'Encounter', id: ids.enc, status: 'finished', class: { system: 'http://terminology.hl7.org/CodeSystem/v3-ActCode', code: 'AMB' }, subject: { reference: 'Patient/m1' }, participant: [{ individual: { reference: `Practitioner/${ids.pract}` } }], location: [{ location: { reference: `Location/${ids.loc}` } }], serviceProvider: { reference: `Organization/${ids.payer}` } }],
    Practitioner: [{ resourceType: 'Practitioner', id: ids.pract, identifier: [{ system: NPI, value: SHARED_NPI }], name: [{ family: `Careful-${tag}`, given: ['Dana'] }] }],
    Organization: [{ resourceType: 'Organization', id: ids.payer, active: true, name: `Plan ${tag.toUpperCase()}`, identifier: [{ system: NPI, value: npi }], type: [{ coding: [{ system: 'http://terminology.hl7.org/CodeSystem/organization-type', code: 'pay' }] }] }],
    Location: [{ resourceType: 'Location', id: ids.loc, status: 'active', name: 'Shared clinic', identifier: [{ system: 'http://clinics.example/site', value: 'SITE-1' }] }],
    Coverage: [{ resourceType: 'Coverage', id: ids.cov, status: 'active', beneficiary: { reference: 'Patient/m1' }, payor: [{ reference: `Organization/${ids.payer}` }], period: { start: '2020-01-01' } }],
    Provenance: [{ resourceType: 'Provenance', id: `${tag}-prov-1`, meta: { profile: ['http://hl7.org/fhir/us/davinci-pdex/StructureDefinition/pdex-provenance'] }, target: [{ reference: `Encounter/${ids.enc}` }, { reference: `Coverage/${ids.cov}` }], recorded: '2024-07-09T15:26:23.217+00:00', agent: [{ type: { coding: [{ system: 'http://hl7.org/fhir/us/core/CodeSystem/us-core-provenance-participant-type', code: 'transmitter', display: 'Transmitter' }] }, who: { reference: `Organization/${ids.payer}` } }], entity: [{ role: 'source', what: { display: 'No reference available' } }] }],
  };
  // The Encounter first, as a source may order its files: the requester must still resolve the directory records before it.
  for (const type of ['Encounter', 'Coverage', 'Provenance', 'Patient', 'Practitioner', 'Organization', 'Location']) {
    fake.files[type] = ndjson(files[type]);
    fake.output.push({ type, count: files[type].length });
  }
  return { fake, issuer, system: `${issuer}/resource-id`, npi, ids };
}

describe('ingesting exchanged data (PDex data mapping) from two sources', () => {
  let a: Source;
  let b: Source;
  let requester: RunningServer;
  let local: string;
  let practitionerId: string;
  const op = () => `${requester.baseUrl}/Patient/$sdh.s2s.invoke-export`;
  const run = async (s: Source) => waitForTask(requester, (await fhir('POST', op(), invokeBody(local, member, { issuer: s.issuer }))).body.id);
  const all = async (type: string) => ((await fhir('GET', `${requester.baseUrl}/${type}?_count=200`)).body.entry ?? []).map((e: any) => e.resource);

  beforeAll(async () => {
    a = await startSource('a', '1111111112', 'A-100');
    b = await startSource('b', '2222222223', 'B-200');
    const { privateJwk } = await generateClientKeys();
    const file = path.join(tempDir('ingest-config-'), 'source-payers.json');
    fs.writeFileSync(file, JSON.stringify([a, b].map((s) => ({
      issuer: s.issuer, name: `Source ${s.issuer}`, fhirBaseUrl: s.fake.base, clientId: 'us', clientAuthenticationMode: 'PRIVATE_KEY_JWT', privateKeyJwk: privateJwk,
      scopes: 'system/*.read', responderIdentifierSystem: s.system, identifiers: [{ system: NPI, value: s.npi }],
    }))));
    requester = await startTestServer({ sourcePayersFile: file, pollMinMs: 20, pollMaxMs: 200, remoteRetries: 1, remoteRetryBaseMs: 20, remoteRetryMaxMs: 200, requestingPayerName: 'New Health Plan', payerIdentifiers: [NEW_PLAN_NPI] });
    local = await createLocalPatient(requester, member);
  });
  afterAll(async () => {
    await requester.stop();
    await a.fake.close();
    await b.fake.close();
  });

  it('gives one Practitioner for the NPI both sources send, every reference of both imports pointing at it', async () => {
    const first = await run(a);
    expect(first.status).toBe('completed');
    const second = await run(b);
    expect(second.status).toBe('completed');
    const practitioners = await all('Practitioner');
    expect(practitioners).toHaveLength(1);
    const [p] = practitioners;
    practitionerId = p.id;
    // The first source's copy, not overwritten by the second, with both sources' ids kept as identifiers.
    expect(p.name[0].family).toBe('Careful-a');
    expect(p.identifier).toEqual(expect.arrayContaining([{ system: NPI, value: SHARED_NPI }, { system: a.system, value: a.ids.pract }, { system: b.system, value: b.ids.pract }]));
    expect(p.identifier.filter((i: any) => i.system === NPI)).toHaveLength(1);
    const encounters = await all('Encounter');
    expect(encounters).toHaveLength(2);
    for (const e of encounters) expect(e.participant[0].individual.reference).toBe(`Practitioner/${p.id}`);
    // Locations by identifier: one.
    const locations = await all('Location');
    expect(locations).toHaveLength(1);
    for (const e of encounters) expect(e.location[0].location.reference).toBe(`Location/${locations[0].id}`);
  });

  it("keeps the member's identifiers at each source on the local Patient, once, after runs again", async () => {
    expect((await run(a)).status).toBe('completed');
    expect((await run(b)).status).toBe('completed');
    const patient = (await fhir('GET', `${requester.baseUrl}/Patient/${local}`)).body;
    const tokens = (patient.identifier ?? []).map((i: any) => `${i.system}|${i.value}`);
    for (const t of [`${a.issuer}/member-id|A-100`, `${b.issuer}/member-id|B-200`, `${a.system}|m1`, `${b.system}|m1`]) expect(tokens.filter((x: string) => x === t)).toHaveLength(1);
    expect(tokens).toHaveLength(4);
    // Nothing else was duplicated by running again: one Practitioner, one Location, one Encounter per source, one Provenance of each source's.
    expect(await all('Practitioner')).toHaveLength(1);
    expect(await all('Location')).toHaveLength(1);
    expect(await all('Encounter')).toHaveLength(2);
    const received = (await all('Provenance')).filter((r: any) => !r.entity?.some((e: any) => e.what?.reference?.startsWith('Task/')));
    expect(received).toHaveLength(2);
    // The NPI, each source's id, and the local id the second source's copy would have had (it was merged).
    expect((await all('Practitioner'))[0].identifier).toHaveLength(4);
  });

  it("links a later export's records to the matched Practitioner when the source does not send it again (a run-off's _since)", async () => {
    const saved = { output: b.fake.output, files: { ...b.fake.files } };
    try {
      b.fake.output = [{ type: 'Patient', count: 1 }, { type: 'Encounter', count: 1 }];
      b.fake.files.Encounter = ndjson([{ resourceType: 'Encounter', id: 'b-enc-2', status: 'finished', class: { code: 'AMB' }, subject: { reference: 'Patient/m1' }, participant: [{ individual: { reference: `Practitioner/${b.ids.pract}` } }], serviceProvider: { reference: `Organization/${b.ids.payer}` }, location: [{ location: { reference: `Location/${b.ids.loc}` } }] }]);
      expect((await run(b)).status).toBe('completed');
      const enc = (await all('Encounter')).find((e: any) => e.meta.source === `${b.fake.base}/Encounter/b-enc-2`);
      const [p] = await all('Practitioner');
      expect(enc.participant[0].individual.reference).toBe(`Practitioner/${p.id}`);
      expect(enc.location[0].location.reference).toBe(`Location/${(await all('Location'))[0].id}`);
      expect((await fhir('GET', `${requester.baseUrl}/${enc.serviceProvider.reference}`)).body.name).toBe(`Source ${b.issuer}`);
    } finally {
      b.fake.output = saved.output;
      b.fake.files = saved.files;
    }
  });

  it('makes each source payer one Organization: the Task owner, the imported copy and the transmitter of its Provenance', async () => {
    const task = await run(a);
    const owner = task.owner.reference;
    const orgs = await all('Organization');
    const aOrgs = orgs.filter((o: any) => (o.identifier ?? []).some((i: any) => i.system === NPI && i.value === a.npi));
    expect(aOrgs).toHaveLength(1);
    expect(`Organization/${aOrgs[0].id}`).toBe(owner);
    expect(aOrgs[0].identifier).toEqual(expect.arrayContaining([{ system: a.system, value: a.ids.payer }]));
    const encounter = (await all('Encounter')).find((e: any) => e.meta.source === `${a.fake.base}/Encounter/${a.ids.enc}`);
    expect(encounter.serviceProvider.reference).toBe(owner);
    // The source's own Provenance is kept, its targets and its transmitter linked to the local records.
    const theirs = (await all('Provenance')).find((r: any) => r.meta.source === `${a.fake.base}/Provenance/a-prov-1`);
    expect(theirs.agent[0].who.reference).toBe(owner);
    expect(theirs.target.map((t: any) => t.reference)).toContain(`Encounter/${encounter.id}`);
    // No Organization was made of the source's copy besides the owner: the two owners and this payer's own.
    expect(orgs.map((o: any) => o.name).sort()).toEqual(['New Health Plan', `Source ${a.issuer}`, `Source ${b.issuer}`]);
  });

  it("keeps the old plan's Coverage as its history: not found by this payer's active-coverage search", async () => {
    const coverages = await all('Coverage');
    expect(coverages).toHaveLength(2);
    for (const c of coverages) {
      expect(c.meta.tag).toEqual(expect.arrayContaining([expect.objectContaining({ system: 'urn:p2p-fhir-server:record-role', code: 'prior-plan-coverage' })]));
      expect(c.payor[0].reference).toMatch(/^Organization\/source-payer-/);
    }
    const ours = await fhir('GET', `${requester.baseUrl}/Coverage?status=active&payor=Organization/${requester.config.payerOrganizationId}`);
    expect(ours.status).toBe(200);
    expect(ours.body.total).toBe(0);
  });

  it('names the source payer as transmitter and this payer as custodian in the Provenance of each import', async () => {
    const task = await run(b);
    const ref = task.output.find((o: any) => o.type.text === 'Provenance').valueReference.reference;
    const prov = (await fhir('GET', `${requester.baseUrl}/${ref}`)).body;
    expect(prov.meta.profile).toContain('http://hl7.org/fhir/us/davinci-pdex/StructureDefinition/pdex-provenance');
    const transmitter = prov.agent.find((x: any) => x.type.coding.some((c: any) => c.code === 'transmitter'));
    expect(transmitter.type.coding[0].system).toBe('http://hl7.org/fhir/us/core/CodeSystem/us-core-provenance-participant-type');
    expect(transmitter.who.reference).toBe(task.owner.reference);
    expect(prov.agent.some((x: any) => x.type.coding.some((c: any) => c.code === 'author'))).toBe(false);
    const custodian = prov.agent.find((x: any) => x.type.coding.some((c: any) => c.code === 'custodian'));
    expect(custodian.who.reference).toBe(`Organization/${requester.config.payerOrganizationId}`);
    expect((await fhir('GET', `${requester.baseUrl}/${custodian.who.reference}`)).status).toBe(200);
    // Its targets are local records, each once; the shared Practitioner among them.
    const targets = prov.target.map((t: any) => t.reference);
    expect(new Set(targets).size).toBe(targets.length);
    expect(targets).toContain(`Practitioner/${practitionerId}`);
  });

  it("leaves the local Patient's identifiers and the existing Practitioner as they were when a later file is hostile", async () => {
    // The same person again as a Patient with no identifiers yet, so that anything added to it would show.
    const fresh = await createLocalPatient(requester, member);
    try {
      const before = { patient: (await fhir('GET', `${requester.baseUrl}/Patient/${fresh}`)).body, practitioner: (await fhir('GET', `${requester.baseUrl}/Practitioner/${practitionerId}`)).body };
      // Source A turns hostile: good directory files (one matched to the existing Practitioner), then another person's Encounter.
      a.fake.raw = (p, _req, res) => {
        if (p === '/fhir/files/Location') {
          res.writeHead(200, { 'content-type': 'application/fhir+ndjson' });
          res.end(ndjson([{ resourceType: 'Location', id: 'a-site-1', status: 'active', name: 'x', identifier: [{ system: 'http://clinics.example/site', value: 'SITE-1' }] }]));
          return true;
        }
        if (p === '/fhir/files/Encounter') {
          res.writeHead(200, { 'content-type': 'application/fhir+ndjson' });
          // Another person's record: the exchange must fail and put everything back.
          res.end(ndjson([{ resourceType: 'Encounter', id: 'a-enc-2', status: 'finished', class: { code: 'AMB' }, subject: { reference: 'Patient/someone-else' } }]));
          return true;
        }
        if (p === '/fhir/files/Practitioner') {
          res.writeHead(200, { 'content-type': 'application/fhir+ndjson' });
          res.end(ndjson([{ resourceType: 'Practitioner', id: 'a-dr-9', identifier: [{ system: NPI, value: SHARED_NPI }], name: [{ family: 'Impostor' }] }]));
          return true;
        }
        return false;
      };
      const failed = await waitForTask(requester, (await fhir('POST', op(), invokeBody(fresh, member, { issuer: a.issuer }))).body.id);
      expect(failed.status).toBe('failed');
      expect(failed.statusReason.text ?? JSON.stringify(failed.statusReason)).toMatch(/Patient|person|member/i);
      // The directory files were imported (the impostor matched to the existing Practitioner) before the Encounter failed, and put back.
      expect(failed.note.map((n: any) => n.text).join(' ')).toMatch(/[1-9]\d* imported resource\(s\) removed/);
      const after = { patient: (await fhir('GET', `${requester.baseUrl}/Patient/${fresh}`)).body, practitioner: (await fhir('GET', `${requester.baseUrl}/Practitioner/${practitionerId}`)).body };
      expect(after.patient.identifier).toEqual(before.patient.identifier);
      expect(after.practitioner).toEqual(before.practitioner);
      expect(after.patient.identifier).toBeUndefined();
      expect(await all('Practitioner')).toHaveLength(1);
      expect(await all('Encounter')).toHaveLength(3);
    } finally {
      a.fake.raw = undefined;
    }
  });
});
