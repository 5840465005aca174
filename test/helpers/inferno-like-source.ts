import http from 'node:http';
import type { AddressInfo } from 'node:net';

/**
 * A source payer shaped like Inferno's PDex mock and the servers it imitates: $member-match answers
 * MemberIdentifier only (type MB, value 99999), the member is found with `Patient?identifier=`,
 * export status is polled at `[base]/$export-poll-status?_jobId=…` with `Retry-After` as an HTTP
 * date (and one 202 carrying a partial manifest), files are served at `[base]/Binary/{id}` and
 * need the token, and one file answers 307 to a storage host on another origin.
 */
export interface InfernoLikeSource {
  base: string;
  origin: string;
  /** The storage host one file is redirected to (another origin). */
  storage: { origin: string; requests: { path: string; authorization?: string }[] };
  /** Every request to the source, `METHOD path?query`, with whether it carried our token. */
  requests: { line: string; bearer: boolean }[];
  /** Where the 307'd file is sent: the storage host by default. */
  redirectTo?: (hop: number) => string;
  /**
   * Kick-off routes like Inferno's PDex *client* mock (davinci-pdex-test-kit, pdex_payer_client
   * mock_server.rb): only `GET [base]/Patient/$export`, its query ignored (the mock proxies a fixed
   * `Group/pdex-Group/$export`); `Patient/{id}/$export` and `POST Patient/$export` are 404.
   */
  clientMock?: boolean;
  /** The export also holds another person (a Patient and a Condition of `pat999`), as an export that cannot be limited to the member may. */
  others?: boolean;
  close(): Promise<void>;
}

export const INFERNO_MEMBER = { sourceId: 'pat015', identifierValue: '99999' };

const patient = { resourceType: 'Patient', id: 'pat015', identifier: [{ type: { coding: [{ system: 'http://terminology.hl7.org/CodeSystem/v2-0203', code: 'MB' }] }, value: '99999' }], name: [{ family: 'Inferno', given: ['Ina'] }], birthDate: '1987-02-20', gender: 'female' };
const conditions = [1, 2, 3].map((i) => ({ resourceType: 'Condition', id: `cond-${i}`, subject: { reference: 'Patient/pat015' }, code: { text: `condition ${i}` }, recorder: { reference: 'Practitioner/pr-1' } }));
const practitioner = { resourceType: 'Practitioner', id: 'pr-1', name: [{ family: 'Welby' }] };
const eob = {
  resourceType: 'ExplanationOfBenefit',
  id: 'eob-1',
  contained: [{ resourceType: 'Coverage', id: 'cov', status: 'active', beneficiary: { reference: 'Patient/pat015' }, payor: [{ reference: 'Organization/org-1' }] }],
  status: 'active',
  type: { coding: [{ system: 'http://terminology.hl7.org/CodeSystem/claim-type', code: 'professional' }] },
  use: 'claim',
  patient: { reference: 'Patient/pat015' },
  created: '2024-01-01',
  insurer: { reference: 'Organization/org-1' },
  provider: { reference: 'Practitioner/pr-1' },
  outcome: 'complete',
  insurance: [{ focal: true, coverage: { reference: '#cov' } }],
};
const organization = { resourceType: 'Organization', id: 'org-1', name: 'Old Plan' };
const ndjson = (rs: unknown[]) => rs.map((r) => `${JSON.stringify(r)}\n`).join('');

const stranger = { resourceType: 'Patient', id: 'pat999', name: [{ family: 'Stranger' }], birthDate: '1950-05-05' };
const strangerCondition = { resourceType: 'Condition', id: 'cond-999', subject: { reference: 'Patient/pat999' }, code: { text: 'not the member' } };
const filesOf = (others: boolean): Record<string, { type: string; body: string }> => ({
  f1: { type: 'Patient', body: ndjson(others ? [patient, stranger] : [patient]) },
  f2: { type: 'Condition', body: ndjson(conditions) },
  f3: { type: 'ExplanationOfBenefit', body: ndjson([eob]) },
  f4: { type: 'Practitioner', body: ndjson([practitioner]) },
  f5: { type: 'Organization', body: ndjson([organization]) },
  ...(others ? { f6: { type: 'Condition', body: ndjson([strangerCondition]) } } : {}),
});

async function listen(handler: http.RequestListener): Promise<{ server: http.Server; origin: string }> {
  const server = http.createServer(handler);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return { server, origin: `http://127.0.0.1:${(server.address() as AddressInfo).port}` };
}

