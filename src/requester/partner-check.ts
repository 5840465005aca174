import { randomUUID } from 'node:crypto';
import type { CapabilityStatement, Parameters } from 'fhir/r4';
import { parseRetryAfter, RemoteError, RemotePayerClient } from './remote-payer-client';
import { findMember } from './member-lookup';
import { SourcePayer } from './source-payers';
import type { Logger } from '../logger';

export type CheckStatus = 'pass' | 'fail' | 'skip';
export interface CheckResult {
  check: string;
  status: CheckStatus;
  detail: string;
}

export interface PartnerCheckOptions {
  /** A $member-match body for a test member the source holds (the operator's); without it, the checks that need a member are skipped. */
  member?: Parameters;
  /** How long to wait for the export. */
  exportTimeoutMs: number;
  requestTimeoutMs: number;
  logger: Logger;
  /** Bounds on each wait between status polls (the source's Retry-After, within these). */
  minPollMs?: number;
  maxPollMs?: number;
}

class CheckFailed extends Error {}
const fail = (why: string) => new CheckFailed(why);
const MANIFEST_KEYS = ['transactionTime', 'request', 'requiresAccessToken', 'output', 'error'];
const NDJSON_TYPES = /^application\/(fhir\+)?ndjson/;

/** An invented member no payer holds: the source must answer 422. */
function inventedMember(): Parameters {
  const tag = randomUUID();
  return {
    resourceType: 'Parameters',
    parameter: [
      { name: 'MemberPatient', resource: { resourceType: 'Patient', name: [{ family: `Nobody-${tag.slice(0, 8)}`, given: ['Invented'] }], birthDate: '1901-01-01', gender: 'unknown' } },
      { name: 'CoverageToMatch', resource: { resourceType: 'Coverage', status: 'active', identifier: [{ system: 'urn:uuid:partner-check', value: tag }], beneficiary: { reference: 'Patient/invented' }, payor: [{ display: 'none' }] } as never },
      { name: 'Consent', resource: { resourceType: 'Consent', status: 'active', scope: { coding: [{ system: 'http://terminology.hl7.org/CodeSystem/consentscope', code: 'patient-privacy' }] }, category: [{ coding: [{ system: 'http://loinc.org', code: '64292-6' }] }], policy: [{ uri: 'http://hl7.org/fhir/us/davinci-hrex/StructureDefinition-hrex-consent.html#regular' }] } as never },
    ],
  };
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/**
 * What a payer runs before go-live against a registered source payer: the checks the requesting side
 * depends on, in the order an exchange needs them, each pass, fail (with why) or skip (with why).
 * It sends one $member-match for the operator's test member and one for an invented member, starts
 * one small export (`_type=Patient`) and deletes it.
 */
export async function checkPartner(payer: SourcePayer, opts: PartnerCheckOptions): Promise<CheckResult[]> {
  const results: CheckResult[] = [];
  const client = new RemotePayerClient(payer, { timeoutMs: opts.requestTimeoutMs, retries: 0, baseRetryDelayMs: 500, maxRetryDelayMs: 5000, logger: opts.logger });
  const base = payer.fhirBaseUrl;
  const run = async <T>(check: string, fn: () => Promise<[T, string]>, needs?: { ok: boolean; why: string }): Promise<T | undefined> => {
    if (needs && !needs.ok) {
      results.push({ check, status: 'skip', detail: needs.why });
      return undefined;
    }
    try {
      const [value, detail] = await fn();
      results.push({ check, status: 'pass', detail });
      return value;
    } catch (err) {
      const why = err instanceof CheckFailed || err instanceof RemoteError ? err.message : `unexpected error: ${(err as Error).message}`;
      results.push({ check, status: 'fail', detail: why });
      return undefined;
    }
  };

  await run('SMART discovery', async () => {
    const res = await client.request<Record<string, unknown>>({ method: 'GET', url: `${base}/.well-known/smart-configuration`, headers: { accept: 'application/json' } }, 'smart-configuration', { withToken: false });
    const cfg = res.data ?? {};
    if (typeof cfg.token_endpoint !== 'string') throw fail('no token_endpoint');
    const missing = ['grant_types_supported', 'token_endpoint_auth_methods_supported', 'token_endpoint_auth_signing_alg_values_supported', 'scopes_supported', 'capabilities'].filter((k) => !Array.isArray(cfg[k]));
    if (!(cfg.grant_types_supported as string[] | undefined)?.includes('client_credentials') && !missing.includes('grant_types_supported')) throw fail('grant_types_supported lacks client_credentials');
    if (payer.clientAuthenticationMode === 'PRIVATE_KEY_JWT' && Array.isArray(cfg.token_endpoint_auth_methods_supported) && !cfg.token_endpoint_auth_methods_supported.includes('private_key_jwt')) {
      throw fail('token_endpoint_auth_methods_supported lacks private_key_jwt, which our registration uses');
    }
    return [true, `token_endpoint ${cfg.token_endpoint}` + (missing.length ? `; missing (optional here): ${missing.join(', ')}` : '')];
  });

  const token = await run('Access token', async () => {
    await client.tokens.token();
    return [true, `issued to ${payer.clientId} for "${payer.scopes}"`];
  });
  const authed = { ok: !!token, why: 'no access token' };

  await run(
    'CapabilityStatement',
    async () => {
      const res = await client.request<CapabilityStatement>({ method: 'GET', url: `${base}/metadata`, headers: { accept: 'application/fhir+json' } }, 'metadata');
      const cs = res.data;
      if (cs?.resourceType !== 'CapabilityStatement') throw fail('metadata did not answer a CapabilityStatement');
      if (cs.fhirVersion !== '4.0.1') throw fail(`fhirVersion is ${cs.fhirVersion}, not 4.0.1`);
      const patientOps = cs.rest?.[0]?.resource?.find((r) => r.type === 'Patient')?.operation ?? [];
      const bad = patientOps.filter((o) => typeof o.definition !== 'string').map((o) => o.name);
      if (bad.length) throw fail(`operation definition is not a canonical string for: ${bad.join(', ')}`);
      const missing = ['member-match', 'export'].filter((n) => !patientOps.some((o) => o.name === n));
      if (missing.length) throw fail(`Patient does not declare: ${missing.map((n) => `$${n}`).join(', ')}`);
      const bulk = (cs.instantiates ?? []).includes('http://hl7.org/fhir/uv/bulkdata/CapabilityStatement/bulk-data');
      return [true, `Patient declares $member-match and $export${bulk ? '; instantiates bulk-data' : '; does not instantiate bulk-data (a warning in Inferno)'}`];
    },
    authed,
  );

  const memberId = await run<string>(
    '$member-match: test member',
    async () => {
      const answer = await client.memberMatch(opts.member as Parameters);
      if (answer.memberId) return [answer.memberId, `matched Patient/${answer.memberId}`];
      const id = await findMember(client, answer.identifier as never);
      return [id, `MemberIdentifier only; Patient?identifier found Patient/${id}`];
    },
    !token ? authed : { ok: !!opts.member, why: 'no --member file given' },
  );

  await run(
    '$member-match: invented member',
    async () => {
      try {
        await client.memberMatch(inventedMember());
      } catch (err) {
        if (err instanceof RemoteError && err.status === 422) return [true, '422, as it should'];
        throw err instanceof RemoteError ? fail(`expected 422, got ${err.status ?? 'no answer'}: ${err.message}`) : err;
      }
      throw fail('an invented member was matched');
    },
    authed,
  );

  const needMember = !token ? authed : { ok: !!memberId, why: opts.member ? 'the test member was not matched' : 'needs --member' };
  const statusUrl = await run<string>(
    'Export kick-off',
    async () => {
      const { statusUrl: location, route } = await client.kickoff(memberId as string, { _type: ['Patient'] });
      return [location, `202 (${route}), status at ${location}`];
    },
    needMember,
  );

  const manifest = await run<Record<string, unknown>>(
    'Export status polling',
    async () => {
      const deadline = Date.now() + opts.exportTimeoutMs;
      const notes: string[] = [];
      for (let polls = 1; ; polls++) {
        const res = await client.request<Record<string, unknown>>({ method: 'GET', url: statusUrl as string, headers: { accept: 'application/json' } }, 'export status');
        if (res.status === 200) return [res.data, `ready after ${polls} poll(s)` + (notes.length ? `; ${[...new Set(notes)].join('; ')}` : '')];
        if (res.status !== 202) throw fail(`status answered ${res.status}`);
        const header = res.headers['retry-after'] as string | undefined;
        if (!header) throw fail('a 202 without Retry-After');
        const waitMs = parseRetryAfter(header);
        if (waitMs === undefined) throw fail(`Retry-After '${header}' is neither seconds nor an HTTP date`);
        if (!/^\d+$/.test(header.trim())) notes.push(`Retry-After '${header}' is not delta-seconds (Inferno reads it as 0)`);
        if (Date.now() > deadline) throw fail(`not ready within ${Math.round(opts.exportTimeoutMs / 1000)} s`);
        await sleep(Math.min(opts.maxPollMs ?? 30_000, Math.max(opts.minPollMs ?? 1000, waitMs)));
      }
    },
    { ok: !!statusUrl, why: 'no export started' },
  );

  const checked = await run<{ first?: { type: string; url: string; token: boolean } }>(
    'Manifest',
    async () => {
      const m = manifest as Record<string, unknown>;
      const missing = MANIFEST_KEYS.filter((k) => !(k in m));
      if (missing.length) throw fail(`missing ${missing.join(', ')}`);
      if (typeof m.requiresAccessToken !== 'boolean') throw fail('requiresAccessToken is not a boolean');
      if (!Array.isArray(m.output) || !Array.isArray(m.error)) throw fail('output and error must be arrays');
      if (Number.isNaN(Date.parse(String(m.transactionTime)))) throw fail('transactionTime is not an instant');
      const output = m.output as { type?: unknown; url?: unknown }[];
      for (const o of output) {
        if (typeof o.type !== 'string' || typeof o.url !== 'string' || !/^https?:\/\//.test(o.url)) throw fail('an output entry lacks a type or an absolute url');
        if (!client.mayDownload(o.url)) throw fail(`a file is on ${new URL(o.url).origin}, neither the source's origin nor one of its fileOrigins`);
      }
      const first = output[0] as { type: string; url: string } | undefined;
      return [{ first: first && { ...first, token: m.requiresAccessToken as boolean } }, `${output.length} file(s), requiresAccessToken ${m.requiresAccessToken}`];
    },
    { ok: !!manifest, why: 'no manifest' },
  );

  await run(
    'File download',
    async () => {
      const f = checked?.first as { type: string; url: string; token: boolean };
      const res = await client.request<string>({ method: 'GET', url: f.url, responseType: 'text', transformResponse: (x: unknown) => x, maxContentLength: 64 * 1024 * 1024, headers: { accept: 'application/fhir+ndjson' } }, 'download', { files: true, withToken: f.token });
      const type = String(res.headers['content-type'] ?? '');
      if (!NDJSON_TYPES.test(type)) throw fail(`Content-Type is '${type}', not application/fhir+ndjson`);
      const lines = String(res.data).split('\n').filter((l) => l.trim());
      for (const [i, line] of lines.entries()) {
        let r: { resourceType?: unknown };
        try {
          r = JSON.parse(line);
        } catch {
          throw fail(`line ${i + 1} is not JSON`);
        }
        if (r?.resourceType !== f.type) throw fail(`line ${i + 1} is a ${String(r?.resourceType)}, the manifest says ${f.type}`);
      }
      return [true, `${f.type}: ${lines.length} line(s), ${type}`];
    },
    { ok: !!checked?.first, why: checked ? 'the manifest lists no file' : 'no valid manifest' },
  );

  await run(
    'Export DELETE',
    async () => {
      const res = await client.request({ method: 'DELETE', url: statusUrl as string }, 'export delete');
      if (res.status !== 202) throw fail(`DELETE answered ${res.status}, not 202`);
      return [true, '202'];
    },
    { ok: !!statusUrl, why: 'no export started' },
  );
  return results;
}

/** The results as a table for a terminal. */
export function formatResults(results: CheckResult[]): string {
  const width = Math.max(...results.map((r) => r.check.length), 5);
  const lines = results.map((r) => `${r.check.padEnd(width)}  ${r.status.toUpperCase().padEnd(6)}  ${r.detail}`);
  return [`${'check'.padEnd(width)}  result  detail`, ...lines].join('\n');
}
