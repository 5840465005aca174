import http from 'node:http';
import type { AddressInfo } from 'node:net';

/**
 * A source payer on loopback that answers the way a broken or hostile one would. Each route's
 * answer is a function the test sets; by default it behaves: token, match (member `m1`), a 202
 * kick-off, and a manifest of the `files` it holds.
 */
export interface FakeSource {
  origin: string;
  base: string;
  /** Every request, as `METHOD path`. */
  log: string[];
  /** The query of the last export kick-off. */
  exportQuery?: URLSearchParams;
  /** The Authorization headers received, by path. */
  auth: Record<string, string | undefined>;
  /** NDJSON bodies by file name, served at `${base}/files/{name}`. */
  files: Record<string, string>;
  /** The manifest's `output` (urls default to the file of the same name). */
  output: { type: string; name?: string; url?: string; count?: number }[];
  manifest?: (req: http.IncomingMessage) => unknown;
  smartConfiguration?: () => unknown;
  memberMatch?: (res: http.ServerResponse) => void;
  /** Request bodies received, by path. */
  bodies: Record<string, string>;
  /** Operations declared on Group in /metadata (none: /metadata is 404). */
  groupOperations?: string[];
  /** A CapabilityStatement of the test's own served at /metadata (group kick-offs are then served too). */
  capabilityStatement?: unknown;
  file?: (name: string, res: http.ServerResponse) => boolean;
  /** Answers any request itself (the token, a status URL…) when it returns true; asked before every route. */
  raw?: (path: string, req: http.IncomingMessage, res: http.ServerResponse) => boolean;
  close(): Promise<void>;
}

const line = (r: unknown) => `${JSON.stringify(r)}\n`;
export const ndjson = (rs: unknown[]) => rs.map(line).join('');

export async function startFakeSource(): Promise<FakeSource> {
  const server = http.createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const origin = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  const base = `${origin}/fhir`;
  const fake: FakeSource = {
    origin,
    base,
    log: [],
    auth: {},
    bodies: {},
    files: {},
    output: [],
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
  const json = (res: http.ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}) => {
    res.writeHead(status, { 'content-type': 'application/json', ...headers });
    res.end(JSON.stringify(body));
  };
  server.on('request', async (req, res) => {
    let body = '';
    for await (const chunk of req) body += chunk;
    const url = new URL(req.url ?? '/', origin);
    if (body) fake.bodies[url.pathname] = body;
    fake.log.push(`${req.method} ${url.pathname}`);
    fake.auth[url.pathname] = req.headers.authorization;
    const p = url.pathname;
    if (fake.raw?.(p, req, res)) return;
    if (p === '/fhir/.well-known/smart-configuration') return json(res, 200, fake.smartConfiguration?.() ?? { token_endpoint: `${origin}/token` });
    if (p === '/token') return json(res, 200, { access_token: 'fake-token', token_type: 'bearer', expires_in: 300 });
    if (p === '/fhir/Patient/$member-match') {
      if (fake.memberMatch) return fake.memberMatch(res);
      return json(res, 200, { resourceType: 'Parameters', parameter: [{ name: 'MemberId', valueReference: { reference: 'Patient/m1' } }] });
    }
    if (p === '/fhir/metadata' && fake.capabilityStatement) return json(res, 200, fake.capabilityStatement);
    if (p === '/fhir/metadata' && fake.groupOperations) {
      return json(res, 200, { resourceType: 'CapabilityStatement', status: 'active', kind: 'instance', fhirVersion: '4.0.1', format: ['json'], rest: [{ mode: 'server', resource: [{ type: 'Group', operation: fake.groupOperations.map((name) => ({ name, definition: `${base}/OperationDefinition/${name}` })) }] }] });
    }
    // Asynchronous kick-offs answer a status URL naming what was asked: ?of=member-match, ?of=Group/{id}, ?of=Patient/{id}.
    const started = p === '/fhir/Group/$bulk-member-match' ? 'member-match' : p.match(/^\/fhir\/((?:Group|Patient)\/[^/]+)\/\$(?:davinci-data-export|export)$/)?.[1];
    if (started && (fake.groupOperations || fake.capabilityStatement || p === '/fhir/Patient/m1/$export')) {
      if (p.endsWith('/$export')) fake.exportQuery = url.searchParams;
      res.writeHead(202, { 'content-location': `${base}/status?of=${encodeURIComponent(started)}` });
      return res.end();
    }
    if (p.startsWith('/fhir/status')) {
      const body = fake.manifest?.(req) ?? {
        transactionTime: new Date().toISOString(),
        request: `${base}/Patient/m1/$export`,
        requiresAccessToken: true,
        output: fake.output.map((o) => ({ type: o.type, url: o.url ?? `${base}/files/${o.name ?? o.type}`, ...(o.count !== undefined ? { count: o.count } : {}) })),
        error: [],
      };
      return json(res, 200, body);
    }
    if (p.startsWith('/fhir/files/')) {
      const name = decodeURIComponent(p.slice('/fhir/files/'.length));
      if (fake.file?.(name, res)) return;
      if (!(name in fake.files)) return json(res, 404, { resourceType: 'OperationOutcome', issue: [] });
      res.writeHead(200, { 'content-type': 'application/fhir+ndjson' });
      return res.end(fake.files[name]);
    }
    json(res, 404, { resourceType: 'OperationOutcome', issue: [{ severity: 'error', code: 'not-found', diagnostics: p }] });
  });
  return fake;
}

