import type { Binary, DocumentReference, Provenance, Reference } from 'fhir/r4';
import { localIdFor } from './reference-rewriter';
import { BLOB_TAG_SYSTEM } from '../fhir/internal-markers';

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

/** The Provenance of an exchange: the source payer as author, this payer as performer, the Task and the archived files as sources. */
export function provenanceOf(args: { taskId: string; issuer: string; targets: string[]; archived: Reference[]; ownerReference: string; sourceName: string; requesterDisplay: string; now: string }): Provenance {
  return {
    resourceType: 'Provenance',
    id: localIdFor('provenance', args.taskId, args.issuer),
    target: args.targets.map((reference) => ({ reference })),
    recorded: args.now,
    activity: { coding: [{ system: 'http://terminology.hl7.org/CodeSystem/v3-DataOperation', code: 'CREATE', display: 'create' }], text: 'Payer-to-payer import' },
    reason: [{ text: 'Da Vinci PDex payer-to-payer exchange' }],
    agent: [
      { type: { coding: [{ system: 'http://terminology.hl7.org/CodeSystem/provenance-participant-type', code: 'author' }] }, who: { reference: args.ownerReference, display: args.sourceName } },
      { type: { coding: [{ system: 'http://terminology.hl7.org/CodeSystem/provenance-participant-type', code: 'performer' }] }, who: { display: args.requesterDisplay } },
    ],
    entity: [{ role: 'source', what: { reference: `Task/${args.taskId}` } }, ...args.archived.map((what) => ({ role: 'source' as const, what }))],
  };
}
