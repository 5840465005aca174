import type { Coverage, Identifier, Patient, Reference, Resource } from 'fhir/r4';
import type { ResourceStore } from '../store/resource-store';
import type { ImportJournal } from './import-journal';

/**
 * Ingestion as PDex's data-mapping page says ("Ingesting Exchanged Data", steps 2 to 5), for the
 * records every source sends again and again: Practitioner and Organization are matched by NPI,
 * Location by identifier (`system|value`), to the records already here (another source's, or the
 * payer's own), and created only when missing; the source payer's own Organization is the one local
 * Organization of that source (the Tasks' owner); an imported Coverage is the old plan's historic
 * record; the member's identifiers at the source are added to the local Patient.
 *
 * The pure rules come first (each testable alone), then `ExchangeIngest`, one per exchange, which
 * applies them with bounded, cached look-ups and writes only through the exchange's undo journal.
 */

export const NPI_SYSTEM = 'http://hl7.org/fhir/sid/us-npi';
/** The directory types matched to existing records; imported before any other type so references to them can be rewritten. */
export const DIRECTORY_TYPES: ReadonlySet<string> = new Set(['Organization', 'Practitioner', 'Location']);
/** Identifiers of one record used to match it, at most: a record listing hundreds costs no more look-ups. */
export const MAX_MATCH_KEYS = 5;
/** Candidates read per look-up, at most (the choice among them is deterministic). */
export const MAX_CANDIDATES = 20;
/** The tag an imported Coverage carries: the old plan's record, not a coverage of this plan. */
export const PRIOR_COVERAGE_TAG = { system: 'urn:p2p-fhir-server:record-role', code: 'prior-plan-coverage', display: "The source payer's coverage, kept as its historic record" };
const IMPORT_TAG_SYSTEM = 'urn:p2p-fhir-server:imported-from';
/**
 * The identifier a matched record gets for each received record merged into it: the local id that
 * record would have had. A later exchange whose records refer to it without sending it again (a
 * run-off's `_since` export) finds the record it was merged into by this.
 */
export const MERGED_SYSTEM = 'urn:p2p-fhir-server:merged-local-id';
/** A reference to a directory record as an import writes it (reference-rewriter.ts `localIdFor`). */
const LOCAL_DIRECTORY_REF = /^(Organization|Practitioner|Location)\/(p2p-[0-9a-f]{40})$/;

/** Every `reference` string of a resource that names a directory record by its imported local id. */
export function directoryReferences(resource: Resource): string[] {
  const out: string[] = [];
  const walk = (value: unknown, key?: string): void => {
    if (typeof value === 'string') {
      if (key === 'reference' && LOCAL_DIRECTORY_REF.test(value)) out.push(value);
    } else if (Array.isArray(value)) for (const v of value) walk(v);
    else if (value && typeof value === 'object') for (const [k, v] of Object.entries(value)) walk(v, k);
  };
  walk(resource);
  return out;
}

type WithIdentifiers = Resource & { identifier?: Identifier[] };
const token = (i: { system?: string; value?: string }) => `${i.system}|${i.value}`;
const usable = (i: Identifier | undefined): i is Identifier & { system: string; value: string } =>
  !!i && typeof i.system === 'string' && typeof i.value === 'string' && i.system.length > 0 && i.system.length <= 1024 && i.value.trim().length > 0 && i.value.length <= 256;

/**
 * The tokens (`system|value`) a directory record is matched by: a Practitioner's or Organization's
 * NPIs (ten digits under `http://hl7.org/fhir/sid/us-npi`), a Location's identifiers; never the
 * identifier that records its id at the source (`originSystem`). Sorted, at most MAX_MATCH_KEYS.
 */
export function matchKeys(resource: Resource, originSystem: string): string[] {
  const ids = ((resource as WithIdentifiers).identifier ?? []).filter(usable).filter((i) => i.system !== originSystem && i.system !== MERGED_SYSTEM);
  const wanted = resource.resourceType === 'Location' ? ids : ids.filter((i) => i.system === NPI_SYSTEM && /^\d{10}$/.test(i.value));
  return [...new Set(wanted.map(token))].sort().slice(0, MAX_MATCH_KEYS);
}

