import type { Group, Resource } from 'fhir/r4';
import { patientIdOf } from '../fhir/reference';
import { ResourceStore } from '../store/resource-store';
import { Filter } from '../store/types';
import { collectSupportingReferences, PatientCompartment, SUPPORTING_TYPES } from '../fhir/compartment';
import { JobContext, JobFailure } from '../jobs/job-runner';
import { AccessPolicy, NOT_FOR_A_CLIENT } from '../access/access-policy';
import type { Role } from '../auth/client-registry';
import { ExportFiles } from './export-files';
import { compileTypeFilter, ExportRequest } from './export-request';
import { SearchRegistry } from '../fhir/search/registry';
import { inPayerToPayerScope, priorAuthorizationDocumentation } from './service-window';
import { outcome } from '../fhir/outcome';
import { PayerOrganization, TransmitterLog } from './transmitter-provenance';

export const EXPORT_JOB = 'bulk-export';
/** The file of an export's transmitter Provenance (beside `Provenance.ndjson`, the members' own). */
const SENT_FILE = 'Provenance-1.ndjson';


export interface ExportOutput {
  type: string;
  name: string;
  count: number;
}

export interface ExportJobData {
  /** The client that started the export, and its role then: only it reads the status and files. */
  owner: string;
  role: Role;
  /** For a partner, the members whose data the files hold (each one's grant is checked again at every download). */
  members?: string[];
  requestUrl: string;
  request: ExportRequest;
  transactionTime: string;
  output?: ExportOutput[];
  /** The manifest's `error` files: OperationOutcomes about the request (members withheld). */
  errorOutput?: ExportOutput[];
  progress?: string;
  expiresAt?: number;
}

/**
 * Runs one bulk export: streams each type's matching resources from the store into NDJSON files,
 * then adds the practitioners, organizations, locations and medications the exported data
 * references. What goes in is what the owner may see when the job runs: a partner's export covers
 * only the members it holds a grant for now (whatever level it was started at), and only what each
 * one's consent allows. A restarted job starts its files afresh.
 */
export class ExportJobHandler {
  constructor(
    private readonly store: ResourceStore,
    private readonly registry: SearchRegistry,
    private readonly compartment: PatientCompartment,
    private readonly access: AccessPolicy,
    private readonly files: ExportFiles,
    private readonly fileTtlMs: number,
    private readonly now: () => Date = () => new Date(),
    /** This payer's Organization: the transmitter named in each export's Provenance (§pdex-127); none: no transmitter Provenance. */
    private readonly payer?: PayerOrganization,
  ) {}

