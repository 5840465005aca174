import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { AppConfig, loadConfig } from '../../src/config';
import { Writable } from 'node:stream';
import winston from 'winston';
import { createLogger, Logger } from '../../src/logger';
import { RunningServer, startServer } from '../../src/main';

export function tempDir(prefix = 'p2p-test-'): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), prefix));
}

/** A test configuration: loopback, port 0, a fresh data directory, auth off unless asked. */
export function testConfig(overrides: Partial<AppConfig> = {}): AppConfig {
  const dataDir = overrides.dataDir ?? tempDir();
  return { ...loadConfig({ HOST: '127.0.0.1', PORT: '0' } as NodeJS.ProcessEnv), dataDir, authRequired: false, ...overrides };
}

export async function startTestServer(overrides: Partial<AppConfig> = {}, logger?: Logger): Promise<RunningServer> {
  return startServer(testConfig(overrides), logger ?? createLogger(process.env.TEST_LOG_LEVEL ?? 'error', process.env.TEST_LOGS !== '1'));
}

/** A debug-level logger that keeps every line it writes, for asserting what reaches the logs. */
export function capturingLogger(): { logger: Logger; lines: string[] } {
  const lines: string[] = [];
  const logger = createLogger('debug', true);
  const stream = new Writable({
    write(chunk, _enc, done) {
      lines.push(String(chunk));
      done();
    },
  });
  const capture = new winston.transports.Stream({ stream });
  logger.transports.forEach((t) => (t.silent = true));
  logger.add(capture);
  logger.silent = false;
  return { logger, lines };
}

export interface FhirResponse<T = any> {
  status: number;
  headers: Headers;
  body: T;
  text: string;
}

/** A small FHIR client over real HTTP. */
export async function fhir<T = any>(method: string, url: string, body?: unknown, headers: Record<string, string> = {}): Promise<FhirResponse<T>> {
  const res = await fetch(url, {
    method,
    headers: { accept: 'application/fhir+json', ...(body !== undefined ? { 'content-type': 'application/fhir+json' } : {}), ...headers },
    body: body === undefined ? undefined : typeof body === 'string' ? body : JSON.stringify(body),
  });
  const text = await res.text();
  let parsed: unknown = undefined;
  try {
    parsed = text ? JSON.parse(text) : undefined;
  } catch {
    parsed = undefined;
  }
  return { status: res.status, headers: res.headers, body: parsed as T, text };
}