/** Whether an Organization carries one of the source payer's registered identifiers (its SOURCE_PAYERS_FILE `identifiers`). */
export function isSourcePayerOrganization(resource: Resource, registered: readonly { system: string; value: string }[]): boolean {
  if (resource.resourceType !== 'Organization' || registered.length === 0) return false;
  const known = new Set(registered.map(token));
  return ((resource as WithIdentifiers).identifier ?? []).some((i) => known.has(token(i)));
}

export interface Candidate {
  id: string;
  /** Not imported from any source: the payer's own record (or one made here by hand). */
  payerOwned: boolean;
  /** Already carries this record's origin identifier (a previous run matched it here). */
  hasOrigin: boolean;
}

/**
 * Which existing record a received one becomes, or undefined to keep its own: its own local record
 * when that is among the candidates (its source owns it), else the one an earlier run matched it to,
 * else the payer's own, else the first by id. The same data always gives the same answer.
 */
export function chooseExisting(ownId: string, candidates: readonly Candidate[]): string | undefined {
  if (candidates.length === 0 || candidates.some((c) => c.id === ownId)) return undefined;
  const rank = (c: Candidate) => (c.hasOrigin ? 0 : c.payerOwned ? 1 : 2);
  return [...candidates].sort((a, b) => rank(a) - rank(b) || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0))[0].id;
}

/** The record with these identifiers added where missing (by `system|value`); undefined when it has them all. */
export function withIdentifiers<T extends Resource>(resource: T, add: readonly Identifier[]): T | undefined {
  const have = new Set(((resource as WithIdentifiers).identifier ?? []).map(token));
  const missing: Identifier[] = [];
  for (const i of add) {
    if (!usable(i) || have.has(token(i))) continue;
    have.add(token(i));
    missing.push(i);
  }
  if (missing.length === 0) return undefined;
  return { ...resource, identifier: [...((resource as WithIdentifiers).identifier ?? []), ...missing] };
}

/**
 * The identifiers the local Patient gets from an exchange (data-mapping step 2): the member's
 * identifier the source answered and the member's id at the source, each once; never a second
 * value under a system the local Patient already has (a source cannot give the member another
 * identifier in this payer's own member system, nor replace one).
 */
export function memberIdentifiersToAdd(local: Patient, given: readonly (Identifier | undefined)[]): Identifier[] {
  const have = local.identifier ?? [];
  const tokens = new Set(have.map(token));
  const systems = new Set(have.map((i) => i.system));
  const out: Identifier[] = [];
  for (const i of given) {
    if (!usable(i) || tokens.has(token(i)) || systems.has(i.system)) continue;
    tokens.add(token(i));
    systems.add(i.system);
    const { system, value, type, use, assigner } = i;
    out.push({ ...(use ? { use } : {}), ...(type ? { type } : {}), system, value, ...(assigner?.display ? { assigner: { display: assigner.display } } : {}) });
  }
  return out;
}

/** Every `reference` replaced by its alias (`Type/id` → `Type/id`); undefined when none applies (the record is only read, not copied). */
export function applyAliases<T extends Resource>(resource: T, aliases: ReadonlyMap<string, string>): T | undefined {
  if (aliases.size === 0) return undefined;
  const hits = (value: unknown, key?: string): boolean => {
    if (typeof value === 'string') return key === 'reference' && aliases.has(value);
    if (Array.isArray(value)) return value.some((v) => hits(v));
    if (value && typeof value === 'object') return Object.entries(value).some(([k, v]) => hits(v, k));
    return false;
  };
  if (!hits(resource)) return undefined;
  const walk = (value: unknown, key?: string): unknown => {
    if (typeof value === 'string') return key === 'reference' ? (aliases.get(value) ?? value) : value;
    if (Array.isArray(value)) return value.map((v) => walk(v));
    if (value && typeof value === 'object') {
      const out: Record<string, unknown> = {};
      for (const [k, v] of Object.entries(value)) out[k] = walk(v, k);
      return out;
    }
    return value;
  };
  return walk(resource) as T;
}

