import path from 'node:path';

/** Typed, validated configuration. Built from the environment by the entry point; tests build it directly. */
export interface AppConfig {
  host: string;
  port: number;
  /** Public FHIR base URL, e.g. https://payer.example.com/4_0_1; derived from HOST/PORT when unset. */
  publicBaseUrl?: string;
  dataDir: string;
  /** Where bulk export files are written (default DATA_DIR/exports). */
  mongodbUri?: string;
  mongodbDb?: string;
  logLevel: string;
  /** $davinci-data-export sends data with dates of service in the last this many years (PDex); 0 turns the window off. */
  serviceWindowYears: number;
  bodyLimit: string;
  /** How long an idle keep-alive connection stays open (above a load balancer's idle timeout, so it never reuses one this server has just closed). */
  keepAliveSeconds: number;
  authRequired: boolean;
  /** Why authentication is on or off, for the start-up log. */
  authReason?: string;
  clientsFile: string;
  sourcePayersFile: string;
  defaultPageSize: number;
  maxPageSize: number;
  accessTokenTtlSeconds: number;
  exportFileTtlSeconds: number;
  /** Share an exchange's work between processes: how long a claimed job stays claimed without a heartbeat. */
  jobLeaseSeconds: number;
  /** Jobs (exports, exchanges) one process runs at once; exchanges mostly wait on the source. */
  jobConcurrency: number;
  /** Run-off exchanges for members whose latest exchange is older than this (hours); 0: only on demand. */
  runOffIntervalHours: number;
  /** Origins allowed to call from a browser (CORS); `*` for any. */
  corsOrigins: string[];
  /** How long an exchange may keep polling the source's export before giving up. */
  exchangeTimeoutSeconds: number;
  /** This payer's name, as the requester of exchanges when CoverageToLink names no payor. */
  requestingPayerName: string;
  /** The id of this payer's Organization (PAYER_ORGANIZATION_ID, default `this-payer`): the transmitter of what it sends. */
  payerOrganizationId: string;
  /**
   * This payer's organization identifiers (PAYER_IDENTIFIERS, `system|value,system|value`, e.g. its
   * NPI `http://hl7.org/fhir/sid/us-npi|1234567893`): as a source, a Consent's source actor must
   * name one of them; as a requester, the Consents it sends name it by them. Empty: not checked.
   */
  payerIdentifiers: { system: string; value: string }[];
  /** Days a Consent sent to a source runs for when the user gives no period end (CONSENT_DEFAULT_DAYS). */
  consentDefaultDays: number;
  /** Bounds on the wait between export status polls (Retry-After is honoured within them). */
  pollMinMs: number;
  pollMaxMs: number;
  /** Calls to another payer: timeout, retries on network faults/429/5xx, and backoff bounds. */
  remoteTimeoutMs: number;
  remoteRetries: number;
  remoteRetryBaseMs: number;
  remoteRetryMaxMs: number;
  /** Bytes one JSON answer of a source payer may hold once decompressed (token, discovery, CapabilityStatement, $member-match, status/manifest, search); files have the exchange's limits. */
  remoteMaxJsonBytes: number;
  /** The longest NDJSON line accepted from a source payer. */
  maxLineLength: number;
  /** Received files up to this size are archived inline (as a Binary); larger ones by hash only. */
  /** A Binary read as FHIR JSON carries its content (as `data`) up to this size; larger ones are read raw. */
  binaryInlineLimitBytes: number;
  /** Limits on what one exchange takes from a source payer. */
  exchangeMaxFileBytes: number;
  exchangeMaxBytes: number;
  downloadIdleTimeoutMs: number;
  manifestMaxPages: number;
  manifestMaxFiles: number;
  /** Runs of one background job before it is given up (transient faults are retried until then). */
  jobMaxAttempts: number;
  /** Brute-force guard on $member-match: failed matches a client may have within the window. */
  memberMatchMaxFailures: number;
  /** Members a client's $bulk-member-match requests may fail to match (or not honour consent for) within the window. */
  bulkMatchMaxFailures: number;
  bulkMatchWindowSeconds: number;
  memberMatchWindowSeconds: number;
  /** Refused token requests one remote address may make within the window; past it, 429 until the window ends. */
  tokenMaxRefusals: number;
  tokenRefusalWindowSeconds: number;
  /** Express's `trust proxy` (TRUST_PROXY): which proxies' X-Forwarded-For names the caller (hops, or addresses/subnets); unset: none, the socket's address is the caller's. */
  trustProxy?: number | string;
  /** The system this payer issues member ids under: when set, a CoverageToMatch identifier must carry it. */
  memberIdSystem?: string;
  /** Search-index values one resource may have, per search parameter and in all, and characters of indexed text in all; a write or import over them is refused. */
  indexMaxValuesPerParam: number;
  indexMaxValues: number;
  indexMaxTextChars: number;
  /** Request bodies (and received NDJSON files) larger than this are parsed and checked on a worker thread. */
  largeBodyBytes: number;
}

