import { RunningServer } from '../../src/main';
import { SyntheticMember } from '../../scripts/synthetic';
import { fhir, startTestServer } from '../helpers/server';
import { memberMatchBody, seedPopulation } from '../helpers/seed';
import { download, kickoff, poll } from '../helpers/bulk';
import { getToken, writeClientsFile } from '../helpers/clients';

/** PDex 2.1 multi-member exchange, source side: $bulk-member-match and $davinci-data-export, as partners call them. */
const RESULT = 'http://hl7.org/fhir/us/davinci-pdex/CodeSystem/PdexMultiMemberMatchResultCS';

describe('$bulk-member-match and $davinci-data-export', () => {
  let server: RunningServer;
  let base: string;
  let members: SyntheticMember[];
  const tokens: Record<string, string> = {};
  const auth = (who: string) => ({ authorization: `Bearer ${tokens[who]}` });
  const memberBundle = (m: { family: string; given: string; birthDate: string; memberId: string }, consent?: Record<string, unknown>) => ({ name: 'MemberBundle', part: memberMatchBody(m, { consent }).parameter });
  let groups: Record<string, any> = {};

  beforeAll(async () => {
    const { file, clients } = await writeClientsFile([
      { clientId: 'new-plan', scopes: 'system/*.read' },
      { clientId: 'other-plan', scopes: 'system/*.read' },
      { clientId: 'back-office', scopes: 'system/*.*', role: 'service' },
      { clientId: 'narrow-plan', scopes: 'system/Observation.read' },
    ]);
    server = await startTestServer({ authRequired: true, clientsFile: file });
    base = server.baseUrl;
    members = await seedPopulation(server, 5);
    tokens.partner = await getToken(server.tokenUrl, clients['new-plan']);
    tokens.other = await getToken(server.tokenUrl, clients['other-plan']);
    tokens.service = await getToken(server.tokenUrl, clients['back-office'], 'system/*.*');
    tokens.narrow = await getToken(server.tokenUrl, clients['narrow-plan'], 'system/Observation.read');
  });
  afterAll(async () => server.stop());

  it('sorts members into matched, not matched and consent-constrained Groups, delivered as Group NDJSON and as Parameters', async () => {
    const body = {
      resourceType: 'Parameters',
      parameter: [
        memberBundle(members[0]),
        memberBundle(members[1]),
        memberBundle({ family: 'Nobody', given: 'Invented', birthDate: '1901-01-01', memberId: 'NOPE-1' }),
        memberBundle(members[2], { policy: [{ uri: 'http://example.org/some-other-policy' }] }),
      ],
    };
    expect((await fhir('POST', `${base}/Group/$bulk-member-match`, body, auth('partner'))).status).toBe(400); // no Prefer: respond-async
    expect((await kickoff(`${base}/Group/$bulk-member-match`, { method: 'POST', body: { resourceType: 'Parameters', parameter: [{ name: 'MemberBundle', part: [] }] }, token: tokens.partner })).status).toBe(400);
    const k = await kickoff(`${base}/Group/$bulk-member-match`, { method: 'POST', body, token: tokens.partner });
    expect(k.status).toBe(202);
    const done = await poll(k.location as string, tokens.partner);
    expect(done.status).toBe(200);
    expect(done.body.output.map((o: any) => o.type).sort()).toEqual(['Group', 'Parameters']);
    const groupFile = await download(done.body.output.find((o: any) => o.type === 'Group').url, tokens.partner);
    groups = Object.fromEntries(groupFile.resources.map((g: any) => [g.characteristic[0].code.coding.find((c: any) => c.system === RESULT).code, g]));
    expect(Object.keys(groups).sort()).toEqual(['consentconstraint', 'match', 'nomatch']);
    expect(groups.match.member.map((m: any) => m.entity.reference).sort()).toEqual([members[0], members[1]].map((m) => `Patient/${m.patientId}`).sort());
    // Each matched member points at the demographics submitted for it, contained.
    for (const m of groups.match.member) expect(groups.match.contained.map((c: any) => `#${c.id}`)).toContain(m.entity.extension[0].valueReference.reference);
    expect(groups.nomatch.member).toHaveLength(1);
    expect(groups.nomatch.member[0].entity.reference).toMatch(/^#/);
    // A consent that cannot be honoured says nothing of why, nor who the member is here.
    expect(groups.consentconstraint.member[0].entity.reference).toMatch(/^#/);
    expect(JSON.stringify(groups.consentconstraint)).not.toMatch(/policy|provision|Patient\//);
    const params = (await download(done.body.output.find((o: any) => o.type === 'Parameters').url, tokens.partner)).resources[0];
    expect(params.parameter.map((p: any) => p.name).sort()).toEqual(['ConsentConstrainedMembers', 'MatchedMembers', 'NonMatchedMembers']);
  });

  it('the Groups are the requesting client\'s alone: read, search and export', async () => {
    const read = (who: string) => fhir('GET', `${base}/Group/${groups.match.id}`, undefined, auth(who));
    expect((await read('partner')).status).toBe(200);
    expect((await read('other')).status).toBe(404);
    const search = (who: string) => fhir('GET', `${base}/Group?characteristic=${encodeURIComponent(`${RESULT}|nomatch`)}`, undefined, auth(who));
    expect((await search('partner')).body.entry.map((e: any) => e.resource.id)).toEqual([groups.nomatch.id]);
    expect((await search('other')).body.entry ?? []).toEqual([]);
    expect((await kickoff(`${base}/Group/${groups.match.id}/$davinci-data-export`, { method: 'POST', body: { resourceType: 'Parameters' }, token: tokens.other })).status).toBe(404);
  });

  it('$davinci-data-export exports the matched members, a subset with `patient`, and judges consent again when it runs', async () => {
    const url = `${base}/Group/${groups.match.id}/$davinci-data-export`;
    const exportPatients = async (parameter: unknown[]) => {
      const k = await kickoff(url, { method: 'POST', body: { resourceType: 'Parameters', parameter }, token: tokens.partner });
      expect(k.status).toBe(202);
      const done = await poll(k.location as string, tokens.partner);
      const file = done.body.output.find((o: any) => o.type === 'Patient');
      return file ? (await download(file.url, tokens.partner)).resources.map((r: any) => r.id).sort() : [];
    };
    const type = { name: 'exportType', valueString: 'hl7.fhir.us.davinci-pdex#payertopayer' };
    expect(await exportPatients([type, { name: '_type', valueString: 'Patient,Condition' }])).toEqual([members[0].patientId, members[1].patientId].sort());
    // ATR declares exportType a canonical and _since an instant: a partner that follows it is understood.
    const typed = [{ name: 'exportType', valueCanonical: 'hl7.fhir.us.davinci-pdex#payertopayer' }, { name: '_since', valueInstant: '2000-01-01T00:00:00Z' }, { name: '_type', valueString: 'Patient' }];
    expect(await exportPatients(typed)).toEqual([members[0].patientId, members[1].patientId].sort());
    expect((await kickoff(url, { method: 'POST', body: { resourceType: 'Parameters', parameter: [{ name: 'exportType', valueCanonical: 'http://example.org/other-export' }] }, token: tokens.partner })).status).toBe(400);
    expect(await exportPatients([{ name: 'patient', valueReference: { reference: `Patient/${members[1].patientId}` } }, { name: '_type', valueString: 'Patient' }])).toEqual([members[1].patientId]);
    // A `patient` outside the Group is ignored, and reported in the manifest's error file.
    const k = await kickoff(url, { method: 'POST', body: { resourceType: 'Parameters', parameter: [{ name: 'patient', valueReference: { reference: `Patient/${members[1].patientId}` } }, { name: 'patient', valueReference: { reference: `Patient/${members[4].patientId}` } }, { name: '_type', valueString: 'Patient' }] }, token: tokens.partner });
    const done = await poll(k.location as string, tokens.partner);
    expect(done.body.output.map((o: any) => o.count)).toEqual([1]);
    expect(done.body.error.map((o: any) => o.type)).toEqual(['OperationOutcome']);
    const issues = (await download(done.body.error[0].url, tokens.partner)).resources.map((r: any) => r.issue[0].diagnostics);
    expect(issues).toEqual([`Patient/${members[4].patientId} is not exported: not a member of the Group, or no consent in force for this client`]);
    expect((await kickoff(url, { method: 'POST', body: { resourceType: 'Parameters', parameter: [{ name: 'exportType', valueString: 'something-else' }] }, token: tokens.partner })).status).toBe(400);
    expect((await kickoff(url, { method: 'POST', body: { resourceType: 'Parameters', parameter: [{ name: '_typeFilter', valueString: 'Condition?nope=1' }] }, token: tokens.partner })).status).toBe(400);
    // The member withdraws: the next export leaves them out.
    const consents = (await fhir('GET', `${base}/Consent?patient=Patient/${members[0].patientId}`, undefined, auth('partner'))).body.entry;
    expect(consents).toHaveLength(1);
    expect((await fhir('DELETE', `${base}/Consent/${consents[0].resource.id}`, undefined, auth('service'))).status).toBeLessThan(300);
    expect(await exportPatients([{ name: '_type', valueString: 'Patient' }])).toEqual([members[1].patientId]);
  });

  it('$davinci-data-export keeps to the five-year window of dates of service; a plain $export does not', async () => {
    const m = members[1];
    const yearsAgo = (n: number) => new Date(Date.now() - n * 365.25 * 86400_000).toISOString();
    const subject = { reference: `Patient/${m.patientId}` };
    const records = [
      { resourceType: 'Observation', id: 'win-recent', status: 'final', code: { text: 'x' }, subject, effectiveDateTime: yearsAgo(1) },
      { resourceType: 'Observation', id: 'win-old', status: 'final', code: { text: 'x' }, subject, effectiveDateTime: yearsAgo(7) },
      { resourceType: 'Observation', id: 'win-undated', status: 'final', code: { text: 'x' }, subject },
      { resourceType: 'Observation', id: 'win-old-year', status: 'final', code: { text: 'x' }, subject, effectiveDateTime: yearsAgo(7).slice(0, 4) },
      { resourceType: 'Encounter', id: 'win-open', status: 'in-progress', class: { code: 'AMB' }, subject, period: { start: yearsAgo(10) } },
      { resourceType: 'Encounter', id: 'win-closed', status: 'finished', class: { code: 'AMB' }, subject, period: { start: yearsAgo(10), end: yearsAgo(9) } },
      { resourceType: 'Condition', id: 'win-active', subject, clinicalStatus: { coding: [{ system: 'http://terminology.hl7.org/CodeSystem/condition-clinical', code: 'active' }] }, onsetDateTime: yearsAgo(10) },
      { resourceType: 'Condition', id: 'win-resolved', subject, clinicalStatus: { coding: [{ system: 'http://terminology.hl7.org/CodeSystem/condition-clinical', code: 'resolved' }] }, onsetDateTime: yearsAgo(10), abatementDateTime: yearsAgo(8) },
    ];
    for (const r of records) expect((await fhir('PUT', `${base}/${r.resourceType}/${r.id}`, r, auth('service'))).status).toBeLessThan(300);
    const exported = async (url: string, parameter: unknown[]) => {
      const k = await kickoff(url, { method: 'POST', body: { resourceType: 'Parameters', parameter }, token: tokens.partner });
      expect(k.status).toBe(202);
      const done = await poll(k.location as string, tokens.partner);
      const ids: string[] = [];
      for (const o of done.body.output) ids.push(...(await download(o.url, tokens.partner)).resources.map((r: any) => r.id).filter((id: string) => id.startsWith('win-')));
      return ids.sort();
    };
    const types = { name: '_type', valueString: 'Observation,Encounter,Condition' };
    expect(await exported(`${base}/Group/${groups.match.id}/$davinci-data-export`, [types, { name: 'patient', valueReference: { reference: `Patient/${m.patientId}` } }])).toEqual(['win-active', 'win-open', 'win-recent', 'win-undated']);
    expect(await exported(`${base}/Patient/$export`, [types, { name: 'patient', valueReference: { reference: `Patient/${m.patientId}` } }])).toEqual(records.map((r) => r.id).sort());
  });

  it('sends prior authorizations by their own rule (active, pending, or changed in the last year) whatever their dates of service, with the documentation of active ones', async () => {
    const m = members[1];
    const old = new Date(Date.now() - 7 * 365.25 * 86400_000).toISOString().slice(0, 10);
    const patient = { reference: `Patient/${m.patientId}` };
    const eob = (id: string, extra: Record<string, unknown>) => ({
      resourceType: 'ExplanationOfBenefit', id, use: 'preauthorization', status: 'active', outcome: 'complete', type: { coding: [{ system: 'http://terminology.hl7.org/CodeSystem/claim-type', code: 'professional' }] },
      patient, created: `${old}T00:00:00Z`, billablePeriod: { start: old, end: old }, insurer: { display: 'Source plan' }, provider: { display: 'A clinic' }, insurance: [{ focal: true, coverage: { display: 'old coverage' } }], ...extra,
    });
    const doc = (id: string) => ({ resourceType: 'DocumentReference', id, status: 'current', subject: patient, date: `${old}T00:00:00Z`, content: [{ attachment: { contentType: 'text/plain', data: 'eA==' } }] });
    const records = [
      eob('pa-active-old', { supportingInfo: [{ sequence: 1, category: { text: 'documentation' }, valueReference: { reference: 'DocumentReference/pa-doc' } }] }),
      eob('pa-pending-old', { status: 'draft', outcome: 'queued' }),
      // Cancelled years after its service dates, so changed just now: its change of status is within the year.
      eob('pa-cancelled-now', { status: 'cancelled' }),
      { ...eob('claim-old', {}), use: 'claim' },
      doc('pa-doc'),
      doc('pa-doc-unreferenced'),
    ];
    for (const r of records) expect((await fhir('PUT', `${base}/${r.resourceType}/${r.id}`, r, auth('service'))).status).toBeLessThan(300);
    const k = await kickoff(`${base}/Group/${groups.match.id}/$davinci-data-export`, { method: 'POST', body: { resourceType: 'Parameters', parameter: [{ name: '_type', valueString: 'ExplanationOfBenefit,DocumentReference' }] }, token: tokens.partner });
    expect(k.status).toBe(202);
    const done = await poll(k.location as string, tokens.partner);
    const ids: string[] = [];
    for (const o of done.body.output) ids.push(...(await download(o.url, tokens.partner)).resources.map((r: any) => r.id));
    // The old claim and the old unreferenced document stay outside the window.
    expect(ids.filter((id) => id.startsWith('pa-') || id.startsWith('claim-')).sort()).toEqual(['pa-active-old', 'pa-cancelled-now', 'pa-doc', 'pa-pending-old']);
  });

  describe('the result Groups as PDex 2.2 profiles them (§pdex-150 to §pdex-153)', () => {
    const MATCH_EXT = 'http://hl7.org/fhir/us/davinci-pdex/StructureDefinition/base-ext-match-parameters';
    const COVERAGE_EXT = 'http://hl7.org/fhir/us/davinci-pdex/StructureDefinition/base-ext-match-coverage';
    const PROFILE = 'http://hl7.org/fhir/us/core/StructureDefinition/us-core-patient';
    /** A MemberBundle whose MemberPatient has the given id (and more: identifiers, gender, meta, a nested contained) and CoverageToMatch the given id and member id. */
    const bundle = (m: SyntheticMember, patientId: string, coverage: { id?: string; memberId?: string } = {}, extra: Record<string, unknown> = {}) => {
      const parts = memberMatchBody({ ...m, memberId: coverage.memberId ?? m.memberId }).parameter as any[];
      const patient = parts.find((p) => p.name === 'MemberPatient').resource;
      Object.assign(patient, {
        id: patientId,
        meta: { versionId: '7', lastUpdated: '2024-03-20T09:00:00Z', security: [{ system: 'http://terminology.hl7.org/CodeSystem/v3-Confidentiality', code: 'N' }], profile: [PROFILE] },
        identifier: [{ system: 'http://example.org/new-payer/identifiers/member', value: `NEW-${patientId}` }],
        telecom: [{ system: 'phone', value: '555-0100' }],
        contained: [{ resourceType: 'Organization', id: 'nested', name: 'Nested' }],
        ...extra,
      });
      if (coverage.id) parts.find((p) => p.name === 'CoverageToMatch').resource.id = coverage.id;
      return { name: 'MemberBundle', part: parts };
    };
    const run = async (url: string, parameter: unknown[], token = tokens.partner) => {
      const k = await kickoff(url, { method: 'POST', body: { resourceType: 'Parameters', parameter }, token });
      expect(k.status).toBe(202);
      const done = await poll(k.location as string, token);
      expect(done.status).toBe(200);
      const groupFile = (await download(done.body.output.find((o: any) => o.type === 'Group').url, token)).resources;
      const params = (await download(done.body.output.find((o: any) => o.type === 'Parameters').url, token)).resources[0];
      return { groupFile, params, byCode: Object.fromEntries(groupFile.map((g: any) => [g.code.coding.find((c: any) => c.system === RESULT).code, g])) };
    };
    const containedOf = (g: any, ref: string) => g.contained.find((c: any) => `#${c.id}` === ref);
    let result: Awaited<ReturnType<typeof run>>;

    beforeAll(async () => {
      const nobody = { family: 'Nobody', given: 'Invented', birthDate: '1901-01-01', memberId: 'NOPE-9' } as SyntheticMember;
      result = await run(`${base}/Group/$bulk-member-match`, [
        bundle(members[3], 'sub-1'),
        // One person in two MemberBundles with two coverages: the one held here matches, the other not.
        bundle(members[4], 'sub-2', { id: 'cov-a' }),
        bundle(members[4], 'sub-2', { id: 'cov-b', memberId: 'OTHER-PLAN-1' }),
        bundle(nobody, 'sub-3'),
        bundle(members[2], 'sub-4', {}, {}),
      ].map((b, i) => (i === 4 ? { ...b, part: b.part.map((p: any) => (p.name === 'Consent' ? { ...p, resource: { ...p.resource, policy: [{ uri: 'http://example.org/some-other-policy' }] } } : p)) } : b)));
    });

    it('carries Group.code on every Group (type person, actual), the characteristic of the matched one, and the same Groups in the Parameters file', async () => {
      const { groupFile, params, byCode } = result;
      expect(Object.keys(byCode).sort()).toEqual(['consentconstraint', 'match', 'nomatch']);
      for (const g of groupFile) {
        expect(g.code.coding).toHaveLength(1);
        expect(g).toMatchObject({ resourceType: 'Group', type: 'person', actual: true });
      }
      expect(byCode.match.code.coding[0]).toEqual({ system: RESULT, code: 'match', display: 'Matched' });
      expect(byCode.nomatch.code.coding[0]).toEqual({ system: RESULT, code: 'nomatch', display: 'Not Matched' });
      expect(byCode.consentconstraint.code.coding[0]).toEqual({ system: RESULT, code: 'consentconstraint', display: 'Consent Constraint' });
      const [c] = byCode.match.characteristic;
      expect(c).toMatchObject({ code: { coding: [{ system: RESULT, code: 'match' }] }, exclude: false });
      expect(c.period.start).toBe(new Date().toISOString().slice(0, 10));
      expect(c.valueReference.identifier.value).toBe('new-plan');
      const wrapped = Object.fromEntries(params.parameter.map((p: any) => [p.name, p.resource]));
      expect(wrapped.MatchedMembers).toEqual(byCode.match);
      expect(wrapped.NonMatchedMembers).toEqual(byCode.nomatch);
      expect(wrapped.ConsentConstrainedMembers).toEqual(byCode.consentconstraint);
    });

    it('contains each MemberPatient as submitted, under its submitted id, less meta.versionId, lastUpdated, security and nested contained', async () => {
      const { match } = result.byCode;
      const entry = match.member.find((m: any) => m.entity.reference === `Patient/${members[3].patientId}`);
      expect(entry.entity.extension).toEqual([{ url: MATCH_EXT, valueReference: { reference: '#sub-1' } }]);
      const patient = containedOf(match, '#sub-1');
      expect(patient).toEqual({
        resourceType: 'Patient',
        id: 'sub-1',
        meta: { profile: [PROFILE] },
        name: [{ family: members[3].family, given: [members[3].given] }],
        birthDate: members[3].birthDate,
        identifier: [{ system: 'http://example.org/new-payer/identifiers/member', value: 'NEW-sub-1' }],
        telecom: [{ system: 'phone', value: '555-0100' }],
      });
      // Nothing in any Group contains further contained resources.
      for (const g of result.groupFile) for (const r of g.contained) expect(r.contained).toBeUndefined();
    });

    it('points every entry not matched at its contained MemberPatient with nonMatchedMember, naming no Patient here', async () => {
      const { nomatch, consentconstraint } = result.byCode;
      const sub3 = nomatch.member.find((m: any) => m.entity.reference === '#sub-3');
      expect(sub3.entity.extension).toEqual([{ url: MATCH_EXT, valueReference: { reference: '#sub-3' } }]);
      expect(containedOf(nomatch, '#sub-3').name[0].family).toBe('Nobody');
      expect(consentconstraint.member).toEqual([{ entity: { reference: '#sub-4', extension: [{ url: MATCH_EXT, valueReference: { reference: '#sub-4' } }] } }]);
      expect(consentconstraint.contained.map((c: any) => c.id)).toEqual(['sub-4']);
      for (const g of [nomatch, consentconstraint]) {
        for (const m of g.member) {
          expect(m.entity.reference).toMatch(/^#/);
          expect(containedOf(g, m.entity.extension.find((e: any) => e.url === MATCH_EXT).valueReference.reference)?.resourceType).toBe('Patient');
        }
      }
    });

    it('tells apart the two coverages of one person: each entry points at its contained Coverage, the person contained once per Group (§pdex-153)', async () => {
      const { match, nomatch } = result.byCode;
      const matched = match.member.find((m: any) => m.entity.reference === `Patient/${members[4].patientId}`);
      expect(matched.entity.extension).toEqual([
        { url: MATCH_EXT, valueReference: { reference: '#sub-2' } },
        { url: COVERAGE_EXT, valueReference: { reference: '#cov-a' } },
      ]);
      expect(containedOf(match, '#cov-a')).toMatchObject({ resourceType: 'Coverage', identifier: [{ value: members[4].memberId }] });
      const notMatched = nomatch.member.find((m: any) => m.entity.reference === '#sub-2');
      expect(notMatched.entity.extension).toEqual([
        { url: MATCH_EXT, valueReference: { reference: '#sub-2' } },
        { url: COVERAGE_EXT, valueReference: { reference: '#cov-b' } },
      ]);
      expect(containedOf(nomatch, '#cov-b')).toMatchObject({ resourceType: 'Coverage', identifier: [{ value: 'OTHER-PLAN-1' }] });
      // A person in one MemberBundle only has no Coverage contained; nobody is contained twice in a Group.
      expect(match.member.find((m: any) => m.entity.reference === `Patient/${members[3].patientId}`).entity.extension).toHaveLength(1);
      for (const g of result.groupFile) expect(new Set(g.contained.map((c: any) => c.id)).size).toBe(g.contained.length);
      expect(match.contained.filter((c: any) => c.id === 'sub-2')).toHaveLength(1);
    });

    it('refuses two different people under one submitted id, and codes reserved to this server, before anything is matched (400)', async () => {
      const before = (await fhir('GET', `${base}/Group?_summary=count`, undefined, auth('partner'))).body.total;
      const twoPeople = await kickoff(`${base}/Group/$bulk-member-match`, { method: 'POST', body: { resourceType: 'Parameters', parameter: [bundle(members[3], 'same'), bundle(members[4], 'same')] }, token: tokens.partner });
      expect(twoPeople.status).toBe(400);
      expect(twoPeople.body.issue[0].diagnostics).toMatch(/MemberBundle 2: its MemberPatient has the id 'same' of MemberBundle 1's but not the same content/);
      expect(JSON.stringify(twoPeople.body)).not.toContain(members[4].family);
      const forged = bundle(members[3], 'forged', {}, { meta: { tag: [{ system: 'urn:p2p-fhir-server:client', code: 'other-plan' }] } });
      const marked = await kickoff(`${base}/Group/$bulk-member-match`, { method: 'POST', body: { resourceType: 'Parameters', parameter: [forged] }, token: tokens.partner });
      expect(marked.status).toBe(400);
      expect(marked.body.resourceType).toBe('OperationOutcome');
      expect((await fhir('GET', `${base}/Group?_summary=count`, undefined, auth('partner'))).body.total).toBe(before);
    });

    it('is served as $multi-member-match too: same answer, same permission', async () => {
      const alias = `${base}/Group/$multi-member-match`;
      const { byCode } = await run(alias, [bundle(members[3], 'alias-1')]);
      expect(byCode.match.member).toEqual([{ entity: { reference: `Patient/${members[3].patientId}`, extension: [{ url: MATCH_EXT, valueReference: { reference: '#alias-1' } }] } }]);
      const noPrefer = await fhir('POST', alias, { resourceType: 'Parameters', parameter: [bundle(members[3], 'alias-2')] }, auth('partner'));
      expect(noPrefer.status).toBe(400);
      expect(noPrefer.body.issue[0].diagnostics).toMatch(/\$multi-member-match needs the header Prefer: respond-async/);
      // A client that may not read Patients may call neither name.
      for (const url of [alias, `${base}/Group/$bulk-member-match`]) {
        const res = await kickoff(url, { method: 'POST', body: { resourceType: 'Parameters', parameter: [bundle(members[3], 'alias-3')] }, token: tokens.narrow });
        expect(res.status).toBe(403);
        expect(res.body.resourceType).toBe('OperationOutcome');
      }
      expect((await fhir('GET', `${base}/Group?identifier=${encodeURIComponent(byCode.match.identifier[0].value)}`, undefined, auth('partner'))).body.entry.map((e: any) => e.resource.id)).toEqual([byCode.match.id]);
    });

    it('finds the Groups by code, characteristic and identifier for the client that asked, and for no other partner', async () => {
      const { match, nomatch } = result.byCode;
      const ids = async (who: string, query: string) => ((await fhir('GET', `${base}/Group?${query}`, undefined, auth(who))).body.entry ?? []).map((e: any) => e.resource.id);
      const code = (c: string) => `code=${encodeURIComponent(`${RESULT}|${c}`)}`;
      expect(await ids('partner', code('match'))).toContain(match.id);
      expect(await ids('partner', code('match'))).not.toContain(nomatch.id);
      expect(await ids('partner', code('nomatch'))).toContain(nomatch.id);
      expect(await ids('partner', `characteristic=${encodeURIComponent(`${RESULT}|match`)}`)).toContain(match.id);
      expect(await ids('partner', `identifier=${encodeURIComponent(`urn:ietf:rfc:3986|${match.identifier[0].value}`)}`)).toEqual([match.id]);
      for (const query of [code('match'), code('nomatch'), code('consentconstraint'), `characteristic=${encodeURIComponent(`${RESULT}|match`)}`, `identifier=${encodeURIComponent(match.identifier[0].value)}`]) {
        expect({ query, found: await ids('other', query) }).toEqual({ query, found: [] });
      }
      expect((await fhir('GET', `${base}/Group/${match.id}`, undefined, auth('other'))).status).toBe(404);
    });
  });
});

describe('$bulk-member-match and the brute-force limit', () => {
  /** A server allowing `maxFailures` failed matches, with `members` seeded, and a prober client's token. */
  async function prober(maxFailures: number, members: number) {
    const { file, clients } = await writeClientsFile([{ clientId: 'prober', scopes: 'system/*.read' }]);
    const server = await startTestServer({ authRequired: true, clientsFile: file, bulkMatchMaxFailures: maxFailures });
    return { server, real: await seedPopulation(server, members), token: await getToken(server.tokenUrl, clients.prober) };
  }
  /** A member the server does not know: a guess. */
  const invented = (i: number) => ({ name: 'MemberBundle', part: memberMatchBody({ family: `Nobody${i}`, given: 'Invented', birthDate: '1901-01-01', memberId: `NOPE-${i}` }).parameter });

  it("counts members not matched against the client's allowance: past it the request fails, and the next is 429", async () => {
    const { server, real: members, token } = await prober(3, 2);
    try {
      const real = { name: 'MemberBundle', part: memberMatchBody(members[0]).parameter };
      // Two failures: within the allowance; the request completes.
      let k = await kickoff(`${server.baseUrl}/Group/$bulk-member-match`, { method: 'POST', body: { resourceType: 'Parameters', parameter: [real, invented(1), invented(2)] }, token });
      expect((await poll(k.location as string, token)).status).toBe(200);
      // Five more guesses: the allowance runs out on the way, and the request fails without an answer for anyone.
      k = await kickoff(`${server.baseUrl}/Group/$bulk-member-match`, { method: 'POST', body: { resourceType: 'Parameters', parameter: [3, 4, 5, 6, 7].map(invented) }, token });
      expect(k.status).toBe(202);
      const done = await poll(k.location as string, token);
      // A failed request of the client's (Bulk Data: 4xx and an OperationOutcome, a code that is not transient), not a 500.
      expect(done.status).toBe(422);
      expect(done.body.resourceType).toBe('OperationOutcome');
      expect(done.body.issue[0].code).toBe('business-rule');
      expect(JSON.stringify(done.body)).toMatch(/allowance of failed matches is used up/);
      // Now the kick-off itself is refused, with when to come back.
      const res = await fetch(`${server.baseUrl}/Group/$bulk-member-match`, { method: 'POST', headers: { 'content-type': 'application/fhir+json', prefer: 'respond-async', authorization: `Bearer ${token}` }, body: JSON.stringify({ resourceType: 'Parameters', parameter: [real] }) });
      expect(res.status).toBe(429);
      expect(Number(res.headers.get('retry-after'))).toBeGreaterThan(0);
      await res.arrayBuffer();
    } finally {
      await server.stop();
    }
  });

  it('charges each MemberBundle per identifier it names; one breaking the rules is a non-match, never a 500', async () => {
    const { server, real: members, token } = await prober(60, 3);
    try {
      const [m0, m1, m2] = members;
      const bundle = (body: ReturnType<typeof memberMatchBody>) => ({ name: 'MemberBundle', part: body.parameter });
      // 50 ids with the member's among them and the right demographics (costs 50); an id and a birth date only (costs 1).
      const fifty = memberMatchBody(m1);
      (fifty.parameter[1].resource as any).identifier = Array.from({ length: 50 }, (_, i) => ({ system: 'http://source-payer.example.com/member-id', value: i === 25 ? m1.memberId : `MEM-${900000 + i}` }));
      const birthOnly = memberMatchBody(m2);
      (birthOnly.parameter[0].resource as any).name = undefined;
      let k = await kickoff(`${server.baseUrl}/Group/$bulk-member-match`, { method: 'POST', body: { resourceType: 'Parameters', parameter: [bundle(memberMatchBody(m0)), bundle(fifty), bundle(birthOnly)] }, token });
      expect(k.status).toBe(202);
      const done = await poll(k.location as string, token);
      expect(done.status).toBe(200);
      const groups = (await download(done.body.output.find((o: any) => o.type === 'Group').url, token)).resources;
      const byCode = Object.fromEntries(groups.map((g: any) => [g.characteristic[0].code.coding[0].code, g]));
      expect(byCode.match.member.map((x: any) => x.entity.reference)).toEqual([`Patient/${m0.patientId}`]);
      expect(byCode.nomatch.member).toHaveLength(2);
      // Nothing granted for the two: the partner cannot read them (it can read the member it matched).
      expect((await fhir('GET', `${server.baseUrl}/Patient/${m0.patientId}`, undefined, { authorization: `Bearer ${token}` })).status).toBe(200);
      for (const m of [m1, m2]) expect((await fhir('GET', `${server.baseUrl}/Patient/${m.patientId}`, undefined, { authorization: `Bearer ${token}` })).status).toBe(404);
      // 51 of 60 used: ten more guesses run out at the tenth; the status URL says so with a 422, and the next kick-off is 429.
      k = await kickoff(`${server.baseUrl}/Group/$bulk-member-match`, { method: 'POST', body: { resourceType: 'Parameters', parameter: Array.from({ length: 10 }, (_, i) => invented(i)) }, token });
      expect(k.status).toBe(202);
      const failed = await poll(k.location as string, token);
      expect(failed.status).toBe(422);
      expect(failed.body.resourceType).toBe('OperationOutcome');
      expect(failed.body.issue[0].diagnostics).toMatch(/allowance of failed matches is used up \(9 of 10 members evaluated\)/);
      const again = await kickoff(`${server.baseUrl}/Group/$bulk-member-match`, { method: 'POST', body: { resourceType: 'Parameters', parameter: [bundle(memberMatchBody(m1))] }, token });
      expect(again.status).toBe(429);
      expect((await fhir('GET', `${server.baseUrl}/metadata`)).status).toBe(200);
    } finally {
      await server.stop();
    }
  });

  it('counts two requests of one client running at once against one allowance', async () => {
    const { server, real, token } = await prober(50, 10);
    try {
      // 40 guesses each, 80 together, against an allowance of 50: both cannot be answered. Real
      // members among them (each match is written) keep the two requests running side by side.
      const requests = [0, 1].map((r) => ({
        resourceType: 'Parameters',
        parameter: Array.from({ length: 40 }, (_, i) => invented(r * 100 + i)).flatMap((g, i) => (i % 8 === 0 ? [{ name: 'MemberBundle', part: memberMatchBody(real[(r * 5 + i / 8) % real.length]).parameter }, g] : [g])),
      }));
      const kicked = await Promise.all(requests.map((body) => kickoff(`${server.baseUrl}/Group/$bulk-member-match`, { method: 'POST', body, token })));
      expect(kicked.map((k) => k.status)).toEqual([202, 202]);
      const done = await Promise.all(kicked.map((k) => poll(k.location as string, token)));
      const answered = done.filter((d) => d.status === 200).length;
      expect(answered).toBeLessThanOrEqual(1);
      for (const d of done.filter((x) => x.status !== 200)) expect(JSON.stringify(d.body)).toMatch(/allowance of failed matches is used up/);
    } finally {
      await server.stop();
    }
  });
});