/**
 * An imported Coverage as the old plan's historic record: the source's status and period kept as
 * sent (the record is the old plan's; R4's `status` is the record's own, `period` says when it was
 * in force), tagged PRIOR_COVERAGE_TAG, its payor the source payer. One that names this payer as
 * payor (a source cannot give the member a coverage of this plan) is left out: undefined.
 */
export function priorCoverage(coverage: Coverage, thisPayer: { reference?: string; identifiers: readonly { system: string; value: string }[] }): Coverage | undefined {
  const ours = new Set(thisPayer.identifiers.map(token));
  const namesUs = (r: Reference) => (thisPayer.reference !== undefined && r.reference === thisPayer.reference) || (!!r.identifier && ours.has(token(r.identifier)));
  if ((coverage.payor ?? []).some(namesUs)) return undefined;
  const tags = (coverage.meta?.tag ?? []).filter((t) => !(t.system === PRIOR_COVERAGE_TAG.system && t.code === PRIOR_COVERAGE_TAG.code));
  return { ...coverage, meta: { ...(coverage.meta ?? {}), tag: [...tags, PRIOR_COVERAGE_TAG] } };
}

/** The turn of directory batches in this process (see `prepare`). */
let directoryTurn: Promise<void> = Promise.resolve();

/** A record found by a match key: its id, whether the payer owns it, its identifiers' tokens. */
interface Found {
  id: string;
  payerOwned: boolean;
  tokens: Set<string>;
}

/** The local records of one batch as the importer holds them (a hash made beforehand is dropped once a record changes). */
export interface IngestRecord {
  resource: Resource;
  hash?: string;
  bytes?: number;
}

export interface IngestOptions {
  store: ResourceStore;
  journal: ImportJournal;
  taskId: string;
  /** The identifier system imported records keep their source id under (the source's responderIdentifierSystem). */
  originSystem: string;
  /** The source payer's Organization here (`Organization/{id}`, the Tasks' owner) and its registered identifiers. */
  sourcePayer: { reference: string; identifiers: readonly { system: string; value: string }[] };
  /** This payer's Organization (`Organization/{id}`) and identifiers (PAYER_IDENTIFIERS). */
  thisPayer: { reference?: string; identifiers: readonly { system: string; value: string }[] };
}

/**
 * One exchange's ingestion rules over the store. Directory records are resolved batch by batch,
 * before the rest of the exchange is imported: each distinct match key is looked up once (one
 * indexed search, cached for the exchange), the choice is `chooseExisting`'s, and a matched record
 * is not written: the existing one keeps its content and gets the received record's identifiers
 * where missing, through the journal (a failed exchange puts it back). Every later record's
 * references to a matched one are rewritten to it (`aliases`).
 */
export class ExchangeIngest {
  /** `Type/{local id of the received record}` → `Type/{existing record}`. */
  readonly aliases = new Map<string, string>();
  /** Records left out, by reason. */
  readonly leftOut: Record<string, number> = {};
  private readonly candidates = new Map<string, Found[]>();
  private readonly claimed = new Map<string, string>();
  /** Directory references (`Type/id`) already looked at by `learnMerged`. */
  private readonly known = new Set<string>();
  lookups = 0;

  constructor(private readonly o: IngestOptions) {}

  /** Records of the exchange that were left out (`Type/id`). */
  readonly dropped = new Set<string>();

  /** The local reference an imported one ends up as (itself, or the existing record it was matched to); undefined if it was left out. */
  resolved(reference: string): string | undefined {
    if (this.dropped.has(reference)) return undefined;
    return this.aliases.get(reference) ?? reference;
  }

