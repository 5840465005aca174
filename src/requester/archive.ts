import type { Binary, DocumentReference, Provenance, Reference } from 'fhir/r4';
import { localIdFor } from './reference-rewriter';
import { BLOB_TAG_SYSTEM } from '../fhir/internal-markers';
import { PDEX_PROVENANCE, TRANSMITTER } from '../responder/transmitter-provenance';

/** The agent type of this payer in its import Provenance, as PDex's ExampleProvenanceCustodian has it. */
export const CUSTODIAN = { system: 'http://terminology.hl7.org/CodeSystem/provenance-participant-type', code: 'custodian', display: 'Custodian' };

/** Where an exchange's received files are kept as blobs: one folder per exchange. */
export const archiveFolder = (taskId: string) => `archive/${taskId}/`;

/**
 * The received file as an auditor sees it: a DocumentReference, and a Binary whose content (the
 * unaltered NDJSON) is the blob `blobKey`, read at `Binary/{id}`.
 */
export function archiveOf(args: {
  taskId: string;
  name: string;
  type: string;
  count: number;
  size: number;
  sha1: string;
  blobKey: string;
  localPatientId: string;
  ownerReference: string;
  sourceName: string;
  issuer: string;
  now: string;
}): { binary: Binary; doc: DocumentReference } {
  const binaryId = localIdFor('archive', args.taskId, `${args.name}#binary`);
  const docId = localIdFor('archive', args.taskId, args.name);
  const binary: Binary = {
    resourceType: 'Binary',
    id: binaryId,
    meta: { tag: [{ system: BLOB_TAG_SYSTEM, code: args.blobKey }] },
    contentType: 'application/fhir+ndjson',
    securityContext: { reference: `Patient/${args.localPatientId}` },
  };
  const doc: DocumentReference = {
    resourceType: 'DocumentReference',
    id: docId,
    status: 'current',
    type: { text: 'Payer-to-payer data as received' },
    category: [{ coding: [{ system: 'urn:p2p-fhir-server:document', code: 'p2p-received-file' }] }],
    subject: { reference: `Patient/${args.localPatientId}` },
    date: args.now,
    author: [{ reference: args.ownerReference, display: args.sourceName }],
    description: `${args.type} file from ${args.issuer}: ${args.count} resources`,
    content: [{ attachment: { contentType: 'application/fhir+ndjson', url: `Binary/${binaryId}`, size: args.size, hash: args.sha1, title: args.name } }],
    context: { related: [{ reference: `Task/${args.taskId}` }] },
  };
  return { binary, doc };
}

/**
 * This payer's Provenance of an import (PDex Provenance profile): the source payer as agent
 * `transmitter` (§pdex-127: it transmitted, it did not author), this payer as `custodian` (the
 * action taken to become the data's custodian, §pdex-11 and ExampleProvenanceCustodian), the Task
 * and the archived files as sources. The source's own Provenance is kept as a record of its own.
 */
export function provenanceOf(args: { taskId: string; issuer: string; targets: string[]; archived: Reference[]; ownerReference: string; sourceName: string; custodian: Reference; now: string }): Provenance[] {
  // At most TARGETS_PER_PROVENANCE targets a record (a member of 50,000 resources is 50 records, each
  // within the store's index limits); the first keeps the id an import's Provenance always had.
  const chunks: string[][] = [];
  for (let i = 0; i < args.targets.length; i += TARGETS_PER_PROVENANCE) chunks.push(args.targets.slice(i, i + TARGETS_PER_PROVENANCE));
  if (chunks.length === 0) chunks.push([]);
  return chunks.map((targets, n) => importProvenance(args, targets, n === 0 ? localIdFor('provenance', args.taskId, args.issuer) : localIdFor('provenance', args.taskId, `${args.issuer}#${n}`)));
}

/** Targets of one import Provenance, at most. */
export const TARGETS_PER_PROVENANCE = 1000;

function importProvenance(args: Parameters<typeof provenanceOf>[0], targets: string[], id: string): Provenance {
  return {
    resourceType: 'Provenance',
    id,
    meta: { profile: [PDEX_PROVENANCE] },
    target: targets.map((reference) => ({ reference })),
    recorded: args.now,
    activity: { coding: [{ system: 'http://terminology.hl7.org/CodeSystem/v3-DataOperation', code: 'CREATE', display: 'create' }], text: 'Payer-to-payer import' },
    reason: [{ text: 'Da Vinci PDex payer-to-payer exchange' }],
    agent: [
      { type: { coding: [TRANSMITTER] }, who: { reference: args.ownerReference, display: args.sourceName } },
      { type: { coding: [CUSTODIAN] }, who: args.custodian },
    ],
    entity: [{ role: 'source', what: { reference: `Task/${args.taskId}` } }, ...args.archived.map((what) => ({ role: 'source' as const, what }))],
  };
}