const RESULT = 'http://hl7.org/fhir/us/davinci-pdex/CodeSystem/PdexMultiMemberMatchResultCS';
const MATCH_EXT = 'http://hl7.org/fhir/us/davinci-pdex/StructureDefinition/base-ext-match-parameters';
const DISPLAY = { match: 'Matched', nomatch: 'Not Matched', consentconstraint: 'Consent Constraint' } as const;
type Outcome = keyof typeof DISPLAY;

/**
 * The answer of a source that follows PDex 2.2 to the letter, shaped like the IG's example Groups
 * (example-pdex-member-match-group, -no-match-group, -consent-constraint-group): `Group.code` on
 * each; the characteristic on the matched Group only; each submitted MemberPatient contained under
 * the id it was submitted with (less meta), pointed at by matchedMember / nonMatchedMember; the
 * non-matched entries name the contained Patient. `decide` gives each submitted member's outcome
 * (and, matched, the source's Patient id).
 */
export function igResultGroups(requestBody: string, decide: (patient: any, i: number) => { outcome: Outcome; patientId?: string }, matchedGroupId = 'G1'): any[] {
  const submitted = (JSON.parse(requestBody).parameter as any[]).map((p) => p.part.find((x: any) => x.name === 'MemberPatient').resource);
  const payer = { identifier: { system: 'http://hl7.org/fhir/sid/us-npi', value: '9876543210' }, display: 'Old Health Plan' };
  const groups: any[] = [];
  for (const outcome of Object.keys(DISPLAY) as Outcome[]) {
    const picked = submitted.map((p, i) => ({ p, d: decide(p, i) })).filter((x) => x.d.outcome === outcome);
    if (outcome !== 'match' && picked.length === 0) continue;
    groups.push({
      resourceType: 'Group',
      ...(outcome === 'match' ? { id: matchedGroupId } : {}),
      meta: { lastUpdated: '2024-03-20T09:00:00.000Z' },
      contained: picked.map(({ p }) => {
        const { meta: _meta, contained: _contained, ...rest } = p;
        return rest;
      }),
      type: 'person',
      actual: true,
      code: { coding: [{ system: RESULT, code: outcome, display: DISPLAY[outcome] }] },
      ...(outcome === 'match'
        ? { characteristic: [{ code: { coding: [{ system: RESULT, code: 'match', display: 'Matched' }] }, valueReference: { identifier: { system: 'http://hl7.org/fhir/sid/us-npi', value: '0123456789' } }, exclude: false, period: { start: '2024-03-20' } }] }
        : {}),
      name: outcome === 'match' ? 'Matched Members' : undefined,
      managingEntity: payer,
      identifier: [{ system: 'http://hl7.org/fhir/sid/us-npi', value: '0123456789' }],
      member: picked.map(({ p, d }) => ({
        entity: { reference: outcome === 'match' ? `Patient/${d.patientId}` : `#${p.id}`, extension: [{ url: MATCH_EXT, valueReference: { reference: `#${p.id}` } }] },
      })),
    });
  }
  return groups.map((g) => JSON.parse(JSON.stringify(g)));
}

/** The same Groups in PDex 2.1's envelope (pdex-parameters-multi-member-match-bundle-out). */
export function resultParameters(groups: any[]): any {
  const names: Record<string, string> = { match: 'MatchedMembers', nomatch: 'NonMatchedMembers', consentconstraint: 'ConsentConstrainedMembers' };
  return { resourceType: 'Parameters', parameter: groups.map((g) => ({ name: names[g.code.coding[0].code], resource: g })) };
}
