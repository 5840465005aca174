import { RunningServer } from '../../src/main';
import { SyntheticMember } from '../../scripts/synthetic';
import { fhir, startTestServer } from '../helpers/server';
import { memberMatchBody, seedPopulation } from '../helpers/seed';
import { download, exportAll, kickoff, poll } from '../helpers/bulk';
import { getToken, TestClient, writeClientsFile } from '../helpers/clients';

/**
 * The source side's access model, played through HTTP by partners in every state of consent and a
 * back-office service client. What each one should see is derived from the store as the service
 * client sees it, never written down by hand.
 */
type Who = 'none' | 'regular' | 'sensitive' | 'expired' | 'deleted' | 'service';
const PARTNERS: Who[] = ['none', 'regular', 'sensitive', 'expired', 'deleted'];
const isPsy = (r: any) => (r.meta?.security ?? []).some((s: any) => s.code === 'PSY');
const ids = (rs: any[]) => rs.map((r) => `${r.resourceType}/${r.id}`).sort();

describe('source side access model', () => {
  let server: RunningServer;
  let base: string;
  let members: SyntheticMember[];
  let clients: Record<string, TestClient>;
  const tokens = {} as Record<Who, string>;
  let member: SyntheticMember; // the member the partners matched (has a PSY Condition)
  let other: SyntheticMember; // a member nobody matched
  const auth = (who: Who) => ({ authorization: `Bearer ${tokens[who]}` });
  const get = (who: Who, path: string) => fhir('GET', `${base}/${path}`, undefined, auth(who));

  /** Everything of a type that a search returns, following next links. */
  async function searchAll(who: Who, query: string): Promise<any[]> {
    const out: any[] = [];
    for (let url: string | undefined = `${base}/${query}${query.includes('?') ? '&' : '?'}_count=500`; url; ) {
      const res = await fhir('GET', url, undefined, auth(who));
      expect(res.status).toBe(200);
      out.push(...(res.body.entry ?? []).filter((e: any) => e.search?.mode === 'match').map((e: any) => e.resource));
      url = res.body.link?.find((l: any) => l.relation === 'next')?.url;
    }
    return out;
  }

  async function exportAs(who: Who, path: string): Promise<{ status: number; data: Record<string, any[]> }> {
    const k = await kickoff(`${base}/${path}`, { token: tokens[who] });
    if (k.status !== 202) return { status: k.status, data: {} };
    const done = await poll(k.location as string, tokens[who]);
    expect(done.status).toBe(200);
    const data: Record<string, any[]> = {};
    for (const o of done.body.output) data[o.type] = [...(data[o.type] ?? []), ...(await download(o.url, tokens[who])).resources];
    return { status: 200, data };
  }

  beforeAll(async () => {
    const written = await writeClientsFile([
      ...PARTNERS.map((p) => ({ clientId: `partner-${p}`, scopes: 'system/*.read' })),
      { clientId: 'back-office', scopes: 'system/*.read system/*.write', role: 'service' as const },
    ]);
    clients = written.clients;
    server = await startTestServer({ authRequired: true, clientsFile: written.file });
    base = server.baseUrl;
    members = await seedPopulation(server, 4);
    member = members[0];
    other = members[3];
    for (const p of PARTNERS) tokens[p] = await getToken(server.tokenUrl, clients[`partner-${p}`]);
    tokens.service = await getToken(server.tokenUrl, clients['back-office'], 'system/*.read system/*.write');
    const match = (who: Who, opts: Parameters<typeof memberMatchBody>[1]) => fhir('POST', `${base}/Patient/$member-match`, memberMatchBody(member, opts), auth(who));
    expect((await match('regular', { policy: 'regular' })).status).toBe(200);
    expect((await match('sensitive', { policy: 'sensitive' })).status).toBe(200);
    expect((await match('deleted', { policy: 'sensitive' })).status).toBe(200);
    const ending = new Date(Date.now() + 1500).toISOString();
    expect((await match('expired', { policy: 'sensitive', consent: { provision: { period: { start: '2020-01-01', end: ending } } } })).status).toBe(200);
    // The deleted partner's consent is deleted by the back office; the expired one's period runs out.
    const consents = await searchAll('service', `Consent?patient=Patient/${member.patientId}&_tag=urn:p2p-fhir-server:client|partner-deleted`);
    expect(consents).toHaveLength(1);
    expect((await fhir('DELETE', `${base}/Consent/${consents[0].id}`, undefined, auth('service'))).status).toBeLessThan(300);
    await new Promise((r) => setTimeout(r, Math.max(0, Date.parse(ending) - Date.now() + 100)));
  });
  afterAll(async () => server.stop());

  it('read, vread and history: the matched member only, and a sensitive record only under #sensitive', async () => {
    const conditions = await searchAll('service', `Condition?patient=Patient/${member.patientId}`);
    const psy = conditions.find(isPsy);
    const plain = conditions.find((c) => !isPsy(c));
    expect(psy && plain).toBeTruthy();
    const sees = { none: [], regular: ['member', 'plain'], sensitive: ['member', 'plain', 'psy'], expired: [], deleted: [], service: ['member', 'plain', 'psy', 'other'] } as Record<Who, string[]>;
    const paths = {
      member: [`Patient/${member.patientId}`, `Patient/${member.patientId}/_history/1`, `Patient/${member.patientId}/_history`],
      plain: [`Condition/${plain.id}`, `Condition/${plain.id}/_history`],
      psy: [`Condition/${psy.id}`, `Condition/${psy.id}/_history/1`],
      other: [`Patient/${other.patientId}`, `Patient/${other.patientId}/_history`],
    } as Record<string, string[]>;
    const got: Record<string, number>[] = [];
    const want: Record<string, number>[] = [];
    for (const who of [...PARTNERS, 'service'] as Who[]) {
      for (const [what, list] of Object.entries(paths)) {
        for (const path of list) {
          const res = await get(who, path);
          got.push({ [`${who} ${path}`]: res.status });
          want.push({ [`${who} ${path}`]: sees[who].includes(what) ? 200 : 404 });
          if (res.status === 404) expect(res.body.resourceType).toBe('OperationOutcome');
          if (path.endsWith('/_history')) continue;
          // A conditional read tells no more: 304 only for what the client may read, else 404.
          const conditional = await fhir('GET', `${base}/${path}`, undefined, { ...auth(who), 'if-none-match': '*' });
          got.push({ [`${who} ${path} If-None-Match`]: conditional.status });
          want.push({ [`${who} ${path} If-None-Match`]: sees[who].includes(what) ? 304 : 404 });
        }
      }
    }
    expect(got).toEqual(want);
  });

  it('search and type history: exactly what the consent allows, with totals that reveal nothing more', async () => {
    const everything = await searchAll('service', 'Condition');
    const mine = everything.filter((c) => c.subject.reference === `Patient/${member.patientId}`);
    const expected: Record<Who, any[]> = {
      none: [],
      regular: mine.filter((c) => !isPsy(c)),
      sensitive: mine,
      expired: [],
      deleted: [],
      service: everything,
    };
    for (const who of [...PARTNERS, 'service'] as Who[]) {
      expect({ who, ids: ids(await searchAll(who, 'Condition')) }).toEqual({ who, ids: ids(expected[who]) });
      const count = await get(who, 'Condition?_summary=count');
      expect({ who, total: count.body.total }).toEqual({ who, total: expected[who].length });
      const patients = await searchAll(who, `Patient?_id=${member.patientId},${other.patientId}`);
      expect({ who, ids: ids(patients) }).toEqual({ who, ids: ids(who === 'service' ? [{ resourceType: 'Patient', id: member.patientId }, { resourceType: 'Patient', id: other.patientId }] : expected[who].length ? [{ resourceType: 'Patient', id: member.patientId }] : []) });
      const history = await get(who, 'Condition/_history?_count=500');
      const historyIds = [...new Set((history.body.entry ?? []).map((e: any) => `Condition/${e.resource?.id}`))].sort();
      expect({ who, history: historyIds }).toEqual({ who, history: ids(expected[who]) });
    }
  });

  it('a partner sees only its own Consent for the member, and no Task, Binary or other member data', async () => {
    const consents = await searchAll('regular', 'Consent');
    expect(consents).toHaveLength(1);
    expect(consents[0].meta.tag).toEqual([{ system: 'urn:p2p-fhir-server:client', code: 'partner-regular' }]);
    expect(await searchAll('regular', `Coverage?beneficiary=Patient/${other.patientId}`)).toEqual([]);
    expect(await searchAll('sensitive', 'Task')).toEqual([]);
    // Directory data stays readable: it is not member data.
    expect((await searchAll('none', 'Organization')).length).toBeGreaterThan(0);
  });

  it('exports: Patient, system and Group level cover the granted member only, a service client gets all', async () => {
    const everything = await searchAll('service', 'Condition');
    const mine = everything.filter((c) => c.subject.reference === `Patient/${member.patientId}`);
    const allPatients = await searchAll('service', 'Patient');
    const group = { resourceType: 'Group', id: 'cohort', type: 'person', actual: true, member: [member, other].map((m) => ({ entity: { reference: `Patient/${m.patientId}` } })) };
    expect((await fhir('PUT', `${base}/Group/cohort`, group, auth('service'))).status).toBe(201);
    const expectConditions: Record<Who, any[]> = { none: [], regular: mine.filter((c) => !isPsy(c)), sensitive: mine, expired: [], deleted: [], service: everything };
    for (const who of [...PARTNERS, 'service'] as Who[]) {
      for (const path of ['Patient/$export?_type=Patient,Condition', '$export?_type=Patient,Condition']) {
        const { status, data } = await exportAs(who, path);
        expect({ who, path, status }).toEqual({ who, path, status: 200 });
        expect({ who, path, conditions: ids(data.Condition ?? []) }).toEqual({ who, path, conditions: ids(expectConditions[who]) });
        const patients = who === 'service' ? allPatients : expectConditions[who].length ? [{ resourceType: 'Patient', id: member.patientId }] : [];
        expect({ who, path, patients: ids(data.Patient ?? []) }).toEqual({ who, path, patients: ids(patients) });
      }
      const groupExport = await exportAs(who, 'Group/cohort/$export?_type=Patient');
      const groupPatients = who === 'service' ? [member, other] : expectConditions[who].length ? [member] : [];
      expect({ who, status: groupExport.status, patients: ids(groupExport.data.Patient ?? []) }).toEqual({
        who,
        status: groupPatients.length || who === 'service' ? 200 : 404,
        patients: ids(groupPatients.map((m) => ({ resourceType: 'Patient', id: m.patientId }))),
      });
      const single = await kickoff(`${base}/Patient/${other.patientId}/$export`, { token: tokens[who] });
      expect({ who, status: single.status }).toEqual({ who, status: who === 'service' ? 202 : 404 });
    }
  });

  it('Patient/{id}/$everything: the same access model as export, page by page', async () => {
    const sentBy = (r: any) => r.resourceType === 'Provenance' && String(r.id).startsWith('transmitter-');
    /** Every page of $everything, following next links; match and include entries apart. */
    const everythingOf = async (who: Who, patientId: string, count = 7) => {
      const match: any[] = [];
      const include = new Map<string, any>();
      let pages = 0;
      for (let url: string | undefined = `${base}/Patient/${patientId}/$everything?_count=${count}`; url; pages++) {
        const res = await fhir('GET', url, undefined, auth(who));
        if (res.status !== 200) return { status: res.status, match, include: [...include.values()], pages };
        for (const e of res.body.entry ?? []) (e.search.mode === 'match' ? match.push(e.resource) : include.set(`${e.resource.resourceType}/${e.resource.id}`, e.resource));
        url = res.body.link?.find((l: any) => l.relation === 'next')?.url;
      }
      return { status: 200, match, include: [...include.values()], pages };
    };
    for (const who of [...PARTNERS, 'service'] as Who[]) {
      const exported = await exportAs(who, `Patient/$export`);
      const got = await everythingOf(who, member.patientId);
      const granted = who === 'service' || (exported.data.Patient ?? []).length > 0;
      expect({ who, status: got.status }).toEqual({ who, status: granted ? 200 : 404 });
      if (!granted) continue;
      // The compartment, exactly as a member-level export gives it; nothing twice across pages.
      const compartment = Object.entries(exported.data)
        .filter(([type]) => !['Practitioner', 'PractitionerRole', 'Organization', 'Location', 'Medication'].includes(type))
        .flatMap(([, rs]) => rs)
        .filter((r) => who !== 'service' || JSON.stringify(r).includes(`Patient/${member.patientId}"`) || r.id === member.patientId)
        // Each answer's own transmitter Provenance (§pdex-127) names what that answer sent: not the member's record.
        .filter((r) => !sentBy(r));
      expect({ who, match: ids(got.match) }).toEqual({ who, match: ids(compartment) });
      expect(new Set(ids(got.match)).size).toBe(got.match.length);
      expect(got.match.filter((r) => r.resourceType === 'Patient').map((r) => r.id)).toEqual([member.patientId]);
      expect(got.pages).toBeGreaterThan(1);
      // Every directory resource a matched one references is included, and nothing the partner may not see.
      const refs = new Set<string>();
      JSON.stringify(got.match, (k, v) => (k === 'reference' && /^(Practitioner|PractitionerRole|Organization|Location|Medication)\//.test(v) ? refs.add(v) && v : v));
      // And each page's transmitter Provenance, with this payer's Organization that it names.
      refs.add('Organization/this-payer');
      expect(got.include.filter(sentBy).length).toBeGreaterThan(0); // one per page that sends anything (provenance-device.test.ts checks each)
      expect(ids(got.include.filter((r) => !sentBy(r)))).toEqual([...refs].sort());
    }
    // Another member is as unknown to a partner as a member that does not exist.
    expect((await everythingOf('regular', other.patientId)).status).toBe(404);
    expect((await everythingOf('service', other.patientId)).status).toBe(200);
    expect((await fhir('GET', `${base}/Patient/${member.patientId}/$everything?_count=0`, undefined, auth('service'))).status).toBe(400);
    expect((await fhir('GET', `${base}/Patient/${member.patientId}/$everything?_cursor=Nope:1`, undefined, auth('service'))).status).toBe(400);
  });

  it('file downloads: the token must still read the type, and the consent must still be in force', async () => {
    const { manifest } = await exportAll(`${base}/Patient/${member.patientId}/$export?_type=Patient,Condition`, { token: tokens.regular });
    const url = (type: string) => manifest.output.find((o: any) => o.type === type).url;
    expect((await download(url('Condition'), tokens.regular)).status).toBe(200);
    // The same client with a token that may read Patients only.
    const narrow = await getToken(server.tokenUrl, clients['partner-regular'], 'system/Patient.read');
    expect((await download(url('Condition'), narrow)).status).toBe(403);
    expect((await download(url('Patient'), narrow)).status).toBe(200);
  });

  it('no client can forge a grant: partners cannot write, and the server-only tags are refused on REST', async () => {
    const forged = { resourceType: 'Consent', status: 'active', meta: { tag: [{ system: 'urn:p2p-fhir-server:client', code: 'partner-none' }] }, scope: { text: 'x' }, category: [{ text: 'x' }], patient: { reference: `Patient/${other.patientId}` }, policy: [{ uri: 'hrex-consent.html#sensitive' }] };
    expect((await fhir('POST', `${base}/Consent`, forged, auth('none'))).status).toBe(403);
    const byService = await fhir('POST', `${base}/Consent`, forged, auth('service'));
    expect(byService.status).toBe(400);
    expect(byService.body.issue[0].diagnostics).toMatch(/urn:p2p-fhir-server:/);
    const withIdentifier = { resourceType: 'Patient', identifier: [{ system: 'urn:p2p-fhir-server:anything', value: 'x' }] };
    expect((await fhir('POST', `${base}/Patient`, withIdentifier, auth('service'))).status).toBe(400);
    expect((await fhir('PUT', `${base}/Patient/${other.patientId}`, { ...withIdentifier, id: other.patientId }, auth('service'))).status).toBe(400);
    // Nothing was written by the refused requests, and the partner still sees nothing of the other member.
    expect((await get('service', `Patient/${other.patientId}`)).body.meta.versionId).toBe('1');
    expect((await get('none', `Patient/${other.patientId}`)).status).toBe(404);
    // The server's own markers may be sent back unchanged.
    const [consent] = await searchAll('service', `Consent?_tag=urn:p2p-fhir-server:client|partner-regular`);
    const resent = await fhir('PUT', `${base}/Consent/${consent.id}`, consent, auth('service'));
    expect(resent.status).toBe(200);
    const altered = { ...consent, meta: { tag: [{ system: 'urn:p2p-fhir-server:client', code: 'partner-none' }] } };
    expect((await fhir('PUT', `${base}/Consent/${consent.id}`, altered, auth('service'))).status).toBe(400);
    expect((await get('regular', `Patient/${member.patientId}`)).status).toBe(200);
  });

  it('partners cannot start exchanges, manage grants or delete', async () => {
    expect((await fhir('POST', `${base}/Patient/$sdh.s2s.invoke-export`, { resourceType: 'Parameters' }, auth('regular'))).status).toBe(403);
    expect((await fhir('POST', `${base}/Patient/${member.patientId}/$revoke-access`, undefined, auth('regular'))).status).toBe(403);
    expect((await fhir('GET', `${base}/Patient/${member.patientId}/$access-grants`, undefined, auth('regular'))).status).toBe(403);
    expect((await fhir('DELETE', `${base}/Patient/${member.patientId}`, undefined, auth('regular'))).status).toBe(403);
    const grants = await fhir('GET', `${base}/Patient/${member.patientId}/$access-grants`, undefined, auth('service'));
    const byClient = Object.fromEntries(grants.body.parameter.map((g: any) => [g.part.find((p: any) => p.name === 'client').valueString, g.part.find((p: any) => p.name === 'active').valueBoolean]));
    expect(byClient).toEqual({ 'partner-regular': true, 'partner-sensitive': true, 'partner-expired': false, 'partner-deleted': false });
  });
});

describe('revocation', () => {
  let server: RunningServer;
  let base: string;
  let member: SyntheticMember;
  let partner: string;
  let service: string;

  beforeEach(async () => {
    const written = await writeClientsFile([
      { clientId: 'partner', scopes: 'system/*.read' },
      { clientId: 'back-office', scopes: 'system/*.read system/*.write', secret: 'back-office-secret' },
    ]);
    server = await startTestServer({ authRequired: true, clientsFile: written.file });
    base = server.baseUrl;
    [member] = await seedPopulation(server, 2);
    partner = await getToken(server.tokenUrl, written.clients.partner);
    const basic = Buffer.from('back-office:back-office-secret').toString('base64');
    const res = await fetch(server.tokenUrl, { method: 'POST', headers: { authorization: `Basic ${basic}`, 'content-type': 'application/x-www-form-urlencoded' }, body: 'grant_type=client_credentials&scope=system/*.read%20system/*.write' });
    service = ((await res.json()) as any).access_token;
    const match = await fhir('POST', `${base}/Patient/$member-match`, memberMatchBody(member), { authorization: `Bearer ${partner}` });
    expect(match.status).toBe(200);
  });
  afterEach(async () => server.stop());

  it('deleting the Consent ends access at once, and an export made before fails its next download with 403', async () => {
    const { manifest } = await exportAll(`${base}/Patient/${member.patientId}/$export?_type=Patient,Condition`, { token: partner });
    expect((await download(manifest.output[0].url, partner)).status).toBe(200);
    const consents = await fhir('GET', `${base}/Consent?patient=Patient/${member.patientId}`, undefined, { authorization: `Bearer ${service}` });
    expect(consents.body.total).toBe(1);
    expect((await fhir('DELETE', `${base}/Consent/${consents.body.entry[0].resource.id}`, undefined, { authorization: `Bearer ${service}` })).status).toBeLessThan(300);
    expect((await fhir('GET', `${base}/Patient/${member.patientId}`, undefined, { authorization: `Bearer ${partner}` })).status).toBe(404);
    const after = await download(manifest.output[0].url, partner);
    expect(after.status).toBe(403);
  });

  it('the back office revokes a grant through $revoke-access', async () => {
    expect((await fhir('GET', `${base}/Patient/${member.patientId}`, undefined, { authorization: `Bearer ${partner}` })).status).toBe(200);
    const revoked = await fhir('POST', `${base}/Patient/${member.patientId}/$revoke-access`, { resourceType: 'Parameters', parameter: [{ name: 'client', valueString: 'partner' }] }, { authorization: `Bearer ${service}` });
    expect(revoked.status).toBe(200);
    expect(revoked.body.issue[0].diagnostics).toBe('1 grant(s) revoked');
    expect((await fhir('GET', `${base}/Patient/${member.patientId}`, undefined, { authorization: `Bearer ${partner}` })).status).toBe(404);
    const k = await kickoff(`${base}/Patient/$export?_type=Patient`, { token: partner });
    const done = await poll(k.location as string, partner);
    expect(done.body.output).toEqual([]);
  });
});
