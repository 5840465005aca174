import type { Consent, Group, Resource } from 'fhir/r4';
import { patientIdOf } from '../fhir/reference';
import { ResourceStore } from '../store/resource-store';
import { Filter } from '../store/types';
import { PatientCompartment } from '../fhir/compartment';
import { JobContext, JobFailure } from '../jobs/job-runner';
import { ConsentPolicy, consentPolicy, isSensitive } from './consent-policy';
import { CLIENT_TAG_SYSTEM } from './member-match';
import { ExportFiles } from './export-files';
import { compileTypeFilter, ExportRequest } from './export-request';
import { SearchRegistry } from '../fhir/search/registry';

export const EXPORT_JOB = 'bulk-export';

/** Types outside the Patient compartment that a patient-level export brings along when referenced, so the data still resolves. */
export const SUPPORTING_TYPES = ['Practitioner', 'PractitionerRole', 'Organization', 'Location', 'Medication'];

export interface ExportOutput {
  type: string;
  name: string;
  count: number;
}

export interface ExportJobData {
  owner: string;
  requestUrl: string;
  request: ExportRequest;
  transactionTime: string;
  output?: ExportOutput[];
  progress?: string;
  expiresAt?: number;
}

/**
 * Runs one bulk export: streams each type's matching resources from the store into NDJSON files,
 * honouring each member's consent (a `#regular` consent, or none on file, leaves out resources
 * labelled sensitive), then adds the practitioners, organizations, locations and medications the
 * exported data references. A restarted job starts its files afresh.
 */
export class ExportJobHandler {
  constructor(
    private readonly store: ResourceStore,
    private readonly registry: SearchRegistry,
    private readonly compartment: PatientCompartment,
    private readonly files: ExportFiles,
    private readonly fileTtlMs: number,
    private readonly now: () => Date = () => new Date(),
  ) {}

  run = async (ctx: JobContext<ExportJobData>): Promise<void> => {
    const { job, signal } = ctx;
    const data = job.data;
    const req = data.request;
    await this.files.reset(job._id);
    const patientLevel = req.level !== 'system';
    const patientIds = req.level === 'group' ? await this.groupMembers(req.groupId as string) : req.patientIds;
    const policies = new Map<string, ConsentPolicy>();
    const referenced = new Map<string, Set<string>>();
    const output: ExportOutput[] = [];
    const until = req.until ?? Date.parse(data.transactionTime);

    const mainTypes = patientLevel ? req.types.filter((t) => this.compartment.has(t)) : req.types;
    for (const [i, type] of mainTypes.entries()) {
      const conditions: Filter[] = [{ lu: { $lte: until } }];
      if (patientLevel) conditions.push(this.compartment.filter(type, patientIds));
      if (req.since !== undefined) conditions.push({ lu: { $gt: req.since } });
      const tf = (req.typeFilters[type] ?? []).map((q) => compileTypeFilter(this.registry, type, q));
      if (tf.length) conditions.push(tf.length === 1 ? tf[0] : { $or: tf });
      const writer = this.files.open(job._id, `${type}.ndjson`);
      for await (const resource of this.store.stream(type, { $and: conditions })) {
        if (signal.aborted) throw signal.reason;
        if (patientLevel && isSensitive(resource) && !(await this.mayShareSensitive(resource, data.owner, policies))) continue;
        await writer.write(resource);
        if (patientLevel) collectReferences(resource, referenced);
      }
      await writer.close();
      if (writer.count > 0) output.push({ type, name: `${type}.ndjson`, count: writer.count });
      await ctx.checkpoint({ progress: `${i + 1} of ${mainTypes.length} resource types exported` });
    }

    if (patientLevel) {
      const supporting = SUPPORTING_TYPES.filter((t) => req.types.includes(t) && !mainTypes.includes(t));
      await this.closeOverReferences(supporting, referenced, signal);
      for (const type of supporting) {
        const ids = [...(referenced.get(type) ?? [])];
        if (ids.length === 0) continue;
        const writer = this.files.open(job._id, `${type}.ndjson`);
        for (let i = 0; i < ids.length; i += 500) {
          for await (const resource of this.store.stream(type, { _id: { $in: ids.slice(i, i + 500) } })) await writer.write(resource);
        }
        await writer.close();
        if (writer.count > 0) output.push({ type, name: `${type}.ndjson`, count: writer.count });
      }
    }
    await ctx.checkpoint({ output, progress: 'complete', expiresAt: this.now().getTime() + this.fileTtlMs });
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
          for await (const r of this.store.stream(type, { _id: { $in: pending.slice(i, i + 500) } })) collectReferences(r, referenced);
        }
      }
      if (!progressed) return;
    }
  }

  private async groupMembers(groupId: string): Promise<string[]> {
    const group = (await this.store.readIfExists('Group', groupId)) as Group | undefined;
    if (!group) throw new JobFailure(`Group/${groupId} no longer exists`);
    return (group.member ?? [])
      .map((m) => patientIdOf(m.entity?.reference))
      .filter((id): id is string => !!id);
  }

  /** A sensitive resource is shared only if every member it belongs to gave this client a `#sensitive` consent. */
  private async mayShareSensitive(resource: Resource, owner: string, cache: Map<string, ConsentPolicy>): Promise<boolean> {
    const patients = this.compartment.patientsOf(resource);
    if (patients.length === 0) return false;
    for (const id of patients) {
      let policy = cache.get(id);
      if (!policy) {
        policy = await this.policyFor(id, owner);
        cache.set(id, policy);
      }
      if (policy !== 'sensitive') return false;
    }
    return true;
  }

  private async policyFor(patientId: string, owner: string): Promise<ConsentPolicy> {
    const [latest] = (await this.store.search(
      'Consent',
      { $and: [{ 's.patient': `Patient/${patientId}` }, { 's._tag': `${CLIENT_TAG_SYSTEM}|${owner}` }] },
      { sort: { lu: -1 }, limit: 1 },
    )) as Consent[];
    if (!latest) return 'regular';
    const result = consentPolicy(latest, this.now());
    return 'policy' in result ? result.policy : 'regular';
  }
}

function collectReferences(value: unknown, into: Map<string, Set<string>>): void {
  if (Array.isArray(value)) {
    for (const v of value) collectReferences(v, into);
  } else if (value && typeof value === 'object') {
    for (const [k, v] of Object.entries(value)) {
      if (k === 'reference' && typeof v === 'string') {
        const m = v.match(/^(Practitioner|PractitionerRole|Organization|Location|Medication)\/([A-Za-z0-9\-.]{1,64})$/);
        if (m) {
          if (!into.has(m[1])) into.set(m[1], new Set());
          into.get(m[1])?.add(m[2]);
        }
      } else if (typeof v === 'object') collectReferences(v, into);
    }
  }
}
