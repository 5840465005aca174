/** A minimal bulk-data client for tests: kick off, poll, download. */
export async function kickoff(url: string, opts: { method?: string; body?: unknown; token?: string; headers?: Record<string, string> } = {}) {
  const res = await fetch(url, {
    method: opts.method ?? 'GET',
    headers: {
      accept: 'application/fhir+json',
      prefer: 'respond-async',
      ...(opts.body ? { 'content-type': 'application/fhir+json' } : {}),
      ...(opts.token ? { authorization: `Bearer ${opts.token}` } : {}),
      ...(opts.headers ?? {}),
    },
    body: opts.body ? JSON.stringify(opts.body) : undefined,
  });
  const text = await res.text();
  return { status: res.status, location: res.headers.get('content-location'), body: text ? JSON.parse(text) : undefined };
}

export async function poll(statusUrl: string, token?: string, timeoutMs = 20000): Promise<{ status: number; body: any; headers: Headers }> {
  const deadline = Date.now() + timeoutMs;
  for (let failures = 0; ; ) {
    let res: Response;
    try {
      res = await fetch(statusUrl, { headers: token ? { authorization: `Bearer ${token}` } : {} });
    } catch (err) {
      // A server restart drops pooled connections: retry a few times, as any bulk client should.
      if (++failures > 5) throw err;
      await new Promise((r) => setTimeout(r, 200));
      continue;
    }
    if (res.status !== 202 || Date.now() > deadline) {
      const text = await res.text();
      return { status: res.status, body: text ? JSON.parse(text) : undefined, headers: res.headers };
    }
    await res.text();
    await new Promise((r) => setTimeout(r, 100));
  }
}

export async function exportAll(url: string, opts: Parameters<typeof kickoff>[1] = {}) {
  const k = await kickoff(url, opts);
  if (k.status !== 202 || !k.location) throw new Error(`kick-off failed: ${k.status} ${JSON.stringify(k.body)}`);
  const result = await poll(k.location, opts.token);
  if (result.status !== 200) throw new Error(`export failed: ${result.status} ${JSON.stringify(result.body)}`);
  return { statusUrl: k.location, manifest: result.body };
}

export async function download(url: string, token?: string): Promise<{ status: number; contentType: string | null; resources: any[] }> {
  const res = await fetch(url, { headers: token ? { authorization: `Bearer ${token}` } : {} });
  const text = await res.text();
  const resources = res.status === 200 ? text.split('\n').filter(Boolean).map((l) => JSON.parse(l)) : [];
  return { status: res.status, contentType: res.headers.get('content-type'), resources };
}

/** All resources of a manifest, by type. */
export async function downloadAll(manifest: { output: { type: string; url: string }[] }, token?: string): Promise<Record<string, any[]>> {
  const out: Record<string, any[]> = {};
  for (const o of manifest.output) out[o.type] = [...(out[o.type] ?? []), ...(await download(o.url, token)).resources];
  return out;
}
