import axios, { AxiosError, AxiosInstance, AxiosRequestConfig, AxiosResponse } from 'axios';
import { patientIdOf } from '../fhir/reference';
import axiosRetry from 'axios-retry';
import type { Readable } from 'node:stream';
import type { CapabilityStatement, Identifier, OperationOutcome, Parameters, ParametersParameter } from 'fhir/r4';
import { SourcePayer } from './source-payers';
import { signClientAssertion } from './client-assertion';
import type { Logger } from '../logger';
import { davinciExportParameters } from '../fhir/pdex';
import { fhirCode, plainText, sourceText } from './source-text';
import { describeSource, NOTHING_KNOWN, SourceCapabilities } from './source-capabilities';

/**
 * A failure talking to the source payer. `transient` ones are worth trying again later. The message
 * may carry the source's own text, made safe for a Task (source-text.ts); `logText` never does (what
 * was asked, the HTTP status, the issue code): it is what log lines carry.
 */
export class RemoteError extends Error {
  readonly logText: string;
  constructor(message: string, readonly status: number | undefined, readonly transient: boolean, readonly outcome?: OperationOutcome, readonly retryAfter?: string, logText?: string) {
    super(message);
    this.name = 'RemoteError';
    this.logText = logText ?? message;
  }
}

/** An answer larger than the limit on a source's JSON answers: not worth asking again. */
export class AnswerTooLarge extends RemoteError {}

/** What a log line may say of an error from a source: never the source's free text. */
export function logTextOf(err: unknown): string {
  if (err instanceof RemoteError) return err.logText;
  const message = (err as Error)?.message;
  return typeof message === 'string' ? plainText(message, 300) : 'unknown error';
}

/** The default limit on one JSON answer from a source (token, discovery, CapabilityStatement, $member-match, status, search), counted after decompression. */
export const DEFAULT_MAX_JSON_BYTES = 4 * 1024 * 1024;

export interface RemoteClientOptions {
  timeoutMs: number;
  retries: number;
  baseRetryDelayMs: number;
  maxRetryDelayMs: number;
  logger: Logger;
  /** Bytes one JSON answer may hold once decompressed (DEFAULT_MAX_JSON_BYTES when unset); files are bounded by the exchange's download limits instead. */
  maxJsonBytes?: number;
}

export interface BulkManifest {
  transactionTime: string;
  request: string;
  requiresAccessToken: boolean;
  output: { type: string; url: string; count?: number }[];
  error?: { type: string; url: string }[];
  /** Bulk Data 2.0: files of Bundles of DELETE requests, for records deleted at the source (type Bundle). */
  deleted?: { type: string; url: string; count?: number }[];
  link?: { relation: string; url: string }[];
}

export type ExportStatus = { done: false; progress?: string; retryAfterMs?: number } | { done: true; manifest: BulkManifest };

/**
 * Retry-After in ms from now: delta seconds or an HTTP date (RFC 9110), and the epoch seconds or
 * milliseconds SMART's reference bulk-data-server sends; undefined when absent or unreadable.
 */
export function parseRetryAfter(value: string | undefined | null, now = Date.now()): number | undefined {
  if (!value) return undefined;
  const v = value.trim();
  if (/^\d+(\.\d+)?$/.test(v)) {
    const n = Number(v);
    if (n >= 1e12) return Math.max(0, n - now); // epoch milliseconds
    if (n >= 1e9) return Math.max(0, n * 1000 - now); // epoch seconds
    return n * 1000;
  }
  const at = Date.parse(v);
  return Number.isNaN(at) ? undefined : Math.max(0, at - now);
}

/**
 * What the exchange needs of a source payer. The exchange is written against this, so it can be
 * tested with a fake; `RemotePayerClient` is the real one.
 */