export async function startInfernoLikeSource(): Promise<InfernoLikeSource> {
  let polls = 0;
  const storageRequests: InfernoLikeSource['storage']['requests'] = [];
  const storage = await listen((req, res) => {
    storageRequests.push({ path: req.url ?? '', authorization: req.headers.authorization });
    res.writeHead(200, { 'content-type': 'application/fhir+ndjson' });
    res.end(filesOf(false).f2.body);
  });
  const source = await listen(async (req, res) => {
    for await (const _ of req) void _;
    const url = new URL(req.url ?? '/', 'http://x');
    const bearer = req.headers.authorization === 'Bearer inferno-token';
    fake.requests.push({ line: `${req.method} ${url.pathname}${url.search}`, bearer });
    const json = (status: number, body: unknown, headers: Record<string, string> = {}) => {
      res.writeHead(status, { 'content-type': 'application/fhir+json', ...headers });
      res.end(JSON.stringify(body));
    };
    const p = url.pathname;
    if (p === '/r4/.well-known/smart-configuration') return json(200, { token_endpoint: `${source.origin}/r4/token`, grant_types_supported: ['client_credentials'] });
    if (p === '/r4/token') return json(200, { access_token: 'inferno-token', token_type: 'bearer', expires_in: 300, scope: 'system/*.read' });
    if (!bearer) return json(401, { resourceType: 'OperationOutcome', issue: [{ severity: 'error', code: 'login', diagnostics: 'token required' }] });
    if (p === '/r4/Patient/$member-match') {
      return json(200, { resourceType: 'Parameters', parameter: [{ name: 'MemberIdentifier', valueIdentifier: { type: { coding: [{ system: 'http://terminology.hl7.org/CodeSystem/v2-0203', code: 'MB' }] }, value: '99999' } }] });
    }
    if (p === '/r4/Patient' && req.method === 'GET') {
      // Like the mock: the identifier's value alone finds the member.
      const found = url.searchParams.get('identifier') === '99999' ? [{ fullUrl: `${fake.base}/Patient/pat015`, resource: patient, search: { mode: 'match' } }] : [];
      return json(200, { resourceType: 'Bundle', type: 'searchset', total: found.length, entry: found });
    }
    const FILES = filesOf(!!fake.others);
    if (fake.clientMock ? p === '/r4/Patient/$export' && req.method === 'GET' : p === '/r4/Patient/pat015/$export') {
      polls = 0;
      res.writeHead(202, { 'content-location': `${fake.base}/$export-poll-status?_jobId=job-1` });
      return res.end();
    }
    if (p === '/r4/$export-poll-status' && url.searchParams.get('_jobId') === 'job-1') {
      polls++;
      const output = Object.entries(FILES).map(([id, f]) => ({ type: f.type, url: `${fake.base}/Binary/${id}` }));
      const manifest = { transactionTime: new Date().toISOString(), request: `${fake.base}/Patient/pat015/$export`, requiresAccessToken: true, error: [] };
      if (polls === 1) return json(202, {}, { 'retry-after': new Date(Date.now() + 1000).toUTCString(), 'x-progress': 'in progress' });
      // A partial manifest on a 202: what is ready so far.
      if (polls === 2) return json(202, { ...manifest, output: output.slice(0, 1) }, { 'retry-after': new Date(Date.now() + 1000).toUTCString() });
      return json(200, { ...manifest, output }, { 'content-type': 'application/json' });
    }
    if (req.method === 'DELETE' && p === '/r4/$export-poll-status') return json(202, {});
    const m = p.match(/^\/r4\/Binary\/(\w+)$/);
    if (m && m[1] === 'f2') {
      res.writeHead(307, { location: fake.redirectTo?.(0) ?? `${storage.origin}/bucket/f2?sig=abc` });
      return res.end();
    }
    const hop = p.match(/^\/r4\/hop\/(\d+)$/);
    if (hop) {
      res.writeHead(302, { location: fake.redirectTo?.(Number(hop[1])) ?? '/' });
      return res.end();
    }
    if (m && FILES[m[1]]) {
      res.writeHead(200, { 'content-type': 'application/fhir+ndjson' });
      return res.end(FILES[m[1]].body);
    }
    json(404, { resourceType: 'OperationOutcome', issue: [{ severity: 'error', code: 'not-found', diagnostics: p }] });
  });
  const fake: InfernoLikeSource = {
    origin: source.origin,
    base: `${source.origin}/r4`,
    storage: { origin: storage.origin, requests: storageRequests },
    requests: [],
    close: async () => {
      for (const s of [source.server, storage.server]) {
        await new Promise<void>((resolve) => {
          s.close(() => resolve());
          s.closeAllConnections();
        });
      }
    },
  };
  return fake;
}