  /**
   * A batch of one type, ready to be planned and written: references aliased, Coverage as history.
   * A directory batch is resolved and written here (nothing is left for the caller to write).
   */
  async prepare(type: string, batch: IngestRecord[]): Promise<IngestRecord[]> {
    await this.learnMerged(batch);
    let out = batch;
    if (this.aliases.size) out = out.map((r) => {
      const aliased = applyAliases(r.resource, this.aliases);
      return aliased ? { resource: aliased, bytes: r.bytes } : r;
    });
    if (DIRECTORY_TYPES.has(type)) {
      // Only this server says what was merged into what: a source's own claims of it are dropped.
      out = out.map((r) => {
        const ids = (r.resource as WithIdentifiers).identifier;
        return ids?.some((i) => i.system === MERGED_SYSTEM) ? { resource: { ...r.resource, identifier: ids.filter((i) => i.system !== MERGED_SYSTEM) } as Resource, bytes: r.bytes } : r;
      });
      // One directory batch at a time in this process, resolved and written together: two exchanges
      // (two sources, or two members of one group) sending the same NPI at once still make one record.
      const turn = directoryTurn.then(() => this.resolveDirectory(type, out));
      directoryTurn = turn.then(() => undefined, () => undefined);
      await turn;
      return [];
    }
    if (type === 'Coverage') {
      const kept: IngestRecord[] = [];
      for (const r of out) {
        const c = priorCoverage(r.resource as Coverage, this.o.thisPayer);
        if (c) kept.push({ resource: c, bytes: r.bytes });
        else {
          this.dropped.add(`Coverage/${r.resource.id}`);
          this.leftOut['Coverage naming this payer as payor'] = (this.leftOut['Coverage naming this payer as payor'] ?? 0) + 1;
        }
      }
      out = kept;
    }
    return out;
  }

  /**
   * Directory records this batch refers to that neither this exchange resolved nor the store holds
   * under that id: the records an earlier exchange merged them into (MERGED_SYSTEM), as aliases.
   * Each reference is looked up once per exchange, two queries per type and batch at most.
   */
  private async learnMerged(batch: IngestRecord[]): Promise<void> {
    const wanted = new Map<string, Set<string>>();
    for (const r of batch) {
      for (const ref of directoryReferences(r.resource)) {
        if (this.aliases.has(ref) || this.known.has(ref)) continue;
        const [type, id] = ref.split('/');
        wanted.set(type, (wanted.get(type) ?? new Set()).add(id));
      }
    }
    for (const [type, set] of wanted) {
      const ids = [...set];
      for (let i = 0; i < ids.length; i += 500) {
        const some = ids.slice(i, i + 500);
        for (const f of await this.o.store.search(type, { _id: { $in: some } })) this.known.add(`${type}/${f.id}`);
        const missing = some.filter((id) => !this.known.has(`${type}/${id}`));
        for (const id of missing) this.known.add(`${type}/${id}`);
        if (missing.length === 0) continue;
        const wantedTokens = new Set(missing.map((id) => `${MERGED_SYSTEM}|${id}`));
        const into = (await this.o.store.search(type, { 's.identifier': { $in: [...wantedTokens] } }, { sort: { _id: 1 } })) as WithIdentifiers[];
        for (const e of into) {
          for (const idf of e.identifier ?? []) {
            const ref = `${type}/${idf.value}`;
            if (wantedTokens.has(token(idf)) && !this.aliases.has(ref)) this.aliases.set(ref, `${type}/${e.id}`);
          }
        }
      }
    }
  }

  /** The records holding this match key (one indexed search per distinct key and type, cached for the exchange). */
  private async lookup(type: string, key: string): Promise<Found[]> {
    const cacheKey = `${type} ${key}`;
    const known = this.candidates.get(cacheKey);
    if (known) return known;
    this.lookups++;
    const found = (await this.o.store.search(type, { 's.identifier': key }, { sort: { _id: 1 }, limit: MAX_CANDIDATES })) as WithIdentifiers[];
    const list = found.map((r) => ({ id: r.id as string, payerOwned: !(r.meta?.tag ?? []).some((t) => t.system === IMPORT_TAG_SYSTEM), tokens: new Set((r.identifier ?? []).map(token)) }));
    this.candidates.set(cacheKey, list);
    return list;
  }

