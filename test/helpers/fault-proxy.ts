import http from 'node:http';
import type { AddressInfo } from 'node:net';

/**
 * A network fault injector between the two payers: forwards every request to the real source
 * server, rewriting the source's own URLs to the proxy's, and misbehaves on demand.
 */
export interface Faults {
  /** Answer this many export status polls with 429 + Retry-After: 1 first. */
  rateLimitPolls?: number;
  /** Keep answering status polls with 202 while true (a long-running export). */
  holdExport?: boolean;
  /** Cut this type's NDJSON file off in the middle of a line. */
  truncateType?: string;
  /** Point this type's manifest URL at another origin. */
  foreignType?: string;
}

export interface FaultProxy {
  url: string;
  faults: Faults;
  /** Every request seen, as `METHOD path`. */
  log: string[];
  close(): Promise<void>;
}

export async function startFaultProxy(targetOrigin: string, faults: Faults = {}): Promise<FaultProxy> {
  const log: string[] = [];
  let proxyOrigin = '';
  const server = http.createServer(async (req, res) => {
    const chunks: Buffer[] = [];
    for await (const c of req) chunks.push(c as Buffer);
    const path = req.url ?? '/';
    log.push(`${req.method} ${path.split('?')[0]}`);
    const isStatus = path.includes('/bulkstatus/');
    if (isStatus && req.method === 'GET') {
      if ((faults.rateLimitPolls ?? 0) > 0) {
        faults.rateLimitPolls = (faults.rateLimitPolls ?? 0) - 1;
        res.writeHead(429, { 'retry-after': '1', 'content-type': 'application/fhir+json' });
        return res.end(JSON.stringify({ resourceType: 'OperationOutcome', issue: [{ severity: 'error', code: 'throttled', diagnostics: 'slow down' }] }));
      }
      if (faults.holdExport) {
        res.writeHead(202, { 'retry-after': '1', 'x-progress': 'held by the test' });
        return res.end();
      }
    }
    const headers: Record<string, string> = {};
    for (const [k, v] of Object.entries(req.headers)) if (typeof v === 'string' && k !== 'host' && k !== 'accept-encoding' && k !== 'content-length') headers[k] = v;
    let upstream: Response;
    try {
      upstream = await fetch(`${targetOrigin}${path}`, { method: req.method, headers, body: chunks.length ? Buffer.concat(chunks) : undefined });
    } catch {
      res.writeHead(502);
      return res.end();
    }
    let body = Buffer.from(await upstream.arrayBuffer()).toString('utf8');
    body = body.split(targetOrigin).join(proxyOrigin);
    if (isStatus && upstream.status === 200 && faults.foreignType) {
      const manifest = JSON.parse(body);
      for (const o of manifest.output) if (o.type === faults.foreignType) o.url = o.url.replace(proxyOrigin, 'http://127.0.0.2:9');
      body = JSON.stringify(manifest);
    }
    if (path.includes('/bulkfiles/') && faults.truncateType && path.includes(`/${faults.truncateType}.ndjson`)) {
      body = body.slice(0, Math.max(1, Math.floor(body.length / 2)));
    }
    const out: Record<string, string> = {};
    upstream.headers.forEach((v, k) => {
      if (!['content-length', 'content-encoding', 'transfer-encoding', 'connection', 'keep-alive'].includes(k)) out[k] = v.split(targetOrigin).join(proxyOrigin);
    });
    res.writeHead(upstream.status, out);
    res.end(body);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  proxyOrigin = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  return {
    url: proxyOrigin,
    faults,
    log,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}
