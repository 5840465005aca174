import { createHash } from 'node:crypto';
import type { Identifier, Organization, Provenance, Resource } from 'fhir/r4';
import { contentHash, ResourceStore } from '../store/resource-store';

/** PDex's Provenance profile (§pdex-127: each exchange carries one naming the payer as transmitter). */
export const PDEX_PROVENANCE = 'http://hl7.org/fhir/us/davinci-pdex/StructureDefinition/pdex-provenance';
/** The agent type the PDex profile and its examples use for the transmitter (ExampleProvenanceTransmitter). */
export const TRANSMITTER = { system: 'http://hl7.org/fhir/us/core/CodeSystem/us-core-provenance-participant-type', code: 'transmitter', display: 'Transmitter' };
const US_CORE_ORGANIZATION = 'http://hl7.org/fhir/us/core/StructureDefinition/us-core-organization';
/** Targets in one transmitter Provenance at most: a big export gets several, none of them huge. */
export const MAX_TARGETS = 1000;

export interface ThisPayer {
  /** The Organization's id (PAYER_ORGANIZATION_ID). */
  id: string;
  /** PAYER_NAME. */
  name: string;
  identifiers?: Identifier[];
}

/** This payer as an Organization (US Core Organization: active, name, identifiers where configured). */
export function payerOrganization(payer: ThisPayer): Organization {
  return {
    resourceType: 'Organization',
    id: payer.id,
    meta: { profile: [US_CORE_ORGANIZATION] },
    ...(payer.identifiers?.length ? { identifier: payer.identifiers } : {}),
    active: true,
    type: [{ coding: [{ system: 'http://terminology.hl7.org/CodeSystem/organization-type', code: 'pay', display: 'Payer' }] }],
    name: payer.name,
  };
}

/**
 * This payer's Organization in the store, as configured: written when missing or changed (a new
 * PAYER_NAME), by the module that needs it, once per process unless it is found gone.
 */
export class PayerOrganization {
  constructor(private readonly store: ResourceStore, private readonly payer: ThisPayer) {}

  get reference(): string {
    return `Organization/${this.payer.id}`;
  }

  get id(): string {
    return this.payer.id;
  }

  /** The stored Organization (written first when missing or not as configured). */
  async ensure(): Promise<Organization> {
    const wanted = payerOrganization(this.payer);
    const stored = (await this.store.readIfExists('Organization', this.payer.id)) as Organization | undefined;
    if (stored && contentHash(stored) === contentHash(wanted)) return stored;
    return (await this.store.update('Organization', this.payer.id, wanted)).resource as Organization;
  }

  get name(): string {
    return this.payer.name;
  }
}

/**
 * The transmitter Provenance of one exchange (PDex Provenance profile, §pdex-127): this payer's
 * Organization as agent `transmitter`, `target` the records sent (at most MAX_TARGETS: call once
 * per chunk), `recorded` the exchange's time. Made per exchange, not stored; `id` stable for it.
 */
export function transmitterProvenance(id: string, targets: string[], recorded: string, payer: { reference: string; name: string }): Provenance {
  return {
    resourceType: 'Provenance',
    id,
    meta: { profile: [PDEX_PROVENANCE] },
    target: targets.map((reference) => ({ reference })),
    recorded,
    activity: { coding: [{ system: 'http://terminology.hl7.org/CodeSystem/v3-DataOperation', code: 'CREATE', display: 'create' }], text: 'Payer-to-payer exchange: sent' },
    agent: [
      {
        type: { coding: [TRANSMITTER] },
        who: { reference: payer.reference, display: payer.name },
      },
    ],
  };
}

/** A stable id for something made once per answer: a short hash of what names it. */
export function stableId(prefix: string, ...parts: string[]): string {
  return `${prefix}-${createHash('sha1').update(parts.join('\u0000')).digest('hex').slice(0, 24)}`;
}

/**
 * Gathers what an exchange sent, and gives the transmitter Provenance chunk by chunk (MAX_TARGETS
 * targets each). Records are kept apart by `key` (the member they are about): each Provenance names
 * one member's records only, so a requester that splits a group's files by member can give each
 * member its own (one naming two members would belong to neither); directory records go together.
 */
export class TransmitterLog {
  private pending = new Map<string, string[]>();
  private made = 0;

  constructor(private readonly idPrefix: string, private readonly recorded: string, private readonly payer: { reference: string; name: string }) {}

  /** Notes one record sent; answers a full chunk's Provenance when one is due. */
  sent(resource: Resource, key = ''): Provenance | undefined {
    let list = this.pending.get(key);
    if (!list) this.pending.set(key, (list = []));
    list.push(`${resource.resourceType}/${resource.id}`);
    if (list.length < MAX_TARGETS) return undefined;
    this.pending.delete(key);
    return this.make(list);
  }

  /** The Provenance of what is left, one per key (none: nothing). */
  flush(): Provenance[] {
    const out = [...this.pending.values()].filter((l) => l.length > 0).map((l) => this.make(l));
    this.pending.clear();
    return out;
  }

  private make(targets: string[]): Provenance {
    return transmitterProvenance(`${this.idPrefix}-${++this.made}`, targets, this.recorded, this.payer);
  }
}