export class ConfigError extends Error {}

const LOOPBACK = /^(127\.\d+\.\d+\.\d+|localhost|::1|\[::1\])$/;

export function isLoopback(host: string): boolean {
  return LOOPBACK.test(host);
}

function bool(value: string | undefined, name: string): boolean | undefined {
  if (value === undefined || value === '') return undefined;
  if (/^(true|1|yes|on)$/i.test(value)) return true;
  if (/^(false|0|no|off)$/i.test(value)) return false;
  throw new ConfigError(`${name} must be true or false, got '${value}'`);
}

function int(value: string | undefined, name: string, fallback: number, min = 0, max = Number.MAX_SAFE_INTEGER): number {
  if (value === undefined || value === '') return fallback;
  const n = Number(value);
  if (!Number.isInteger(n) || n < min || n > max) throw new ConfigError(`${name} must be an integer from ${min} to ${max}, got '${value}'`);
  return n;
}

/**
 * Authentication is off only when asked for, or when nothing but this machine can reach the server:
 * a loopback HOST and no public base URL other than a loopback one. Behind a reverse proxy (a
 * PUBLIC_BASE_URL elsewhere) it is on, even though the server itself listens on loopback.
 */
function authDefault(host: string, publicBaseUrl: string | undefined, explicit: boolean | undefined): { on: boolean; reason: string } {
  if (explicit !== undefined) return { on: explicit, reason: `AUTH_REQUIRED=${explicit}` };
  if (!isLoopback(host)) return { on: true, reason: `HOST ${host} is not a loopback address` };
  if (publicBaseUrl) {
    let hostname: string;
    try {
      hostname = new URL(publicBaseUrl).hostname;
    } catch {
      throw new ConfigError(`PUBLIC_BASE_URL must be an absolute URL, got '${publicBaseUrl}'`);
    }
    if (!isLoopback(hostname)) return { on: true, reason: `PUBLIC_BASE_URL ${publicBaseUrl} is not on a loopback address` };
  }
  return { on: false, reason: 'reachable from loopback only' };
}

/** TRUST_PROXY: a number of proxy hops, or a comma-separated list of proxy addresses/subnets (`loopback`, `10.0.0.0/8`); never `true` (any client could then name its own address). */
function trustProxy(value: string | undefined): number | string | undefined {
  if (value === undefined || value.trim() === '' || /^(false|0|no|off)$/i.test(value.trim())) return undefined;
  if (/^\d+$/.test(value.trim())) return int(value.trim(), 'TRUST_PROXY', 0, 1, 10);
  if (/^(true|yes|on)$/i.test(value.trim())) throw new ConfigError('TRUST_PROXY must name the proxies (a number of hops, or their addresses or subnets), not true: with true any client could set its own address');
  if (!/^[0-9A-Za-z.:/, ]+$/.test(value)) throw new ConfigError(`TRUST_PROXY must be a number of hops or a list of addresses or subnets, got '${value}'`);
  return value.split(',').map((v) => v.trim()).filter(Boolean).join(',');
}

/** `system|value,system|value`: an organization's identifiers, each with both parts. */
export function orgIdentifiers(value: string | undefined, name: string): { system: string; value: string }[] {
  if (value === undefined || value.trim() === '') return [];
  return value.split(',').map((entry) => entry.trim()).filter(Boolean).map((entry) => {
    const bar = entry.indexOf('|');
    const system = bar < 0 ? '' : entry.slice(0, bar).trim();
    const id = bar < 0 ? '' : entry.slice(bar + 1).trim();
    if (!system || !id) throw new ConfigError(`${name} takes system|value pairs separated by commas (e.g. http://hl7.org/fhir/sid/us-npi|1234567893), got '${entry}'`);
    return { system, value: id };
  });
}