export interface RemotePayer {
  readonly payer: SourcePayer;
  /** Whether a URL is on the source's own origin (the only one the exchange calls with a token). */
  ownsUrl(url: string): boolean;
  /** Whether a file may be downloaded from this URL: the source's origin, or one of its configured `fileOrigins`. */
  mayDownload(url: string): boolean;
  /** HRex $member-match; `memberId` is absent when the source answers MemberIdentifier only (MemberId is 0..1). */
  memberMatch(params: Parameters): Promise<{ memberId?: string; identifier?: Identifier }>;
  /** The ids of the source's Patients that `Patient?identifier={token}` finds. */
  patientsByIdentifier(token: string): Promise<string[]>;
  /** What the source's CapabilityStatement says it serves, operations found by canonical or name (source-capabilities.ts); nothing known when it has no readable one. */
  capabilities?(): Promise<SourceCapabilities>;
  /** Starts `Group/$bulk-member-match` (asynchronous); answers the status URL. */
  bulkMemberMatch?(memberBundles: ParametersParameter[]): Promise<string>;
  /** Starts PDex's `Group/{id}/$davinci-data-export` (payer-to-payer) of a MatchedMembers Group; answers the status URL. */
  kickoffGroupExport?(groupId: string, params: Record<string, string[]>): Promise<string>;
  /** Starts the member's Bulk Data export by the first route the source serves (KICKOFF_ROUTES); answers the status URL and the route. */
  kickoff(memberId: string, params: Record<string, string[]>): Promise<KickedOff>;
  status(statusUrl: string): Promise<ExportStatus>;
  download(url: string, requiresAccessToken: boolean, signal?: AbortSignal): Promise<Readable>;
  cancel(statusUrl: string): Promise<void>;
}

/**
 * The Bulk Data kick-offs for one member, in the order tried. A 404 or 405 moves to the next; any
 * other failure stops. The last is what Inferno's PDex client mock serves (`GET Patient/$export`,
 * its query ignored): the member is named there too (`patient`), and whatever a source sends that
 * is not the member's is refused by the import's member-only checks, failing the exchange.
 */
export const KICKOFF_ROUTES = ['GET Patient/{id}/$export', 'POST Patient/$export', 'GET Patient/$export'] as const;
export type KickoffRoute = (typeof KICKOFF_ROUTES)[number];

export interface KickedOff {
  statusUrl: string;
  route: KickoffRoute;
}

/** Bulk Data's kick-off parameters in a POST body, each with its type: instants for `_since`/`_until`, the rest strings. */
export function exportParameters(memberId: string, params: Record<string, string[]>): ParametersParameter[] {
  const typed = (name: string, v: string): ParametersParameter => (name === '_since' || name === '_until' ? { name, valueInstant: v } : { name, valueString: v });
  return [{ name: 'patient', valueReference: { reference: `Patient/${memberId}` } }, ...Object.entries(params).flatMap(([k, vs]) => vs.map((v) => typed(k, v)))];
}

/** A request the HTTP layer may retry by itself: idempotent GETs only (status, files, discovery). Others are sent once. */
const retryable = (retries: number) => ({ 'axios-retry': { retries } });

/** How long a source's CapabilityStatement, once read, is taken as what it serves. */
const CAPABILITIES_TTL_MS = 10 * 60_000;

/** Redirects followed on GETs (status and files): at most this many, each to an allowed origin. */
export const MAX_REDIRECTS = 5;
const REDIRECTS = new Set([301, 302, 303, 307, 308]);
const isRedirect = (status: number) => REDIRECTS.has(status);

function originOf(url: string): string | undefined {
  try {
    const u = new URL(url);
    return u.protocol === 'https:' || u.protocol === 'http:' ? u.origin : undefined;
  } catch {
    return undefined;
  }
}

/** Bearer tokens for one source payer: SMART Backend Services or client secret, cached and renewed before expiry. */
export class TokenProvider {
  private cached?: { token: string; renewAt: number };
  private endpoint?: string;