  /** Resolves a batch of directory records and writes it: the records kept as this source's own, and the identifiers added to the existing ones matched. */
  private async resolveDirectory(type: string, batch: IngestRecord[]): Promise<void> {
    const { originSystem, sourcePayer } = this.o;
    const keep: IngestRecord[] = [];
    /** Existing record id → identifiers to add to it. */
    const additions = new Map<string, Identifier[]>();
    for (const r of batch) {
      const res = r.resource as WithIdentifiers;
      const ownId = res.id as string;
      const origin = (res.identifier ?? []).filter((i) => i.system === originSystem);
      let target: string | undefined;
      let add: Identifier[] = origin;
      if (isSourcePayerOrganization(res, sourcePayer.identifiers)) {
        target = sourcePayer.reference.slice('Organization/'.length);
        const registered = new Set(sourcePayer.identifiers.map(token));
        add = [...origin, ...(res.identifier ?? []).filter((i) => registered.has(token(i)))];
      } else {
        const keys = matchKeys(res, originSystem);
        // Claimed earlier in this exchange (another received record with the same NPI) wins; then what the store holds.
        const claimed = keys.map((k) => this.claimed.get(`${type} ${k}`)).find((id) => id !== undefined);
        if (claimed !== undefined && claimed !== ownId) target = claimed;
        else if (claimed === undefined && keys.length) {
          const originTokens = new Set(origin.map(token));
          const seen = new Map<string, Candidate>();
          for (const k of keys) {
            for (const c of await this.lookup(type, k)) {
              const hasOrigin = [...originTokens].some((t) => c.tokens.has(t));
              const prev = seen.get(c.id);
              seen.set(c.id, { id: c.id, payerOwned: c.payerOwned, hasOrigin: hasOrigin || !!prev?.hasOrigin });
            }
          }
          target = chooseExisting(ownId, [...seen.values()]);
        }
        for (const k of keys) if (!this.claimed.has(`${type} ${k}`)) this.claimed.set(`${type} ${k}`, target ?? ownId);
      }
      if (target === undefined || target === ownId) {
        keep.push(r);
        continue;
      }
      this.aliases.set(`${type}/${ownId}`, `${type}/${target}`);
      additions.set(target, [...(additions.get(target) ?? []), ...add, { system: MERGED_SYSTEM, value: ownId }]);
    }
    // A kept record keeps what other sources added to it: a directory record's identifiers only grow.
    const keptIds = keep.map((r) => r.resource.id as string);
    const stored = new Map(keptIds.length ? ((await this.o.store.search(type, { _id: { $in: keptIds } })) as WithIdentifiers[]).map((s) => [s.id as string, s]) : []);
    const out = keep.map((r) => {
      const id = r.resource.id as string;
      const before = stored.get(id)?.identifier ?? [];
      const grown = withIdentifiers(r.resource, [...before, ...(additions.get(id) ?? [])]);
      additions.delete(id);
      return grown ? { resource: grown, bytes: r.bytes } : r;
    });
    for (const id of keptIds) this.known.add(`${type}/${id}`);
    if (out.length) await this.o.journal.writeMany(this.o.taskId, type, await this.o.store.planWrites(type, out.map((r) => r.resource), out.map((r) => r.hash)));
    // The existing records matched: only the identifiers they lack, through the journal.
    if (additions.size) {
      const existing = (await this.o.store.search(type, { _id: { $in: [...additions.keys()] } })) as WithIdentifiers[];
      const updated = existing.flatMap((e) => {
        const grown = withIdentifiers(e, additions.get(e.id as string) ?? []);
        if (!grown) return [];
        const { versionId: _v, lastUpdated: _l, ...meta } = grown.meta ?? {};
        return [{ ...grown, meta }];
      });
      if (updated.length) await this.o.journal.writeMany(this.o.taskId, type, await this.o.store.planWrites(type, updated));
    }
  }
}
