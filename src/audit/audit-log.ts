import { randomUUID } from 'node:crypto';
import type { Request } from 'express';
import type { AuditEvent, AuditEventAgent, AuditEventEntity, Resource } from 'fhir/r4';
import { ResourceStore } from '../store/resource-store';
import type { Logger } from '../logger';

/** The client agent's identifier system: search `AuditEvent?altid={client}` or `agent-name={client}`. */
export const CLIENT_AGENT_SYSTEM = 'urn:ietf:rfc:3986';

/** The agent of a refused token request: it proved nothing, so whatever client id it claimed is only a detail. */
export const UNAUTHENTICATED_AGENT = 'unauthenticated';

/** The ways a partner is shown member data through the REST API, each audited as a disclosure. */
export type DisclosureInteraction = 'read' | 'vread' | 'history-instance' | 'history-type' | 'history-system' | 'search' | 'everything';

export type AuditKind = 'token' | 'member-match' | 'bulk-member-match' | 'export' | 'download' | DisclosureInteraction | 'exchange';

export interface AuditRecord {
  kind: AuditKind;
  /** C create, R read, U update, D delete, E execute. */
  action: 'C' | 'R' | 'U' | 'D' | 'E';
  outcome: 'success' | 'failure';
  /** The client (the agent), by id. */
  client?: string;
  /** The members concerned, by local Patient id. */
  patients?: string[];
  /** Other resources concerned (`Task/…`, a type searched): references or type names. */
  what?: string[];
  /** What happened, in a few words with ids and counts only: never demographics or tokens. */
  description: string;
  /** The caller's network address (`agent.network`). */
  address?: string;
  /**
   * A caller that did not authenticate (a refused token request): the agent is `unauthenticated`,
   * never the client it claimed to be; the claimed id (sanitized, truncated) is kept as an entity's detail.
   */
  unauthenticated?: { claimed?: string };
}

const REST = { system: 'http://terminology.hl7.org/CodeSystem/audit-event-type', code: 'rest', display: 'RESTful Operation' };
const interaction = (code: string) => ({ type: REST, subtype: { system: 'http://hl7.org/fhir/restful-interaction', code } });

/** A claimed client id as it may be kept: printable id characters only, at most 64 of them. */
export function sanitizeClaimedId(id: string): string {
  return id.slice(0, 64).replace(/[^A-Za-z0-9._~:@/+-]/g, '?');
}

const TYPES: Record<AuditKind, { type: { system: string; code: string; display: string }; subtype: { system: string; code: string } }> = {
  token: { type: { system: 'http://dicom.nema.org/resources/ontology/DCM', code: '110114', display: 'User Authentication' }, subtype: { system: 'http://dicom.nema.org/resources/ontology/DCM', code: '110122' } },
  'member-match': { type: { system: 'http://terminology.hl7.org/CodeSystem/audit-event-type', code: 'rest', display: 'RESTful Operation' }, subtype: { system: 'http://hl7.org/fhir/restful-interaction', code: 'operation' } },
  'bulk-member-match': { type: { system: 'http://terminology.hl7.org/CodeSystem/audit-event-type', code: 'rest', display: 'RESTful Operation' }, subtype: { system: 'http://hl7.org/fhir/restful-interaction', code: 'operation' } },
  export: { type: { system: 'http://terminology.hl7.org/CodeSystem/audit-event-type', code: 'rest', display: 'RESTful Operation' }, subtype: { system: 'http://hl7.org/fhir/restful-interaction', code: 'operation' } },
  download: { type: { system: 'http://dicom.nema.org/resources/ontology/DCM', code: '110106', display: 'Export' }, subtype: { system: 'http://hl7.org/fhir/restful-interaction', code: 'read' } },
  read: interaction('read'),
  vread: interaction('vread'),
  'history-instance': interaction('history-instance'),
  'history-type': interaction('history-type'),
  'history-system': interaction('history-system'),
  search: interaction('search-type'),
  everything: interaction('operation'),
  exchange: { type: { system: 'http://dicom.nema.org/resources/ontology/DCM', code: '110107', display: 'Import' }, subtype: { system: 'http://hl7.org/fhir/restful-interaction', code: 'operation' } },
};