  constructor(private readonly payer: SourcePayer, private readonly http: AxiosInstance, private readonly retries = 0, private readonly maxJsonBytes = DEFAULT_MAX_JSON_BYTES) {
    this.endpoint = payer.tokenEndpoint;
  }

  invalidate(): void {
    this.cached = undefined;
  }

  async token(): Promise<string> {
    if (this.cached && this.cached.renewAt > Date.now()) return this.cached.token;
    const tokenUrl = await this.tokenEndpoint();
    const form = new URLSearchParams({ grant_type: 'client_credentials', scope: this.payer.scopes });
    const headers: Record<string, string> = { 'content-type': 'application/x-www-form-urlencoded', accept: 'application/json' };
    if (this.payer.clientAuthenticationMode === 'CLIENT_SECRET_BASIC') {
      const pair = `${encodeURIComponent(this.payer.clientId)}:${encodeURIComponent(this.payer.clientSecret as string)}`;
      headers.authorization = `Basic ${Buffer.from(pair).toString('base64')}`;
    } else {
      form.set('client_assertion_type', 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer');
      form.set('client_assertion', await signClientAssertion({ clientId: this.payer.clientId, tokenUrl, privateJwk: this.payer.privateKeyJwk as never }));
    }
    let res: AxiosResponse;
    try {
      res = await this.http.post(tokenUrl, form.toString(), { headers });
    } catch (err) {
      throw toRemoteError(err, 'token request', this.maxJsonBytes);
    }
    const { access_token: token, expires_in: expiresIn } = res.data ?? {};
    if (typeof token !== 'string') throw new RemoteError('the token endpoint answered without an access_token', res.status, false);
    const lifetimeMs = (Number(expiresIn) || 300) * 1000;
    this.cached = { token, renewAt: Date.now() + Math.max(lifetimeMs - 60_000, lifetimeMs / 2) };
    return token;
  }

  private async tokenEndpoint(): Promise<string> {
    if (this.endpoint) return this.endpoint;
    let res: AxiosResponse;
    try {
      res = await this.http.get(`${this.payer.fhirBaseUrl}/.well-known/smart-configuration`, { headers: { accept: 'application/json' }, ...retryable(this.retries) });
    } catch (err) {
      throw toRemoteError(err, 'SMART discovery', this.maxJsonBytes);
    }
    const endpoint = res.data?.token_endpoint;
    if (typeof endpoint !== 'string') throw new RemoteError('smart-configuration has no token_endpoint', res.status, false);
    // Our credentials go only to the payer's own origin: a discovery document cannot send them elsewhere.
    let origin: string;
    try {
      origin = new URL(endpoint).origin;
    } catch {
      throw new RemoteError('smart-configuration has a token_endpoint that is not a URL', res.status, false);
    }
    if (origin !== new URL(this.payer.fhirBaseUrl).origin) {
      throw new RemoteError(`the discovered token_endpoint is on ${origin}, not on the source payer's origin; configure tokenEndpoint for this payer to use it`, res.status, false);
    }
    this.endpoint = endpoint;
    return endpoint;
  }
}

/** Marks the signals that bound a JSON answer's time (set per attempt, see RemotePayerClient). */
const answerDeadlines = new WeakSet<AbortSignal>();

function toRemoteError(err: unknown, what: string, maxJsonBytes = DEFAULT_MAX_JSON_BYTES): RemoteError {
  if (err instanceof RemoteError) return err;
  const e = err as AxiosError;
  if (!e.response && /^maxContentLength size of \d+ exceeded$/.test(String(e.message))) {
    return new AnswerTooLarge(`${what} failed: the source's answer is larger than the limit of ${maxJsonBytes} bytes (REMOTE_MAX_JSON_BYTES)`, undefined, false);
  }
  const signal = e.config?.signal as AbortSignal | undefined;
  if (!e.response && signal && answerDeadlines.has(signal) && signal.aborted) {
    return new RemoteError(`${what} failed: the source did not finish its answer within ${e.config?.timeout ?? '?'} ms`, undefined, true);
  }
  const status = e.response?.status;
  const data = e.response?.data as { resourceType?: string; issue?: { code?: unknown; diagnostics?: unknown; details?: { text?: unknown } }[]; error?: unknown; error_description?: unknown } | undefined;
  const outcome = data && typeof data === 'object' && data.resourceType === 'OperationOutcome' ? (data as OperationOutcome) : undefined;
  const issue = Array.isArray(data?.issue) ? data?.issue[0] : undefined;
  // The source's own words, made safe (source-text.ts); an answer that is not JSON (an HTML error page) is not quoted.
  const detail = outcome ? (issue?.diagnostics ?? issue?.details?.text) : data && typeof data === 'object' ? (data.error_description ?? data.error) : undefined;
  const transient = status === undefined || status === 429 || status >= 500;
  const retryAfter = e.response?.headers?.['retry-after'];
  const code = fhirCode(issue?.code) ?? fhirCode(data && typeof data === 'object' ? data.error : undefined);
  const head = `${what} failed${status ? ` (HTTP ${status}${code ? `, ${code}` : ''})` : ''}`;
  // Without an answer, axios's own message (a network error: ECONNREFUSED, timeout…) says what happened.
  const message = status === undefined ? `${head}: ${sourceText(e.code ?? e.message, 100)}` : detail !== undefined ? `${head}: ${sourceText(detail, 200)}` : head;
  return new RemoteError(message, status, transient, outcome, typeof retryAfter === 'string' ? retryAfter : undefined, status === undefined ? message : head);
}

/**
 * The requesting payer's client for one registered source payer: member-match, bulk export
 * kick-off, status, downloads and cancel. Network faults, 429 and 5xx are retried with exponential
 * backoff and jitter, honouring Retry-After; a 401 renews the token once. Only URLs on the source's
 * own origin are ever followed.
 */
export class RemotePayerClient implements RemotePayer {
  private readonly http: AxiosInstance;
  readonly tokens: TokenProvider;
  private readonly origin: string;
  private readonly maxJsonBytes: number;
  private described?: { at: number; found: Promise<SourceCapabilities> };

