import { CANONICALS } from '../conformance/operation-definitions';

/**
 * What a source payer serves of the exchange, as its CapabilityStatement declares it. Operations are
 * recognised by their canonical (`rest.resource[].operation[].definition` and system-level
 * `rest.operation[].definition`, a `|version` suffix ignored) or by their name, so a source that
 * names an operation its own way but points at the IG's definition is understood, and so is one
 * that gives the name only.
 */
export interface SourceCapabilities {
  /** Whether a CapabilityStatement was read at all (false: nothing is known, every flag is false). */
  known: boolean;
  /** HRex `$member-match` (on Patient). */
  memberMatch: boolean;
  /** PDex `$bulk-member-match` (the narrative's `$multi-member-match`, on Group). */
  bulkMemberMatch: boolean;
  /** ATR `$davinci-data-export` (on Group). */
  davinciDataExport: boolean;
  /** Bulk Data's Patient-level `$export`. */
  patientExport: boolean;
  /** Bulk Data's Group-level `$export`. */
  groupExport: boolean;
  /** Bulk Data's system-level `$export`. */
  systemExport: boolean;
  /** Nothing known because the source could not be reached (network, 429, 5xx): worth asking again before choosing how to exchange. */
  unreachable?: boolean;
}

export const NOTHING_KNOWN: SourceCapabilities = { known: false, memberMatch: false, bulkMemberMatch: false, davinciDataExport: false, patientExport: false, groupExport: false, systemExport: false };

type Kind = Exclude<keyof SourceCapabilities, 'known'>;

const BULK_BASES = ['http://hl7.org/fhir/uv/bulkdata/OperationDefinition', 'http://hl7.org/fhir/us/bulkdata/OperationDefinition'];

/** Canonicals that say what an operation is wherever it is declared. */
const BY_CANONICAL = new Map<string, Kind>([
  [CANONICALS.memberMatch, 'memberMatch'],
  [CANONICALS.bulkMemberMatch, 'bulkMemberMatch'],
  [CANONICALS.davinciDataExport, 'davinciDataExport'],
  ...BULK_BASES.flatMap((b): [string, Kind][] => [
    [`${b}/patient-export`, 'patientExport'],
    [`${b}/group-export`, 'groupExport'],
  ]),
]);

/** The Bulk Data `export` canonical names no level: where it is declared says which. */
const BULK_EXPORT = new Set(BULK_BASES.map((b) => `${b}/export`));

/** Names, by where they are declared (`*`: on any resource or at system level). */
const BY_NAME: Record<string, { kind: Kind; where: string[] }[]> = {
  'member-match': [{ kind: 'memberMatch', where: ['Patient', 'system'] }],
  'bulk-member-match': [{ kind: 'bulkMemberMatch', where: ['Group', 'system'] }],
  'multi-member-match': [{ kind: 'bulkMemberMatch', where: ['Group', 'system'] }],
  'davinci-data-export': [{ kind: 'davinciDataExport', where: ['Group', 'system'] }],
  export: [
    { kind: 'patientExport', where: ['Patient'] },
    { kind: 'groupExport', where: ['Group'] },
    { kind: 'systemExport', where: ['system'] },
  ],
};

const exportAt = (where: string): Kind | undefined => (where === 'Patient' ? 'patientExport' : where === 'Group' ? 'groupExport' : where === 'system' ? 'systemExport' : undefined);

function canonicalOf(definition: unknown): string | undefined {
  if (typeof definition !== 'string') return undefined;
  const bar = definition.indexOf('|');
  return (bar >= 0 ? definition.slice(0, bar) : definition).trim().replace(/\/+$/, '');
}

function nameOf(name: unknown): string | undefined {
  return typeof name === 'string' ? name.trim().replace(/^\$/, '').toLowerCase() : undefined;
}

/** What the operation entry `op`, declared at `where` (a resource type or `system`), says the source serves. */
function kindsOf(op: unknown, where: string): Kind[] {
  if (!op || typeof op !== 'object') return [];
  const { name, definition } = op as { name?: unknown; definition?: unknown };
  const canonical = canonicalOf(definition);
  const kinds: Kind[] = [];
  const byCanonical = canonical ? BY_CANONICAL.get(canonical) : undefined;
  if (byCanonical) kinds.push(byCanonical);
  if (canonical && BULK_EXPORT.has(canonical)) {
    const at = exportAt(where);
    if (at) kinds.push(at);
  }
  const n = nameOf(name);
  for (const rule of (n && Object.prototype.hasOwnProperty.call(BY_NAME, n) ? BY_NAME[n] : [])) if (rule.where.includes(where)) kinds.push(rule.kind);
  return kinds;
}

const list = (v: unknown): unknown[] => (Array.isArray(v) ? v : []);

/**
 * Reads a CapabilityStatement (any JSON: a source's answer is not trusted to be one) into what the
 * source serves. Every `rest` entry in server mode (or without a mode) counts; anything else
 * (not a CapabilityStatement, a client-mode statement) is nothing known.
 */
export function describeSource(statement: unknown): SourceCapabilities {
  const cs = statement as { resourceType?: unknown; rest?: unknown } | undefined;
  if (!cs || typeof cs !== 'object' || cs.resourceType !== 'CapabilityStatement') return { ...NOTHING_KNOWN };
  const found: SourceCapabilities = { ...NOTHING_KNOWN, known: true };
  for (const rest of list(cs.rest)) {
    const r = rest as { mode?: unknown; operation?: unknown; resource?: unknown } | undefined;
    if (!r || typeof r !== 'object' || (r.mode !== undefined && r.mode !== 'server')) continue;
    for (const op of list(r.operation)) for (const k of kindsOf(op, 'system')) found[k] = true;
    for (const resource of list(r.resource)) {
      const type = (resource as { type?: unknown } | undefined)?.type;
      if (typeof type !== 'string') continue;
      for (const op of list((resource as { operation?: unknown }).operation)) for (const k of kindsOf(op, type)) found[k] = true;
    }
  }
  return found;
}

/** The flags that are set, for a Task note and a log line (nothing of the source's own text). */
export function servedList(c: SourceCapabilities): string[] {
  const names: [Kind, string][] = [
    ['memberMatch', '$member-match'],
    ['bulkMemberMatch', '$bulk-member-match'],
    ['davinciDataExport', '$davinci-data-export'],
    ['patientExport', 'Patient/$export'],
    ['groupExport', 'Group/$export'],
    ['systemExport', '$export'],
  ];
  return names.filter(([k]) => c[k]).map(([, n]) => n);
}
