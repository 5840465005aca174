import type { CapabilityStatement, CapabilityStatementRest, CapabilityStatementRestResource, CapabilityStatementRestResourceOperation } from 'fhir/r4';
import type { ServedOperation } from '../conformance/operation-definitions';
import { SUPPORTED_PROFILES } from './supported-profiles';

export interface CapabilityOptions {
  base: () => string;
  authRequired: boolean;
  tokenEndpoint?: () => string;
  /** Every operation served, with where; the statement advertises each exactly there. */
  operations: () => ServedOperation[];
  version: string;
  /** Who runs this server (the payer). */
  publisher: string;
}

/** The Implementation Guides whose server side this server implements, and the statements it instantiates. */
export const IMPLEMENTATION_GUIDES = [
  'http://hl7.org/fhir/us/davinci-hrex/ImplementationGuide/hl7.fhir.us.davinci-hrex',
  'http://hl7.org/fhir/us/davinci-pdex/ImplementationGuide/hl7.fhir.us.davinci-pdex',
  'http://hl7.org/fhir/uv/bulkdata/ImplementationGuide/hl7.fhir.uv.bulkdata',
];
export const INSTANTIATES = [
  'http://hl7.org/fhir/uv/bulkdata/CapabilityStatement/bulk-data',
  'http://hl7.org/fhir/us/davinci-pdex/CapabilityStatement/pdex-server',
  'http://hl7.org/fhir/us/davinci-pdex/CapabilityStatement/pdex-payer-access-server',
];

const operationEntry = (op: ServedOperation): CapabilityStatementRestResourceOperation => ({ name: op.name, definition: op.canonical });

/** The interactions a resource service implements, named as a CapabilityStatement names them. */
const INTERACTIONS: [string, string][] = [
  ['search', 'search-type'],
  ['searchById', 'read'],
  ['searchByVersionId', 'vread'],
  ['create', 'create'],
  ['update', 'update'],
  ['patch', 'patch'],
  ['remove', 'delete'],
  ['history', 'history-type'],
  ['historyById', 'history-instance'],
];
export function interactionsOf(service: Record<string, unknown>): { code: string }[] {
  return INTERACTIONS.filter(([method]) => typeof service[method] === 'function').map(([, code]) => ({ code }));
}

/**
 * The CapabilityStatement: each resource type with the interactions its service implements,
 * operations where they are served (system or type, definitions as canonical strings), SMART
 * security when auth is on, and nothing that is not served (no system history, no system-level type operations).
 */
export function buildCapabilityStatement(opts: CapabilityOptions, entries: CapabilityStatementRestResource[]): CapabilityStatement {
  const operations = opts.operations();
  const resources = entries.map((r) => {
    const ops = operations.filter((op) => op.levels.types?.includes(r.type)).map(operationEntry);
    const profiles = SUPPORTED_PROFILES[r.type];
    const withProfiles = profiles ? { ...r, supportedProfile: profiles } : r;
    return ops.length ? { ...withProfiles, operation: ops } : withProfiles;
  });
  const rest: CapabilityStatementRest = {
    mode: 'server',
    documentation: 'Payer-to-payer exchange: source side ($member-match, $everything, bulk $export) and requesting side ($sdh.s2s.invoke-export)',
    resource: resources,
    interaction: [{ code: 'transaction' }, { code: 'batch' }, { code: 'history-system' }],
    operation: operations.filter((op) => op.levels.system).map(operationEntry),
  };
  if (opts.authRequired && opts.tokenEndpoint) {
    rest.security = {
      cors: true,
      service: [{ coding: [{ system: 'http://terminology.hl7.org/CodeSystem/restful-security-service', code: 'SMART-on-FHIR' }] }],
      description: 'SMART Backend Services (client_credentials with a signed JWT assertion, or client_secret_basic); see .well-known/smart-configuration',
      extension: [{ url: 'http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris', extension: [{ url: 'token', valueUri: opts.tokenEndpoint() }] }],
    };
  }
  return {
    resourceType: 'CapabilityStatement',
    url: `${opts.base()}/metadata`,
    version: opts.version,
    name: 'P2PFhirServer',
    title: 'Payer-to-payer FHIR server',
    status: 'active',
    experimental: false,
    date: new Date().toISOString(),
    publisher: opts.publisher,
    description: 'FHIR R4 server for the Da Vinci payer-to-payer exchange (HRex $member-match, PDex, Bulk Data export)',
    kind: 'instance',
    instantiates: INSTANTIATES,
    software: { name: 'p2p-fhir-server', version: opts.version },
    implementation: { description: 'FHIR R4 server for the Da Vinci payer-to-payer exchange', url: opts.base() },
    fhirVersion: '4.0.1',
    format: ['application/fhir+json', 'json'],
    implementationGuide: IMPLEMENTATION_GUIDES,
    rest: [rest],
  };
}
