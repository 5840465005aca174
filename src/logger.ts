import winston from 'winston';

const SECRET_KEYS = /^(authorization|access_token|refresh_token|client_assertion|client_secret|clientsecret|password|token|privatekeyjwk|d|p|q|dp|dq|qi)$/i;

/** Replaces secrets anywhere in a log entry, so tokens and keys can never reach the log by mistake. */
const redact = winston.format((info) => {
  const scrub = (value: unknown, depth: number): unknown => {
    if (depth > 6 || value === null || typeof value !== 'object') return value;
    if (Array.isArray(value)) return value.map((v) => scrub(v, depth + 1));
    const out: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(value)) out[k] = SECRET_KEYS.test(k) ? '[redacted]' : scrub(v, depth + 1);
    return out;
  };
  for (const key of Object.keys(info)) {
    if (SECRET_KEYS.test(key)) info[key] = '[redacted]';
    else info[key] = scrub(info[key], 0);
  }
  if (typeof info.message === 'string') info.message = info.message.replace(/Bearer\s+[A-Za-z0-9\-._~+/]+=*/g, 'Bearer [redacted]');
  return info;
});

export type Logger = winston.Logger;

/** Structured JSON logs. Member data is never logged at info level: log ids and counts, not resources. */
export function createLogger(level: string, silent = false): Logger {
  return winston.createLogger({
    level,
    silent,
    format: winston.format.combine(redact(), winston.format.timestamp(), winston.format.json()),
    transports: [new winston.transports.Console({ stderrLevels: ['error', 'warn'] })],
  });
}
