import fs from 'node:fs';
import split2 from 'split2';
import type { Resource } from 'fhir/r4';
import { ResourceStore } from '../store/resource-store';
import { IdMapping, localIdFor } from './reference-rewriter';
import { readResources } from './ndjson';
import { LimitReached } from './exchange-errors';
import { hadOthersRemoved, localForm, parsePreparedLine } from './local-form';
import { ImportJournal } from './import-journal';
import type { ExchangeIngest } from './directory-match';

export interface ImportResult {
  /** Resources written or confirmed unchanged. */
  count: number;
  written: number;
  unchanged: number;
  /** Each imported resource's local reference (`Type/id`), in the file's order. */
  references: string[];
  /** Resources stored without the references to another person they were received with (local-form.ts OTHERS_REMOVED_TAG). */
  othersRemoved: number;
}

/**
 * Imports files from the source into the local store, each record in its local form (`localForm`:
 * linked to the local member, refused if the source may not send it), made as the file downloaded
 * (a prepared file) or here. A record identical to what is stored is not written again; every write
 * goes through the exchange's undo journal.
 */
export class Importer {
  constructor(private readonly store: ResourceStore, private readonly journal: ImportJournal, private readonly maxLineLength: number) {}

  /** The local references (`Type/id`) of the resources a downloaded file imported (the member's own Patient is not one), without rewriting them. */
  async *localReferences(file: string, type: string, m: IdMapping): AsyncGenerator<string> {
    for await (const { resource } of readResources(fs.createReadStream(file), { expectedType: type, maxLineLength: this.maxLineLength, label: type })) {
      const id = resource.id as string;
      if (!(type === 'Patient' && id === m.sourcePatientId)) yield `${type}/${localIdFor(m.issuer, type, id)}`;
    }
  }

  /** The local references of a prepared file's resources: each line's prefix, nothing parsed. */
  async *preparedReferences(file: string): AsyncGenerator<string> {
    for await (const line of preparedLines(file)) yield line.slice(0, line.indexOf('\t'));
  }

  /** Imports a downloaded file as received: each resource is prepared here, then imported in chunks. */
  async importFile(file: string, type: string, m: IdMapping, identifierSystem: string, opts: ImportOptions): Promise<ImportResult> {
    return this.importChunks(this.preparedFrom(file, type, m, identifierSystem), type, opts);
  }

  /** Imports a prepared file (see preparedLine), made from a downloaded file that was checked line by line. */
  async importPrepared(file: string, type: string, opts: ImportOptions): Promise<ImportResult> {
    return this.importChunks(preparedResources(file), type, opts);
  }

  private async *preparedFrom(file: string, type: string, m: IdMapping, identifierSystem: string): AsyncGenerator<Local> {
    for await (const { resource } of readResources(fs.createReadStream(file), { expectedType: type, maxLineLength: this.maxLineLength, label: type })) {
      const local = localForm(resource as unknown as Resource, m, identifierSystem);
      if (local) yield { resource: local };
    }
  }

  /**
   * Imports local resources in chunks: each chunk's resources are planned together (two queries),
   * the unchanged ones skipped, and the rest written in one batch through the undo journal.
   */
  private async importChunks(resources: AsyncIterable<Local>, type: string, opts: ImportOptions): Promise<ImportResult> {
    const result: ImportResult = { count: 0, written: 0, unchanged: 0, references: [], othersRemoved: 0 };
    const size = opts.chunkSize ?? IMPORT_CHUNK;
    let chunk: Local[] = [];
    let bytes = 0;
    const flush = async () => {
      if (chunk.length === 0) return;
      // Each batch is a turn of its own: requests waiting are answered between batches.
      await new Promise<void>((resolve) => setImmediate(resolve));
      if (opts.signal?.aborted) throw opts.signal.reason;
      if (Date.now() > opts.deadline) throw new LimitReached(`the exchange's deadline passed while importing ${type}`);
      // A source may list one record twice in a file: the last one stands.
      let byId = [...new Map(chunk.map((l) => [l.resource.id as string, l])).values()];
      // Directory records matched to existing ones, references to them rewritten, Coverage kept as history (directory-match.ts).
      if (opts.ingest) byId = await opts.ingest.prepare(type, byId);
      const plans = await this.store.planWrites(type, byId.map((l) => l.resource), byId.map((l) => l.hash));
      await this.journal.writeMany(opts.taskId, type, plans);
      const written = plans.filter((p) => p.changed).length;
      result.written += written;
      result.unchanged += plans.length - written;
      result.count += chunk.length;
      chunk = [];
      bytes = 0;
    };
    for await (const local of resources) {
      chunk.push(local);
      bytes += local.bytes ?? 0;
      result.references.push(`${type}/${local.resource.id}`);
      if (hadOthersRemoved(local.resource)) result.othersRemoved++;
      if (chunk.length >= size || bytes >= IMPORT_CHUNK_BYTES) await flush();
    }
    await flush();
    return result;
  }
}

/** A resource in its local form, with its content hash when that was made beforehand. */
interface Local {
  resource: Resource;
  hash?: string;
  /** The length of its line, where known. */
  bytes?: number;
}

/** A batch also ends once its records' lines add up to this: a thousand records of megabytes are not held (nor written) at once. */
const IMPORT_CHUNK_BYTES = 8 * 1024 * 1024;

/**
 * Resources per batch. Each batch is one transaction whose commit rewrites every index page it
 * touched, so larger batches write less: 1,000 took 8% less time than 500 on a 50k-resource
 * import, for commits of about 60 ms instead of 35 (other writes of the process wait that long).
 */
const IMPORT_CHUNK = 1000;

export interface ImportOptions {
  taskId: string;
  signal?: AbortSignal;
  deadline: number;
  chunkSize?: number;
  /** The exchange's ingestion rules (directory-match.ts), applied to each batch before it is planned. */
  ingest?: ExchangeIngest;
}

/** The resources of a prepared file. */
async function* preparedResources(file: string): AsyncGenerator<Local> {
  for await (const line of preparedLines(file)) yield { ...parsePreparedLine(line), bytes: line.length };
}

/** The lines of a work file this server wrote itself. */
async function* preparedLines(file: string): AsyncGenerator<string> {
  for await (const line of fs.createReadStream(file).pipe(split2()) as AsyncIterable<string>) if (line) yield line;
}
