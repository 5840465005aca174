import type { CapabilityStatement, CapabilityStatementRestResourceOperation } from 'fhir/r4';

export interface CapabilityOptions {
  base: () => string;
  authRequired: boolean;
  tokenEndpoint?: () => string;
  /** System- and type-level operations served outside the core's profile routes (bulk export). */
  extraOperations: CapabilityStatementRestResourceOperation[];
  /** Operations on a resource type, added to its entry. */
  typeOperations: Record<string, CapabilityStatementRestResourceOperation[]>;
  version: string;
}

/**
 * A statementGenerator for node-fhir-server-core: the core assembles the resource entries from
 * the profiles' services; this adds what the core does not know (security, bulk export).
 */
export function capabilityGenerator(opts: CapabilityOptions) {
  return () => ({
    makeStatement: (rest: Record<string, unknown>): CapabilityStatement => {
      const resources = ((rest.resource as Record<string, unknown>[]) ?? []).map((r) => {
        const ops = opts.typeOperations[r.type as string];
        return ops ? { ...r, operation: ops } : r;
      });
      const restEntry: Record<string, unknown> = {
        mode: 'server',
        resource: resources,
        interaction: [{ code: 'history-system' }],
        operation: [...((rest.operation as CapabilityStatementRestResourceOperation[]) ?? []), ...opts.extraOperations],
      };
      if (opts.authRequired && opts.tokenEndpoint) {
        restEntry.security = {
          cors: true,
          service: [{ coding: [{ system: 'http://terminology.hl7.org/CodeSystem/restful-security-service', code: 'SMART-on-FHIR' }] }],
          extension: [
            {
              url: 'http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris',
              extension: [{ url: 'token', valueUri: opts.tokenEndpoint() }],
            },
          ],
        };
      }
      return {
        resourceType: 'CapabilityStatement',
        status: 'active',
        date: new Date().toISOString(),
        kind: 'instance',
        software: { name: 'p2p-fhir-server', version: opts.version },
        implementation: { description: 'FHIR R4 server for the Da Vinci payer-to-payer exchange', url: opts.base() },
        fhirVersion: '4.0.1',
        format: ['application/fhir+json', 'application/json'],
        rest: [restEntry as never],
      } as CapabilityStatement;
    },
    securityStatement: () => ({}),
  });
}