  constructor(readonly payer: SourcePayer, private readonly opts: RemoteClientOptions) {
    this.origin = new URL(payer.fhirBaseUrl).origin;
    this.maxJsonBytes = opts.maxJsonBytes ?? DEFAULT_MAX_JSON_BYTES;
    // Every answer read whole (JSON) is bounded in bytes once decompressed, so a gzip bomb stops at
    // the limit (axios counts the inflated bytes as they arrive and aborts), and in time as a whole:
    // `timeout` alone is an idle timeout, which an answer trickling a byte at a time never trips.
    // Files (`responseType: 'stream'`) are bounded by the exchange's download limits instead.
    this.http = axios.create({ timeout: opts.timeoutMs, maxRedirects: 0, decompress: true, maxContentLength: this.maxJsonBytes });
    this.http.interceptors.request.use((config) => {
      if (config.responseType === 'stream' || (config.signal && !answerDeadlines.has(config.signal as AbortSignal))) return config;
      const deadline = AbortSignal.timeout(opts.timeoutMs);
      answerDeadlines.add(deadline);
      return { ...config, signal: deadline };
    });
    // The one in-request retry policy: idempotent GETs only. POSTs ($member-match, token) and the
    // export kick-off are never re-sent here; the exchange job decides about them, with backoff.
    axiosRetry(this.http, {
      retries: 0,
      shouldResetTimeout: true,
      retryCondition: (err) => err.config?.method === 'get' && (!err.response || err.response.status === 429 || err.response.status >= 500),
      retryDelay: (n, err) => {
        const hinted = parseRetryAfter(err.response?.headers?.['retry-after'] as string | undefined);
        const backoff = Math.min(opts.maxRetryDelayMs, opts.baseRetryDelayMs * 2 ** (n - 1)) * (0.5 + Math.random() / 2);
        return Math.min(opts.maxRetryDelayMs, hinted ?? backoff);
      },
      onRetry: (n, err) => {
        opts.logger.warn('retrying source payer request', { issuer: payer.issuer, attempt: n, status: err.response?.status, code: err.code });
      },
    });
    this.tokens = new TokenProvider(payer, this.http, opts.retries, this.maxJsonBytes);
  }

