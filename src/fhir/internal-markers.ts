/**
 * The server's own codes and identifiers live under this prefix (exchange Task tags and steps, the
 * client tag on recorded Consents, import tags, archive categories). Clients and source payers may
 * not add or alter them: they would forge what the server vouches for.
 */
export const INTERNAL_PREFIX = 'urn:p2p-fhir-server:';

/** The Consent a `$member-match` recorded is tagged with the client that asked for it. */
export const CLIENT_TAG_SYSTEM = `${INTERNAL_PREFIX}client`;
/** On a Binary whose content is kept as a blob: the blob's key (set by the server only). */
export const BLOB_TAG_SYSTEM = `${INTERNAL_PREFIX}blob`;

const isInternal = (v: unknown): boolean =>
  !!v && typeof v === 'object' && !Array.isArray(v) && typeof (v as { system?: unknown }).system === 'string' && ((v as { system: string }).system).startsWith(INTERNAL_PREFIX);

/** Every coding, identifier or tag under the internal prefix, anywhere in the resource, as sorted JSON strings. */
export function internalMarkers(resource: unknown): string[] {
  const out: string[] = [];
  const walk = (value: unknown, path: string) => {
    if (Array.isArray(value)) value.forEach((v) => walk(v, path));
    else if (value && typeof value === 'object') {
      if (isInternal(value)) {
        const { system, code, value: v } = value as { system: string; code?: unknown; value?: unknown };
        out.push(JSON.stringify([path, system, code ?? null, v ?? null]));
      }
      for (const [k, v] of Object.entries(value)) walk(v, `${path}.${k}`);
    }
  };
  walk(resource, '');
  return out.sort();
}

/** Whether two versions carry exactly the same internal markers. */
export function sameInternalMarkers(a: unknown, b: unknown): boolean {
  const x = internalMarkers(a);
  const y = internalMarkers(b);
  return x.length === y.length && x.every((m, i) => m === y[i]);
}

/** A copy without any internal coding, identifier or tag (for data from another payer); arrays left empty are dropped. */
export function stripInternalMarkers<T>(resource: T): T {
  const walk = (value: unknown): unknown => {
    if (Array.isArray(value)) {
      const kept = value.filter((v) => !isInternal(v)).map(walk);
      return kept.length ? kept : undefined;
    }
    if (value && typeof value === 'object') {
      const out: Record<string, unknown> = {};
      for (const [k, v] of Object.entries(value)) {
        const w = isInternal(v) ? undefined : walk(v);
        if (w !== undefined) out[k] = w;
      }
      return out;
    }
    return value;
  };
  return walk(resource) as T;
}
