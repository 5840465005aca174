import { randomUUID } from 'node:crypto';
import type { AuditEvent, AuditEventEntity } from 'fhir/r4';
import { ResourceStore } from '../store/resource-store';
import type { Logger } from '../logger';

/** The client agent's identifier system: search `AuditEvent?altid={client}` or `agent-name={client}`. */
export const CLIENT_AGENT_SYSTEM = 'urn:ietf:rfc:3986';

export type AuditKind = 'token' | 'member-match' | 'bulk-member-match' | 'export' | 'download' | 'read' | 'search' | 'exchange';

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
}

const TYPES: Record<AuditKind, { type: { system: string; code: string; display: string }; subtype: { system: string; code: string } }> = {
  token: { type: { system: 'http://dicom.nema.org/resources/ontology/DCM', code: '110114', display: 'User Authentication' }, subtype: { system: 'http://dicom.nema.org/resources/ontology/DCM', code: '110122' } },
  'member-match': { type: { system: 'http://terminology.hl7.org/CodeSystem/audit-event-type', code: 'rest', display: 'RESTful Operation' }, subtype: { system: 'http://hl7.org/fhir/restful-interaction', code: 'operation' } },
  'bulk-member-match': { type: { system: 'http://terminology.hl7.org/CodeSystem/audit-event-type', code: 'rest', display: 'RESTful Operation' }, subtype: { system: 'http://hl7.org/fhir/restful-interaction', code: 'operation' } },
  export: { type: { system: 'http://terminology.hl7.org/CodeSystem/audit-event-type', code: 'rest', display: 'RESTful Operation' }, subtype: { system: 'http://hl7.org/fhir/restful-interaction', code: 'operation' } },
  download: { type: { system: 'http://dicom.nema.org/resources/ontology/DCM', code: '110106', display: 'Export' }, subtype: { system: 'http://hl7.org/fhir/restful-interaction', code: 'read' } },
  read: { type: { system: 'http://terminology.hl7.org/CodeSystem/audit-event-type', code: 'rest', display: 'RESTful Operation' }, subtype: { system: 'http://hl7.org/fhir/restful-interaction', code: 'read' } },
  search: { type: { system: 'http://terminology.hl7.org/CodeSystem/audit-event-type', code: 'rest', display: 'RESTful Operation' }, subtype: { system: 'http://hl7.org/fhir/restful-interaction', code: 'search-type' } },
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
    ];
    const event: AuditEvent = {
      resourceType: 'AuditEvent',
      type: t.type,
      subtype: [t.subtype],
      action: r.action,
      recorded: new Date().toISOString(),
      outcome: r.outcome === 'success' ? '0' : '4',
      outcomeDesc: r.description.slice(0, 500),
      agent: [
        r.client
          ? { type: { coding: [{ system: 'http://terminology.hl7.org/CodeSystem/v3-ParticipationType', code: 'IRCP' }] }, who: { identifier: { system: CLIENT_AGENT_SYSTEM, value: `client:${r.client}` }, display: r.client }, altId: r.client, name: r.client, requestor: true }
          : { who: { display: this.observer }, requestor: true },
      ],
      source: { observer: { display: this.observer }, type: [{ system: 'http://terminology.hl7.org/CodeSystem/security-source-type', code: '4', display: 'Application Server' }] },
      ...(entity.length ? { entity } : {}),
    };
    try {
      await this.store.create(event, randomUUID());
    } catch (err) {
      this.logger.error('audit event not written', { kind: r.kind, client: r.client, error: (err as Error).message });
    }
  }
}