  /** Whether a URL is on the source payer's own origin (the status URL must be; only it gets the token). */
  ownsUrl(url: string): boolean {
    return originOf(url) === this.origin;
  }

  mayDownload(url: string): boolean {
    const origin = originOf(url);
    return origin === this.origin || (!!origin && (this.payer.fileOrigins ?? []).includes(origin));
  }

  /**
   * Sends one request to the source. Only URLs on allowed origins are called: the source's own, and
   * for file downloads its configured `fileOrigins`; the bearer token goes to its own origin only.
   * GETs follow up to MAX_REDIRECTS redirects under the same rules; other methods follow none.
   */
  async request<T = unknown>(config: AxiosRequestConfig, what: string, opts: { withToken?: boolean; files?: boolean } = {}): Promise<AxiosResponse<T>> {
    const withToken = opts.withToken ?? true;
    const allowed = (url: string) => (opts.files ? this.mayDownload(url) : this.ownsUrl(url));
    const follows = (config.method ?? 'GET').toUpperCase() === 'GET';
    let url = config.url as string;
    for (let hops = 0; ; hops++) {
      if (!allowed(url)) throw new RemoteError(`${what}: refused to call ${originOf(url) ?? 'a URL that is not http(s)'}, which is not ${opts.files ? "the source payer's origin or one of its fileOrigins" : "the source payer's origin"}`, undefined, false);
      const res = await this.sendOnce<T>({ ...config, url, ...(follows ? { validateStatus: (s: number) => (s >= 200 && s < 300) || isRedirect(s) } : {}) }, what, withToken && this.ownsUrl(url));
      if (!isRedirect(res.status)) return res;
      (res.data as { destroy?: () => void } | undefined)?.destroy?.();
      const location = res.headers.location as string | undefined;
      if (!location) throw new RemoteError(`${what}: a ${res.status} redirect without a Location`, res.status, false);
      if (hops >= MAX_REDIRECTS) throw new RemoteError(`${what}: more than ${MAX_REDIRECTS} redirects`, res.status, false);
      try {
        url = new URL(location, url).toString();
      } catch {
        throw new RemoteError(`${what}: a redirect to something that is not a URL`, res.status, false);
      }
    }
  }

  /** One HTTP exchange; a 401 renews the token and tries once more. */
  private async sendOnce<T>(config: AxiosRequestConfig, what: string, withToken: boolean): Promise<AxiosResponse<T>> {
    for (let attempt = 0; ; attempt++) {
      const headers = { ...(config.headers as Record<string, string>), ...(withToken ? { authorization: `Bearer ${await this.tokens.token()}` } : {}) };
      try {
        return await this.http.request<T>({ ...config, headers });
      } catch (err) {
        const status = (err as AxiosError).response?.status;
        if (status === 401 && withToken && attempt === 0) {
          this.tokens.invalidate();
          continue;
        }
        throw toRemoteError(err, what, this.maxJsonBytes);
      }
    }
  }

  async memberMatch(params: Parameters): Promise<{ memberId?: string; identifier?: Identifier }> {
    const res = await this.request<Parameters>(
      { method: 'POST', url: `${this.payer.fhirBaseUrl}/Patient/$member-match`, data: params, headers: { 'content-type': 'application/fhir+json', accept: 'application/fhir+json' } },
      '$member-match',
    );
    const p = res.data?.parameter ?? [];
    const ref = p.find((x) => x.name === 'MemberId')?.valueReference?.reference;
    const identifier = p.find((x) => x.name === 'MemberIdentifier')?.valueIdentifier;
    const memberId = patientIdOf(ref);
    if (!memberId && !identifier?.value) throw new RemoteError('$member-match answered with neither a MemberId nor a MemberIdentifier', res.status, false);
    return { memberId, identifier };
  }

