import fs from 'node:fs';
import { isDeepStrictEqual } from 'node:util';
import type { Resource } from 'fhir/r4';
import { ResourceStore } from '../store/resource-store';
import { isServedType } from '../fhir/resource-types';
import { hasElement } from '../fhir/validator';
import { IdMapping, localIdFor, rewriteReferences } from './reference-rewriter';
import { readResources, NdjsonError } from './ndjson';

export const IMPORT_TAG_SYSTEM = 'urn:p2p-fhir-server:imported-from';

export interface ImportResult {
  /** Resources written or confirmed unchanged, as `Type/id` (local). */
  targets: string[];
  written: number;
  unchanged: number;
}

/**
 * Imports one validated NDJSON file from the source into the local store, linked to the local
 * member: the member's Patient stays the local one; every other resource gets its deterministic
 * local id, references rewritten, and keeps its origin (the source id under the responder identifier
 * system, and meta.source). A record identical to what is stored is not written again.
 */
export class Importer {
  constructor(private readonly store: ResourceStore, private readonly maxLineLength: number) {}

  transform(resource: Resource & { id?: string }, m: IdMapping, identifierSystem: string): Resource | undefined {
    const type = resource.resourceType;
    const sourceId = resource.id as string;
    if (type === 'Patient' && sourceId === m.sourcePatientId) return undefined; // the member is the local Patient
    const out = rewriteReferences(resource, m) as Resource & { identifier?: { system?: string; value?: string }[] };
    out.id = localIdFor(m.issuer, type, sourceId);
    if (hasElement(type, 'identifier')) {
      const origin = { system: identifierSystem, value: sourceId };
      const others = (out.identifier ?? []).filter((i) => i.system !== identifierSystem);
      out.identifier = [...others, origin];
    }
    const { versionId: _v, lastUpdated: _l, ...meta } = out.meta ?? {};
    out.meta = {
      ...meta,
      source: `${m.sourceBase}/${type}/${sourceId}`,
      tag: [...(meta.tag ?? []).filter((t) => t.system !== IMPORT_TAG_SYSTEM), { system: IMPORT_TAG_SYSTEM, code: m.issuer }],
    };
    return out;
  }

  async importFile(file: string, type: string, m: IdMapping, identifierSystem: string, signal?: AbortSignal): Promise<ImportResult> {
    if (!isServedType(type)) throw new NdjsonError(`the source sent ${type}, which this server does not store`);
    const result: ImportResult = { targets: [], written: 0, unchanged: 0 };
    for await (const { resource } of readResources(fs.createReadStream(file), { expectedType: type, maxLineLength: this.maxLineLength, label: type })) {
      if (signal?.aborted) throw signal.reason;
      if (typeof resource.id !== 'string') throw new NdjsonError(`a ${type} from the source has no id`);
      const local = this.transform(resource as unknown as Resource, m, identifierSystem);
      if (!local) continue;
      const existing = await this.store.readIfExists(type, local.id as string);
      const same = existing && isDeepStrictEqual(withoutVersion(existing), withoutVersion(local));
      if (same) result.unchanged++;
      else {
        await this.store.update(type, local.id as string, local);
        result.written++;
      }
      result.targets.push(`${type}/${local.id}`);
    }
    return result;
  }
}

function withoutVersion(r: Resource): unknown {
  const { versionId: _v, lastUpdated: _l, ...meta } = r.meta ?? {};
  return { ...r, meta };
}