/**
 * The audit trail (IHE Basic Audit Log Patterns, in R4 AuditEvent): who (the client) did what
 * (tokens, member matches, exports and downloads, partners' reads and searches, exchanges) to which
 * members, when, and how it ended. Written by the server only; readable and searchable (patient,
 * altid/agent-name, date, type, subtype) by service clients only. Holds ids and counts, never
 * demographics, queries or tokens. A failure to write it is logged, never the request's failure.
 */
export class AuditLog {
  constructor(private readonly store: ResourceStore, private readonly logger: Logger, private readonly observer: string) {}

  async record(r: AuditRecord): Promise<void> {
    const t = TYPES[r.kind];
    const entity: AuditEventEntity[] = [
      ...(r.patients ?? []).map((id) => ({ what: { reference: `Patient/${id}` }, type: { system: 'http://terminology.hl7.org/CodeSystem/audit-entity-type', code: '1', display: 'Person' } })),
      ...(r.what ?? []).map((w) => (w.includes('/') ? { what: { reference: w } } : { name: w, type: { system: 'http://hl7.org/fhir/resource-types', code: w } })),
      ...(r.unauthenticated?.claimed
        ? [{ type: { system: 'http://terminology.hl7.org/CodeSystem/audit-entity-type', code: '2', display: 'System Object' }, description: 'client id claimed by the request (not verified)', detail: [{ type: 'claimed-client-id', valueString: sanitizeClaimedId(r.unauthenticated.claimed) }] }]
        : []),
    ];
    const network = r.address ? { network: { address: r.address.slice(0, 64), type: '2' as const } } : {};
    const agent: AuditEventAgent = r.unauthenticated
      ? { who: { display: 'unauthenticated client' }, name: UNAUTHENTICATED_AGENT, requestor: true, ...network }
      : r.client
        ? { type: { coding: [{ system: 'http://terminology.hl7.org/CodeSystem/v3-ParticipationType', code: 'IRCP' }] }, who: { identifier: { system: CLIENT_AGENT_SYSTEM, value: `client:${r.client}` }, display: r.client }, altId: r.client, name: r.client, requestor: true, ...network }
        : { who: { display: this.observer }, requestor: true, ...network };
    const event: AuditEvent = {
      resourceType: 'AuditEvent',
      type: t.type,
      subtype: [t.subtype],
      action: r.action,
      recorded: new Date().toISOString(),
      outcome: r.outcome === 'success' ? '0' : '4',
      outcomeDesc: r.description.slice(0, 500),
      agent: [agent],
      source: { observer: { display: this.observer }, type: [{ system: 'http://terminology.hl7.org/CodeSystem/security-source-type', code: '4', display: 'Application Server' }] },
      ...(entity.length ? { entity } : {}),
    };
    try {
      await this.store.create(event, randomUUID());
    } catch (err) {
      this.logger.error('audit event not written', { kind: r.kind, client: r.client, error: (err as Error).message });
    }
  }

  /**
   * The one hook every partner read path calls (read, vread, each history level, search with its
   * `_include`/`_revinclude` entries, `$everything`): one AuditEvent naming the client, the members
   * the disclosed records belong to (`patientsOf`) and their types.
   */
  disclosures(patientsOf: (resource: Resource) => string[]): (req: Request, interaction: DisclosureInteraction, type: string, resources: Resource[]) => Promise<void> {
    const label: Record<DisclosureInteraction, string> = { read: 'read', vread: 'vread', 'history-instance': 'history', 'history-type': 'history', 'history-system': 'history', search: 'search', everything: '$everything' };
    return (req, kind, type, resources) => {
      const patients = [...new Set(resources.flatMap((r) => patientsOf(r)))].slice(0, 1000);
      const types = [...new Set([type, ...resources.map((r) => r.resourceType)])].slice(0, 100);
      return this.record({ kind, action: 'R', outcome: 'success', client: req.access?.clientId, address: req.ip, patients, what: types, description: `${label[kind]} of ${type}: ${resources.length} resource(s)` });
    };
  }
}