export function loadConfig(env: NodeJS.ProcessEnv = process.env, cwd = process.cwd()): AppConfig {
  const host = env.HOST || '127.0.0.1';
  const publicBaseUrl = env.PUBLIC_BASE_URL ? env.PUBLIC_BASE_URL.replace(/\/+$/, '') : undefined;
  const auth = authDefault(host, publicBaseUrl, bool(env.AUTH_REQUIRED, 'AUTH_REQUIRED'));
  const dataDir = path.resolve(cwd, env.DATA_DIR || 'data');
  const config: AppConfig = {
    host,
    port: int(env.PORT, 'PORT', 3000, 0, 65535),
    publicBaseUrl,
    dataDir,
    mongodbUri: env.MONGODB_URI || undefined,
    mongodbDb: env.MONGODB_DB || undefined,
    logLevel: env.LOG_LEVEL || 'info',
    bodyLimit: env.BODY_LIMIT || '10mb',
    keepAliveSeconds: int(env.KEEP_ALIVE_SECONDS, 'KEEP_ALIVE_SECONDS', 65, 1, 3600),
    authRequired: auth.on,
    authReason: auth.reason,
    clientsFile: path.resolve(cwd, env.CLIENTS_FILE || 'config/clients.json'),
    sourcePayersFile: path.resolve(cwd, env.SOURCE_PAYERS_FILE || 'config/source-payers.json'),
    defaultPageSize: int(env.DEFAULT_PAGE_SIZE, 'DEFAULT_PAGE_SIZE', 20, 1, 1000),
    maxPageSize: int(env.MAX_PAGE_SIZE, 'MAX_PAGE_SIZE', 1000, 1, 10000),
    accessTokenTtlSeconds: int(env.ACCESS_TOKEN_TTL_SECONDS, 'ACCESS_TOKEN_TTL_SECONDS', 300, 30, 3600),
    serviceWindowYears: int(env.SERVICE_WINDOW_YEARS, 'SERVICE_WINDOW_YEARS', 5, 0, 100),
    exportFileTtlSeconds: int(env.EXPORT_FILE_TTL_SECONDS, 'EXPORT_FILE_TTL_SECONDS', 3600, 1),
    jobLeaseSeconds: int(env.JOB_LEASE_SECONDS, 'JOB_LEASE_SECONDS', 30, 1, 3600),
    jobConcurrency: int(env.JOB_CONCURRENCY, 'JOB_CONCURRENCY', 16, 1, 256),
    runOffIntervalHours: int(env.RUNOFF_INTERVAL_HOURS, 'RUNOFF_INTERVAL_HOURS', 0, 0, 24 * 366),
    corsOrigins: (env.CORS_ORIGINS ?? '*').split(',').map((o) => o.trim()).filter(Boolean),
    exchangeTimeoutSeconds: int(env.EXCHANGE_TIMEOUT_SECONDS, 'EXCHANGE_TIMEOUT_SECONDS', 3600, 1),
    requestingPayerName: env.PAYER_NAME || 'Requesting payer',
    payerOrganizationId: orgId(env.PAYER_ORGANIZATION_ID),
    payerIdentifiers: orgIdentifiers(env.PAYER_IDENTIFIERS, 'PAYER_IDENTIFIERS'),
    consentDefaultDays: int(env.CONSENT_DEFAULT_DAYS, 'CONSENT_DEFAULT_DAYS', 365, 1, 3660),
    pollMinMs: int(env.POLL_MIN_MS, 'POLL_MIN_MS', 1000, 10),
    pollMaxMs: int(env.POLL_MAX_MS, 'POLL_MAX_MS', 60_000, 10),
    remoteTimeoutMs: int(env.REMOTE_TIMEOUT_MS, 'REMOTE_TIMEOUT_MS', 30_000, 100),
    remoteRetries: int(env.REMOTE_RETRIES, 'REMOTE_RETRIES', 5, 0, 20),
    remoteRetryBaseMs: int(env.REMOTE_RETRY_BASE_MS, 'REMOTE_RETRY_BASE_MS', 500, 1),
    remoteRetryMaxMs: int(env.REMOTE_RETRY_MAX_MS, 'REMOTE_RETRY_MAX_MS', 30_000, 1),
    remoteMaxJsonBytes: int(env.REMOTE_MAX_JSON_BYTES, 'REMOTE_MAX_JSON_BYTES', 4 * 1024 * 1024, 1024),
    maxLineLength: int(env.MAX_NDJSON_LINE_BYTES, 'MAX_NDJSON_LINE_BYTES', 5 * 1024 * 1024, 1024),
    binaryInlineLimitBytes: int(env.BINARY_INLINE_LIMIT_BYTES, 'BINARY_INLINE_LIMIT_BYTES', 8 * 1024 * 1024, 0),
    exchangeMaxFileBytes: int(env.EXCHANGE_MAX_FILE_BYTES, 'EXCHANGE_MAX_FILE_BYTES', 1024 * 1024 * 1024, 1024),
    exchangeMaxBytes: int(env.EXCHANGE_MAX_BYTES, 'EXCHANGE_MAX_BYTES', 4 * 1024 * 1024 * 1024, 1024),
    downloadIdleTimeoutMs: int(env.DOWNLOAD_IDLE_TIMEOUT_MS, 'DOWNLOAD_IDLE_TIMEOUT_MS', 60_000, 100),
    manifestMaxPages: int(env.MANIFEST_MAX_PAGES, 'MANIFEST_MAX_PAGES', 100, 1),
    manifestMaxFiles: int(env.MANIFEST_MAX_FILES, 'MANIFEST_MAX_FILES', 10_000, 1),
    jobMaxAttempts: int(env.JOB_MAX_ATTEMPTS, 'JOB_MAX_ATTEMPTS', 25, 1),
    memberMatchMaxFailures: int(env.MEMBER_MATCH_MAX_FAILURES, 'MEMBER_MATCH_MAX_FAILURES', 10, 1),
    bulkMatchMaxFailures: int(env.BULK_MATCH_MAX_FAILURES, 'BULK_MATCH_MAX_FAILURES', 10_000, 1),
    bulkMatchWindowSeconds: int(env.BULK_MATCH_WINDOW_SECONDS, 'BULK_MATCH_WINDOW_SECONDS', 86_400, 1),
    memberMatchWindowSeconds: int(env.MEMBER_MATCH_WINDOW_SECONDS, 'MEMBER_MATCH_WINDOW_SECONDS', 900, 1),
    tokenMaxRefusals: int(env.TOKEN_MAX_REFUSALS, 'TOKEN_MAX_REFUSALS', 20, 1),
    tokenRefusalWindowSeconds: int(env.TOKEN_REFUSAL_WINDOW_SECONDS, 'TOKEN_REFUSAL_WINDOW_SECONDS', 60, 1, 86_400),
    trustProxy: trustProxy(env.TRUST_PROXY),
    memberIdSystem: env.MEMBER_ID_SYSTEM?.trim() || undefined,
    indexMaxValuesPerParam: int(env.INDEX_MAX_VALUES_PER_PARAM, 'INDEX_MAX_VALUES_PER_PARAM', 10_000, 1),
    indexMaxValues: int(env.INDEX_MAX_VALUES, 'INDEX_MAX_VALUES', 50_000, 1),
    indexMaxTextChars: int(env.INDEX_MAX_TEXT_CHARS, 'INDEX_MAX_TEXT_CHARS', 1024 * 1024, 1),
    largeBodyBytes: int(env.LARGE_BODY_BYTES, 'LARGE_BODY_BYTES', 256 * 1024, 1024),
  };
  validateConfig(config);
  return config;
}

/** Fails fast with a clear message on settings that would be unsafe or cannot work. */
export function validateConfig(config: AppConfig): void {
  if (!config.authRequired && !isLoopback(config.host)) {
    throw new ConfigError(`Refusing to start with AUTH_REQUIRED=false on ${config.host}: authentication may be off only on a loopback address`);
  }
}

/** The FHIR base URL as clients see it. */
export function fhirBase(config: AppConfig, listeningPort?: number): string {
  if (config.publicBaseUrl) return config.publicBaseUrl;
  const host = config.host.includes(':') && !config.host.startsWith('[') ? `[${config.host}]` : config.host;
  return `http://${host}:${listeningPort ?? config.port}/4_0_1`;
}

function orgId(raw: string | undefined): string {
  const id = (raw ?? '').trim() || 'this-payer';
  if (!/^[A-Za-z0-9\-.]{1,64}$/.test(id)) throw new ConfigError(`PAYER_ORGANIZATION_ID must be a FHIR id (letters, digits, '-', '.'; at most 64), got '${id}'`);
  return id;
}