  async patientsByIdentifier(token: string): Promise<string[]> {
    const url = `${this.payer.fhirBaseUrl}/Patient?identifier=${encodeURIComponent(token)}`;
    const res = await this.request<{ resourceType?: string; entry?: { resource?: { resourceType?: string; id?: unknown }; search?: { mode?: string } }[] }>(
      { method: 'GET', url, headers: { accept: 'application/fhir+json' }, ...retryable(this.opts.retries) },
      'Patient search',
    );
    if (res.data?.resourceType !== 'Bundle') throw new RemoteError('the Patient search did not answer a Bundle', res.status, false);
    const ids = (res.data.entry ?? []).filter((e) => e.resource?.resourceType === 'Patient' && (e.search?.mode ?? 'match') === 'match').map((e) => e.resource?.id);
    return [...new Set(ids.filter((id): id is string => typeof id === 'string'))];
  }

  /**
   * Reads the source's CapabilityStatement (bounded like any JSON answer), kept for
   * CAPABILITIES_TTL_MS; an unreadable one is nothing known, and asked for again next time.
   */
  async capabilities(): Promise<SourceCapabilities> {
    if (!this.described || Date.now() - this.described.at > CAPABILITIES_TTL_MS) {
      const found = (async () => {
        try {
          // Asked without a token first (a CapabilityStatement is public): reading it costs no token
          // request, so an exchange whose token request fails fails on that alone. A 401 asks again with one.
          const ask = (withToken: boolean) => this.request<CapabilityStatement>({ method: 'GET', url: `${this.payer.fhirBaseUrl}/metadata`, headers: { accept: 'application/fhir+json' }, ...retryable(this.opts.retries) }, 'metadata', { withToken });
          const res = await ask(false).catch((err) => (err instanceof RemoteError && (err.status === 401 || err.status === 403) ? ask(true) : Promise.reject(err)));
          return describeSource(res.data);
        } catch (err) {
          // No readable CapabilityStatement: one $member-match and one export per member; one that could not be reached says so.
          return { ...NOTHING_KNOWN, ...(err instanceof RemoteError && err.transient ? { unreachable: true } : {}) };
        }
      })();
      this.described = { at: Date.now(), found };
    }
    const found = await this.described.found;
    if (!found.known) this.described = undefined;
    return found;
  }

  async bulkMemberMatch(memberBundles: ParametersParameter[]): Promise<string> {
    const res = await this.request(
      { method: 'POST', url: `${this.payer.fhirBaseUrl}/Group/$bulk-member-match`, data: { resourceType: 'Parameters', parameter: memberBundles }, headers: { 'content-type': 'application/fhir+json', accept: 'application/fhir+json', prefer: 'respond-async' } },
      '$bulk-member-match',
    );
    return this.statusLocation(res, '$bulk-member-match');
  }

  async kickoffGroupExport(groupId: string, params: Record<string, string[]>): Promise<string> {
    const parameter = davinciExportParameters(params);
    const res = await this.request(
      { method: 'POST', url: `${this.payer.fhirBaseUrl}/Group/${encodeURIComponent(groupId)}/$davinci-data-export`, data: { resourceType: 'Parameters', parameter }, headers: { accept: 'application/fhir+json', prefer: 'respond-async', 'content-type': 'application/fhir+json' } },
      '$davinci-data-export kick-off',
    );
    return this.statusLocation(res, '$davinci-data-export kick-off');
  }