  run = async (ctx: JobContext<ExportJobData>): Promise<void> => {
    const { job, signal } = ctx;
    const data = job.data;
    const req = data.request;
    await this.files.reset(job._id);
    let scope = await this.access.scopeFor({ clientId: data.owner, role: data.role ?? 'partner' });
    let patientIds = req.level === 'group' ? await this.groupMembers(req.groupId as string) : req.patientIds;
    // $davinci-data-export's `patient`: a subset of the Group's members (others are ignored).
    if (req.level === 'group' && req.patientIds) patientIds = (patientIds ?? []).filter((id) => req.patientIds?.includes(id));
    if (scope.members) {
      const granted = scope.members;
      patientIds = (patientIds ?? [...granted.keys()]).filter((id) => granted.has(id));
      await ctx.checkpoint({ members: patientIds });
      // The export's own members: its filters name them, not every member the partner holds.
      scope = scope.only(patientIds);
    }
    const errorOutput: ExportOutput[] = [];
    if (req.reportWithheld) {
      const asked = req.level === 'group' ? (req.patientIds ?? (await this.groupMembers(req.groupId as string))) : (req.patientIds ?? []);
      const exported = new Set(patientIds ?? []);
      const withheld = asked.filter((id) => !exported.has(id));
      if (withheld.length) {
        const writer = this.files.open(job._id, 'OperationOutcome.ndjson');
        for (const id of withheld) await writer.write(outcome('warning', 'not-found', `Patient/${id} is not exported: not a member of the Group, or no consent in force for this client`));
        await writer.close();
        errorOutput.push({ type: 'OperationOutcome', name: 'OperationOutcome.ndjson', count: writer.count });
      }
    }
    const patientLevel = req.level !== 'system' || !!scope.members;
    const referenced = new Map<string, Set<string>>();
    const output: ExportOutput[] = [];
    const until = req.until ?? Date.parse(data.transactionTime);
    // §pdex-127: what the export sends is named as sent by this payer, in Provenance of MAX_TARGETS targets at most.
    const transmitting = !!this.payer && req.types.includes('Provenance');
    if (transmitting) await this.payer?.ensure();
    const log = transmitting && this.payer ? new TransmitterLog(`transmitter-${job._id}`, data.transactionTime, { reference: this.payer.reference, name: this.payer.name }) : undefined;
    let sentFile: ReturnType<ExportFiles['open']> | undefined;
    const sent = async (resource: Resource) => {
      // Each transmitter Provenance names one member's records (a group's files split by member keep it whole).
      const about = this.compartment.has(resource.resourceType) ? this.compartment.aboutOf(resource) : [];
      const chunk = log?.sent(resource, about.length === 1 ? about[0] : '');
      if (!chunk) return;
      sentFile ??= this.files.open(job._id, SENT_FILE);
      await sentFile.write(chunk);
    };
    let memberRecords = 0;

    const mainTypes = patientLevel ? req.types.filter((t) => this.compartment.has(t)) : req.types;
    // A partner's export keeps PDex's rules for prior authorizations (and, for $davinci-data-export, the window of dates of service).
    const payerToPayer = req.serviceFrom !== undefined || !!scope.members;
    const documentation = payerToPayer && mainTypes.includes('ExplanationOfBenefit') ? await this.priorAuthorizationDocumentation(patientIds, scope) : new Set<string>();
    const now = this.now().getTime();
    for (const [i, type] of mainTypes.entries()) {
      const visible = scope.filter(type);
      if (visible === null) continue;
      const conditions: Filter[] = [{ lu: { $lte: until } }, visible];
      if (patientLevel) conditions.push(this.compartment.filter(type, patientIds));
      // The result Groups of a client's $bulk-member-match are the operation's answer, not a member's data.
      if (patientLevel && type === 'Group') conditions.push(NOT_FOR_A_CLIENT);
      if (req.since !== undefined) conditions.push({ lu: { $gt: req.since } });
      const tf = (req.typeFilters[type] ?? []).map((q) => compileTypeFilter(this.registry, type, q));
      if (tf.length) conditions.push(tf.length === 1 ? tf[0] : { $or: tf });
      const writer = this.files.open(job._id, `${type}.ndjson`);
      for await (const resource of this.store.stream(type, { $and: conditions })) {
        if (signal.aborted) throw signal.reason;
        if (!scope.canSee(resource)) continue;
        if (payerToPayer && !inPayerToPayerScope(resource as never, req.serviceFrom, now, documentation)) continue;
        await writer.write(scope.view(resource));
        await sent(resource);
        if (this.compartment.has(type)) memberRecords++;
        if (patientLevel) collectSupportingReferences(resource, referenced);
      }
      await writer.close();
      if (writer.count > 0) output.push({ type, name: `${type}.ndjson`, count: writer.count });
      await ctx.checkpoint({ progress: `${i + 1} of ${mainTypes.length} resource types exported` });
    }

    if (patientLevel) {
      const supporting = SUPPORTING_TYPES.filter((t) => req.types.includes(t) && !mainTypes.includes(t));
      // The transmitter's own Organization goes with the member data its Provenance names it in.
      if (log && memberRecords > 0 && this.payer) {
        if (!referenced.has('Organization')) referenced.set('Organization', new Set());
        referenced.get('Organization')?.add(this.payer.id);
      }
      await this.closeOverReferences(supporting, referenced, signal);
      for (const type of supporting) {
        const ids = [...(referenced.get(type) ?? [])];
        if (ids.length === 0) continue;
        const writer = this.files.open(job._id, `${type}.ndjson`);
        for (let i = 0; i < ids.length; i += 500) {
          for await (const resource of this.store.stream(type, { _id: { $in: ids.slice(i, i + 500) } })) {
            if (!scope.canSee(resource)) continue;
            await writer.write(resource);
            await sent(resource);
          }
        }
        await writer.close();
        if (writer.count > 0) output.push({ type, name: `${type}.ndjson`, count: writer.count });
      }
    }
    if (log && (memberRecords > 0 || sentFile)) {
      for (const rest of log.flush()) {
        sentFile ??= this.files.open(job._id, SENT_FILE);
        await sentFile.write(rest);
      }
    }
    if (sentFile) {
      await sentFile.close();
      output.push({ type: 'Provenance', name: SENT_FILE, count: sentFile.count });
    }
    await ctx.checkpoint({ output, errorOutput, progress: 'complete', expiresAt: this.now().getTime() + this.fileTtlMs });
  };

  /** Follows references between supporting resources (a Location's managing Organization…) until nothing new turns up; keeps ids only. */
  private async closeOverReferences(types: string[], referenced: Map<string, Set<string>>, signal: AbortSignal): Promise<void> {
    const visited = new Map<string, Set<string>>(types.map((t) => [t, new Set<string>()]));
    for (;;) {
      let progressed = false;
      for (const type of types) {
        const seen = visited.get(type) as Set<string>;
        const pending = [...(referenced.get(type) ?? [])].filter((id) => !seen.has(id));
        if (pending.length === 0) continue;
        progressed = true;
        pending.forEach((id) => seen.add(id));
        for (let i = 0; i < pending.length; i += 500) {
          if (signal.aborted) throw signal.reason;
          for await (const r of this.store.stream(type, { _id: { $in: pending.slice(i, i + 500) } })) collectSupportingReferences(r, referenced);
        }
      }
      if (!progressed) return;
    }
  }

  /** The documentation (DocumentReference, QuestionnaireResponse, Binary) that the members' prior authorizations in force refer to. */
  private async priorAuthorizationDocumentation(patientIds: string[] | undefined, scope: { filter(type: string): Filter | null }): Promise<Set<string>> {
    const out = new Set<string>();
    const visible = scope.filter('ExplanationOfBenefit');
    if (visible === null) return out;
    const filter: Filter = { $and: [visible, this.compartment.filter('ExplanationOfBenefit', patientIds)] };
    for await (const eob of this.store.stream('ExplanationOfBenefit', filter)) priorAuthorizationDocumentation(eob as never, out);
    return out;
  }

  private async groupMembers(groupId: string): Promise<string[]> {
    const group = (await this.store.readIfExists('Group', groupId)) as Group | undefined;
    if (!group) throw new JobFailure(`Group/${groupId} no longer exists`);
    return (group.member ?? [])
      .map((m) => patientIdOf(m.entity?.reference))
      .filter((id): id is string => !!id);
  }
}