  /** The status URL of an asynchronous request: a 202 with a Content-Location on the source's own origin. */
  private statusLocation(res: AxiosResponse, what: string): string {
    const location = res.headers['content-location'] as string | undefined;
    if (res.status !== 202 || !location) throw new RemoteError(`${what} answered ${res.status} without a Content-Location`, res.status, false);
    if (!this.ownsUrl(location)) throw new RemoteError(`${what}: the status URL ${originOf(location) ?? sourceText(location, 80)} is not on the source payer's origin`, res.status, false);
    return location;
  }

  /**
   * Starts the member's export by the first of KICKOFF_ROUTES the source serves. No `_type` is
   * added here: without one from the operator the source sends all it has.
   */
  async kickoff(memberId: string, params: Record<string, string[]>): Promise<KickedOff> {
    const headers = { accept: 'application/fhir+json', prefer: 'respond-async' };
    const query = (extra: Record<string, string[]> = {}) => {
      const qs = new URLSearchParams();
      for (const [k, vs] of Object.entries({ ...extra, ...params })) for (const v of vs) qs.append(k, v);
      const q = qs.toString();
      return q ? `?${q}` : '';
    };
    const base = this.payer.fhirBaseUrl;
    const attempts: Record<KickoffRoute, () => AxiosRequestConfig> = {
      'GET Patient/{id}/$export': () => ({ method: 'GET', url: `${base}/Patient/${encodeURIComponent(memberId)}/$export${query()}`, headers }),
      'POST Patient/$export': () => ({ method: 'POST', url: `${base}/Patient/$export`, data: { resourceType: 'Parameters', parameter: exportParameters(memberId, params) }, headers: { ...headers, 'content-type': 'application/fhir+json' } }),
      'GET Patient/$export': () => ({ method: 'GET', url: `${base}/Patient/$export${query({ patient: [`Patient/${memberId}`] })}`, headers }),
    };
    for (const [i, route] of KICKOFF_ROUTES.entries()) {
      let res: AxiosResponse;
      try {
        res = await this.request(attempts[route](), 'export kick-off');
      } catch (err) {
        const last = i === KICKOFF_ROUTES.length - 1;
        if (last || !(err instanceof RemoteError) || (err.status !== 404 && err.status !== 405)) throw err;
        continue;
      }
      return { statusUrl: this.statusLocation(res, 'export kick-off'), route };
    }
    throw new RemoteError('export kick-off failed: no route', undefined, false); // not reached
  }

  async status(statusUrl: string): Promise<ExportStatus> {
    const res = await this.request<BulkManifest>({ method: 'GET', url: statusUrl, headers: { accept: 'application/json' }, ...retryable(this.opts.retries) }, 'export status');
    if (res.status === 202) {
      const progress = res.headers['x-progress'];
      return { done: false, progress: typeof progress === 'string' && progress.trim() ? sourceText(progress, 100) : undefined, retryAfterMs: parseRetryAfter(res.headers['retry-after'] as string | undefined) };
    }
    const manifest = res.data;
    if (!manifest || !Array.isArray(manifest.output)) throw new RemoteError('export status answered 200 without a manifest', res.status, false);
    return { done: true, manifest };
  }

  /** Streams one file; the token goes along only when the manifest requires it, and only to the source's own origin. */
  async download(url: string, requiresAccessToken: boolean, signal?: AbortSignal): Promise<Readable> {
    // No cap on the stream here: the caller reads it through the exchange's limits (downloader.ts `limited`), counted after decompression.
    const res = await this.request<Readable>({ method: 'GET', url, responseType: 'stream', maxContentLength: -1, headers: { accept: 'application/fhir+ndjson' }, signal, ...retryable(this.opts.retries) }, 'download', { withToken: requiresAccessToken, files: true });
    return res.data;
  }

  /** Deletes the export job at the source; best effort (the source expires it anyway). */
  async cancel(statusUrl: string): Promise<void> {
    try {
      await this.request({ method: 'DELETE', url: statusUrl }, 'export delete');
    } catch (err) {
      this.opts.logger.warn('could not delete the export at the source', { issuer: this.payer.issuer, error: logTextOf(err) });
    }
  }
}
