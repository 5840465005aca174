import { createHash, randomUUID } from 'node:crypto';
import { patientIdOf } from '../fhir/reference';
import type { Request } from 'express';
import type { Consent, Coverage, Organization, Parameters, ParametersParameter, Patient, Resource, Task, TaskInput } from 'fhir/r4';
import { ResourceStore } from '../store/resource-store';
import { Collection, Database, DuplicateKeyError, StoredDoc } from '../store/types';
import { readParameters, first } from '../fhir/parameters';
import { badRequest, conflict, FhirError, notFound, unprocessable } from '../fhir/outcome';
import { parseInstant } from '../fhir/search/fhir-date';
import { isServedType } from '../fhir/resource-types';
import { JobRunner } from '../jobs/job-runner';
import { memberMatchParameters, readMemberMatchParts } from '../responder/member-match';
import { OrgIdentifier, withCanonicalPolicy } from '../responder/consent-policy';
import { completeConsent } from './consent-completion';
import { SourcePayer, SourcePayerRegistry } from './source-payers';
import { BULK_EXCHANGE_JOB, BulkExchangeJobData } from './bulk-exchange-job';

/** At most this many members in one bulk exchange request. */
export const MAX_BULK_EXCHANGE_MEMBERS = 10_000;
import { DATA_REQUEST_CODE, EXCHANGE_TAG, isTaskEnded, TaskTracker } from './task-tracker';
import { EXCHANGE_JOB, ExchangeJobData, MATCH_GROUP_OUTPUT } from './exchange-job';
import { memberDigest } from './member-demographics';
import type { Logger } from '../logger';
import type { AuditLog } from '../audit/audit-log';

const INVOKE_SPECS = [
  { name: 'localPatient', min: 1, max: 1, type: 'valueReference' },
  { name: 'sourceIssuerUrl', min: 1, max: 1, type: 'valueString' },
  { name: 'memberMatch', min: 1, max: 1, type: 'part' },
  { name: 'export', min: 0, max: 1, type: 'part' },
] as const;

const EXPORT_PARAMS = new Set(['_type', '_since', '_until', '_typeFilter', '_outputFormat']);

/**
 * One active exchange per (local patient, source). The lock is taken by inserting this document
 * (its _id is the pair), so exactly one request wins; it is `pending` while that request creates
 * the Task and the job, for at most PENDING_MS, then `active` until the exchange ends.
 */
interface LockDoc extends StoredDoc {
  taskId: string;
  state: 'pending' | 'active';
  pendingUntil: number;
}

const PENDING_MS = 60_000;
const TERMINAL_JOB = new Set(['completed', 'failed', 'cancelled']);

/** What the Consents sent to source payers are completed with (completeConsent). */
export interface ConsentDefaults {
  /** This payer's identifiers (PAYER_IDENTIFIERS), naming it as the recipient. */
  payerIdentifiers: readonly OrgIdentifier[];
  /** CONSENT_DEFAULT_DAYS: the period's length when the user gives no end. */
  defaultDays: number;
  /** This server's FHIR base, for the member's reference when the MemberPatient has no id. */
  baseUrl: () => string;
}

export interface InvokeExportRequest {
  localPatientId: string;
  issuer: string;
  memberMatch: Parameters;
  coverageToLink?: Coverage;
  consent: Consent;
  exportParams: Record<string, string[]>;
}

/** Reads and checks the operation's Parameters; every problem is a 400 naming the parameter. */
export function parseInvokeExport(body: unknown): InvokeExportRequest {
  const params = readParameters(body, [...INVOKE_SPECS]);
  const ref = (first<{ reference: string }>(params, 'localPatient', 'valueReference') as { reference: string }).reference;
  const localPatientId = patientIdOf(ref, { relativeOnly: true });
  if (!localPatientId) throw badRequest(`localPatient must reference a local Patient as Patient/{id}, got '${ref}'`, ['Parameters.localPatient']);
  const issuer = (first<string>(params, 'sourceIssuerUrl', 'valueString') as string).trim();
  if (!issuer) throw badRequest('sourceIssuerUrl is empty', ['Parameters.sourceIssuerUrl']);

  const memberMatch = readMemberMatchParts(params.get('memberMatch')?.[0]?.part as ParametersParameter[], 'memberMatch');
  // A source honours HRex's policies by their canonical URL only: a shorthand is sent as that.
  memberMatch.consent = withCanonicalPolicy(memberMatch.consent);

  const exportParams: Record<string, string[]> = {};
  const exportParts = (params.get('export')?.[0]?.part ?? []) as ParametersParameter[];
  for (const p of exportParts) {
    if (!p || !EXPORT_PARAMS.has(p.name)) throw badRequest(`export: unsupported parameter '${p?.name}' (use ${[...EXPORT_PARAMS].join(', ')})`, [`export.${p?.name}`]);
    const value = p.valueString ?? p.valueInstant ?? p.valueDateTime ?? p.valueCode ?? p.valueUri;
    if (typeof value !== 'string' || !value) throw badRequest(`export: parameter '${p.name}' must have a string value`, [`export.${p.name}`]);
    if ((p.name === '_since' || p.name === '_until') && parseInstant(value) === undefined) {
      throw badRequest(`export: ${p.name} must be a FHIR instant such as 2020-01-01T00:00:00Z`, [`export.${p.name}`]);
    }
    if (p.name === '_type') {
      for (const t of value.split(',')) if (!isServedType(t.trim())) throw badRequest(`export: _type names '${t.trim()}', which this server cannot store`, ['export._type']);
    }
    if ((p.name === '_since' || p.name === '_until' || p.name === '_outputFormat') && exportParams[p.name]) throw badRequest(`export: ${p.name} may appear only once`, [`export.${p.name}`]);
    exportParams[p.name] = [...(exportParams[p.name] ?? []), value];
  }

  return {
    localPatientId,
    issuer,
    memberMatch: memberMatchParameters(memberMatch),
    coverageToLink: memberMatch.coverageToLink,
    consent: memberMatch.consent,
    exportParams,
  };
}

/**
 * POST Patient/$sdh.s2s.invoke-export: checks the request, records the Task (status requested),
 * enqueues the exchange keyed by the Task's id, and answers at once. A second exchange for the same
 * member and source while one is active is refused with 409 naming the running Task.
 */
export class InvokeExportService {
  private readonly locks: Collection<LockDoc>;
  /** The source payers' Organizations, as last checked (see ownerFor). */
  private readonly owners = new Map<string, { owner: Promise<Organization>; until: number }>();

  constructor(
    db: Database,
    private readonly store: ResourceStore,
    private readonly payers: SourcePayerRegistry,
    private readonly tracker: TaskTracker,
    private readonly runner: JobRunner,
    private readonly requesterName: string,
    private readonly logger: Logger,
    private readonly audit?: AuditLog,
    private readonly consentDefaults: ConsentDefaults = { payerIdentifiers: [], defaultDays: 365, baseUrl: () => '' },
  ) {
    this.locks = db.collection<LockDoc>('exchange_locks');
  }

  /** Locks are released by their Task. */
  async ensureIndexes(): Promise<void> {
    await this.locks.createIndex(['taskId']);
  }

  async handle(body: unknown, req: Request): Promise<Task> {
    const request = parseInvokeExport(body);
    const payer = this.payers.get(request.issuer);
    if (!payer) throw unprocessable(`sourceIssuerUrl '${request.issuer}' is not a registered source payer`, 'not-found');
    if (!(await this.store.readIfExists('Patient', request.localPatientId))) {
      throw unprocessable(`localPatient Patient/${request.localPatientId} does not exist on this server`, 'not-found');
    }
    const task = await this.start(request, payer);
    req.res?.set('Content-Location', `Task/${task.id}`);
    return task;
  }

  /** The source payer as an Organization here (the Tasks' owner), kept in step with the registry's name. */
  /**
   * The source payer's Organization, the owner of its exchange Tasks: written when missing or
   * renamed. Concurrent requests share one check (a minute at most), so a burst of exchanges does
   * not race to write it; one that loses a race with another process finds it written.
   */
  private ownerFor(payer: SourcePayer): Promise<Organization> {
    const key = `${payer.issuer}|${payer.name ?? ''}`;
    const known = this.owners.get(key);
    if (known && known.until > Date.now()) return known.owner;
    const owner = this.ensureOwner(payer);
    this.owners.set(key, { owner, until: Date.now() + 60_000 });
    owner.catch(() => this.owners.delete(key));
    return owner;
  }

  /**
   * The owner carries the source's issuer and its registered identifiers (SOURCE_PAYERS_FILE
   * `identifiers`), so the source's own Organization, when an export brings it, is matched to it
   * (directory-match.ts): the source payer is one Organization here. Identifiers an import added are kept.
   */
  private async ensureOwner(payer: SourcePayer): Promise<Organization> {
    const ownerId = `source-payer-${createHash('sha256').update(payer.issuer).digest('hex').slice(0, 32)}`;
    const wanted = [{ system: 'urn:ietf:rfc:3986', value: payer.issuer }, ...(payer.identifiers ?? []).map(({ system, value }) => ({ system, value }))];
    const name = payer.name ?? payer.issuer;
    const current = async () => (await this.store.readIfExists('Organization', ownerId)) as Organization | undefined;
    const has = (o: Organization | undefined) => !!o && o.name === name && wanted.every((w) => (o.identifier ?? []).some((i) => i.system === w.system && i.value === w.value));
    const stored = await current();
    if (has(stored)) return stored as Organization;
    const kept = (stored?.identifier ?? []).filter((i) => !wanted.some((w) => w.system === i.system && w.value === i.value));
    const owner: Organization = { resourceType: 'Organization', id: ownerId, active: true, name, identifier: [...wanted, ...kept] };
    try {
      await this.store.update('Organization', ownerId, owner);
    } catch (err) {
      if (!(err instanceof FhirError && err.status === 412 && has(await current()))) throw err;
    }
    return owner;
  }

  /**
   * Records one member's exchange Task (a child of `partOf` when given) and enqueues its job; 409
   * while one is active for the member. A run-off (`runOff`) reuses an earlier exchange's match and
   * consent and asks only for what changed since its `transactionTime`.
   */
  private async start(given: InvokeExportRequest, payer: SourcePayer, partOf?: string, runOff?: { memberId: string; consentRef: string; since: string; previous: string; groupId?: string }, parked = false): Promise<Task> {
    const request = runOff ? given : this.withCompletedConsent(given, payer);
    const taskId = randomUUID();
    const lockId = await this.lock(request.localPatientId, payer.issuer, taskId);
    try {
      const owner = await this.ownerFor(payer);
      const consent = runOff ? { id: runOff.consentRef.split('/')[1] } : await this.store.create(localConsent(request.consent, request.localPatientId, payer.issuer) as Resource);
      const now = new Date().toISOString();
      const input: TaskInput[] = [
        { type: { text: 'sourceIssuerUrl' }, valueUrl: payer.issuer },
        ...Object.entries(request.exportParams).flatMap(([name, values]) => values.map((v) => ({ type: { text: name }, valueString: v }))),
      ];
      const payor = request.coverageToLink?.payor?.[0];
      const task: Task = {
        resourceType: 'Task',
        id: taskId,
        meta: { tag: [EXCHANGE_TAG] },
        ...(partOf ? { partOf: [{ reference: `Task/${partOf}` }] } : {}),
        status: 'requested',
        intent: 'order',
        code: DATA_REQUEST_CODE,
        for: { reference: `Patient/${request.localPatientId}` },
        focus: { reference: `Consent/${consent.id}` },
        owner: { reference: `Organization/${owner.id}`, display: owner.name },
        requester: payor ? { ...payor } : { display: this.requesterName },
        authoredOn: now,
        lastModified: now,
        businessStatus: { text: 'queued' },
        input,
        note: [{ time: now, text: runOff ? `Run-off of Task/${runOff.previous} requested from ${owner.name}: what changed since ${runOff.since}` : `Exchange requested from ${owner.name}` }],
        ...(runOff ? { basedOn: [{ reference: `Task/${runOff.previous}` }], output: [{ type: { text: 'MemberId' }, valueReference: { reference: `${payer.fhirBaseUrl}/Patient/${runOff.memberId}` } }, ...(runOff.groupId ? [{ type: { text: MATCH_GROUP_OUTPUT }, valueReference: { reference: `${payer.fhirBaseUrl}/Group/${runOff.groupId}` } }] : [])] } : {}),
      };
      const created = await this.tracker.create(task);
      // What the source's Patient is compared with, kept (hashed) after the match has emptied memberMatch.
      const member = memberDigest(request.memberMatch);
      const data: ExchangeJobData = {
        taskId,
        issuer: payer.issuer,
        localPatientId: request.localPatientId,
        memberMatch: request.memberMatch,
        ...(member ? { member } : {}),
        exportParams: request.exportParams,
        ownerReference: `Organization/${owner.id}`,
        startedAt: Date.now(),
        ...(runOff ? { matched: { memberId: runOff.memberId }, runOff: { previous: runOff.previous }, ...(runOff.groupId ? { bulk: { groupId: runOff.groupId } } : {}) } : {}),
      };
      await this.runner.enqueue(EXCHANGE_JOB, taskId, data, { parked });
      await this.locks.updateOne({ _id: lockId, taskId }, { state: 'active' });
      this.logger.info('exchange requested', { task: taskId, issuer: payer.issuer, ...(partOf ? { parent: partOf } : {}) });
      await this.audit?.record({ kind: 'exchange', action: 'E', outcome: 'success', patients: [request.localPatientId], what: [`Task/${taskId}`], description: `${runOff ? 'run-off' : 'exchange'} from ${payer.issuer} requested` });
      return created;
    } catch (err) {
      await this.release(taskId);
      throw err;
    }
  }

  /**
   * The request with its Consent completed as HRex's profile has it (completeConsent), the source
   * payer (its registration) named as the source and this payer as the recipient; the completed
   * Consent is what is sent and what is recorded here.
   */
  private withCompletedConsent(request: InvokeExportRequest, payer: SourcePayer): InvokeExportRequest {
    const parts = request.memberMatch.parameter ?? [];
    const consent = completeConsent(request.consent, {
      source: { name: payer.name ?? payer.issuer, identifiers: payer.identifiers },
      recipient: { name: this.requesterName, identifiers: this.consentDefaults.payerIdentifiers },
      memberPatient: parts.find((p) => p.name === 'MemberPatient')?.resource as Patient | undefined,
      localPatientUrl: `${this.consentDefaults.baseUrl()}/Patient/${request.localPatientId}`,
      defaultDays: this.consentDefaults.defaultDays,
      now: new Date(),
    });
    return { ...request, consent, memberMatch: { ...request.memberMatch, parameter: parts.map((p) => (p.name === 'Consent' ? { ...p, resource: consent } : p)) } };
  }

  /**
   * POST Task/{id}/$sdh.s2s.run-off: for a member with concurrent coverage, exchanges again what
   * changed at the source since a completed exchange (its `transactionTime`), without matching again
   * (the source's grant from that match still holds while the member's consent does).
   */
  async runOff(taskId: string, req?: Request): Promise<Task> {
    const previous = (await this.store.readIfExists('Task', taskId)) as Task | undefined;
    const isExchange = previous?.meta?.tag?.some((t) => t.system === EXCHANGE_TAG.system && t.code === EXCHANGE_TAG.code);
    if (!previous || !isExchange) throw notFound(`Task/${taskId} is not an exchange Task`);
    const out = (name: string) => previous.output?.find((o) => o.type?.text === name);
    const since = out('transactionTime')?.valueInstant;
    const memberId = patientIdOf(out('MemberId')?.valueReference?.reference);
    const issuer = previous.input?.find((i) => i.type?.text === 'sourceIssuerUrl')?.valueUrl;
    const localPatientId = patientIdOf(previous.for?.reference, { relativeOnly: true });
    if (previous.status !== 'completed' || !since || !memberId || !issuer || !localPatientId || !previous.focus?.reference) {
      throw unprocessable(`Task/${taskId} is not a completed exchange with a transactionTime: nothing to run off from`);
    }
    const payer = this.payers.get(issuer);
    if (!payer) throw unprocessable(`the source payer ${issuer} is no longer registered`, 'not-found');
    const refused = await this.consentRefusal(previous);
    if (refused) throw refused.status === 409 ? conflict(`No run-off for Task/${taskId}: ${refused.why}`) : unprocessable(`No run-off for Task/${taskId}: ${refused.why}`, 'business-rule');
    // The MatchedMembers Group of the earlier bulk match, on the source's own base: a run-off asks for it again where the source declares $davinci-data-export.
    const groupRef = out(MATCH_GROUP_OUTPUT)?.valueReference?.reference;
    const groupPrefix = `${payer.fhirBaseUrl.replace(/\/+$/, '')}/Group/`;
    const groupId = groupRef?.startsWith(groupPrefix) && /^[A-Za-z0-9\-.]{1,64}$/.test(groupRef.slice(groupPrefix.length)) ? groupRef.slice(groupPrefix.length) : undefined;
    const exportParams: Record<string, string[]> = {};
    for (const i of previous.input ?? []) {
      const name = i.type?.text;
      if (name && name !== 'sourceIssuerUrl' && name !== '_since' && typeof i.valueString === 'string') exportParams[name] = [...(exportParams[name] ?? []), i.valueString];
    }
    exportParams._since = [since];
    const request: InvokeExportRequest = { localPatientId, issuer, memberMatch: { resourceType: 'Parameters', parameter: [] }, consent: { resourceType: 'Consent' } as Consent, exportParams };
    const task = await this.start(request, payer, undefined, { memberId, consentRef: previous.focus.reference, since, previous: taskId, groupId });
    req?.res?.set('Content-Location', `Task/${task.id}`);
    return task;
  }

  /**
   * Why the member's consent recorded here (the exchange Task's focus, completed as HRex's Consent
   * profile has it) allows no further data from the source, if it does not: it is gone, no longer
   * `active` (revoked: inactive, rejected, entered-in-error…; 409), or its `provision.period` has
   * ended (expired; 422). A consent that is not yet in force is refused the same way (422). The
   * source judges the consent again at every request; this is this payer's own check, before any.
   */
  private async consentRefusal(task: Task): Promise<{ status: 409 | 422; code: 'missing' | 'revoked' | 'expired' | 'not-yet-valid'; why: string } | undefined> {
    const ref = task.focus?.reference ?? '';
    const id = ref.startsWith('Consent/') ? ref.slice('Consent/'.length) : undefined;
    const consent = id ? ((await this.store.readIfExists('Consent', id)) as Consent | undefined) : undefined;
    if (!consent) return { status: 409, code: 'missing', why: `the member's consent (${ref || 'none'}) is no longer on record here` };
    if (consent.status !== 'active') return { status: 409, code: 'revoked', why: `the member's consent ${ref} is ${consent.status ?? 'without a status'} (revoked), not active` };
    const now = Date.now();
    const end = consent.provision?.period?.end;
    const endsAt = end ? periodEnd(end) : undefined;
    if (endsAt !== undefined && endsAt < now) return { status: 422, code: 'expired', why: `the member's consent ${ref} expired on ${end}` };
    const start = consent.provision?.period?.start;
    const startsAt = start ? Date.parse(start) : undefined;
    if (startsAt !== undefined && !Number.isNaN(startsAt) && startsAt > now) return { status: 422, code: 'not-yet-valid', why: `the member's consent ${ref} is not in force before ${start}` };
    return undefined;
  }

  /**
   * Starts the run-offs that are due: for each member and source, when the latest completed
   * exchange is older than `intervalMs` and none is active. Returns how many were started.
   */
  async startDueRunOffs(intervalMs: number): Promise<number> {
    // Per member and source: the latest exchange of any outcome, and the latest completed one.
    const latest = new Map<string, { any: Task; completed?: Task }>();
    for await (const r of this.store.stream('Task', { 's._tag': `${EXCHANGE_TAG.system}|${EXCHANGE_TAG.code}` })) {
      const t = r as Task;
      const issuer = t.input?.find((i) => i.type?.text === 'sourceIssuerUrl')?.valueUrl;
      if (!issuer || !t.for?.reference) continue;
      const key = `${t.for.reference}|${issuer}`;
      const entry = latest.get(key) ?? { any: t };
      if ((t.authoredOn ?? '') > (entry.any.authoredOn ?? '')) entry.any = t;
      if (t.status === 'completed' && (!entry.completed || (t.authoredOn ?? '') > (entry.completed.authoredOn ?? ''))) entry.completed = t;
      latest.set(key, entry);
    }
    let started = 0;
    for (const { any, completed } of latest.values()) {
      // Due when nothing, not even a failed attempt, happened for the member within the interval.
      if (!completed || Date.parse(any.lastModified ?? any.authoredOn ?? '') > Date.now() - intervalMs || !isTaskEnded(any)) continue;
      // A member whose consent here was revoked or has expired gets no run-off: skipped, and logged (no member data).
      const refused = await this.consentRefusal(completed).catch(() => undefined);
      if (refused) {
        this.logger.info('run-off skipped', { task: completed.id, consent: completed.focus?.reference, reason: refused.code });
        continue;
      }
      try {
        await this.runOff(completed.id as string);
        started++;
      } catch (err) {
        this.logger.warn('run-off not started', { task: completed.id, error: (err as Error).message });
      }
    }
    return started;
  }

  /**
   * POST Group/$sdh.s2s.invoke-bulk-export: many members from one source in one request. Every
   * member is checked first (a malformed one is a 400 naming it, an unknown local patient a 422, and
   * nothing is recorded); then a parent Task is recorded, and one child Task (`partOf` the parent)
   * and exchange per member, run with the job runner's bounded concurrency. Each child ends on its
   * own; a member whose exchange is already active gets a child that failed saying so. The parent
   * follows its children (BULK_EXCHANGE_JOB) and cancelling it cancels those still running.
   */
  async handleBulk(body: unknown, req: Request): Promise<Task> {
    const params = readParameters(body, [
      { name: 'sourceIssuerUrl', min: 1, max: 1, type: 'valueString' },
      { name: 'export', min: 0, max: 1, type: 'part' },
      { name: 'member', min: 1, max: '*', type: 'part' },
    ]);
    if ((params.get('member') ?? []).length > MAX_BULK_EXCHANGE_MEMBERS) throw badRequest(`At most ${MAX_BULK_EXCHANGE_MEMBERS} members in one request`);
    const all = (body as Parameters).parameter ?? [];
    const shared = all.filter((p) => p.name === 'sourceIssuerUrl' || p.name === 'export');
    const requests = (params.get('member') ?? []).map((m, i) => {
      try {
        return parseInvokeExport({ resourceType: 'Parameters', parameter: [...((m.part ?? []) as ParametersParameter[]), ...shared] });
      } catch (err) {
        if (err instanceof FhirError) throw badRequest(`member ${i + 1}: ${err.message}`, [`Parameters.member[${i}]`]);
        throw err;
      }
    });
    const issuer = requests[0].issuer;
    const payer = this.payers.get(issuer);
    if (!payer) throw unprocessable(`sourceIssuerUrl '${issuer}' is not a registered source payer`, 'not-found');
    const seen = new Set<string>();
    for (const [i, r] of requests.entries()) {
      if (seen.has(r.localPatientId)) throw badRequest(`member ${i + 1}: Patient/${r.localPatientId} is listed twice`, [`Parameters.member[${i}]`]);
      seen.add(r.localPatientId);
      if (!(await this.store.readIfExists('Patient', r.localPatientId))) throw unprocessable(`member ${i + 1}: localPatient Patient/${r.localPatientId} does not exist on this server`, 'not-found');
    }

    const owner = await this.ownerFor(payer);
    const parentId = randomUUID();
    const now = new Date().toISOString();
    await this.tracker.create({
      resourceType: 'Task',
      id: parentId,
      meta: { tag: [EXCHANGE_TAG] },
      status: 'requested',
      intent: 'order',
      code: DATA_REQUEST_CODE,
      owner: { reference: `Organization/${owner.id}`, display: owner.name },
      requester: { display: this.requesterName },
      authoredOn: now,
      lastModified: now,
      businessStatus: { text: 'queued' },
      input: [{ type: { text: 'sourceIssuerUrl' }, valueUrl: payer.issuer }, { type: { text: 'members' }, valueInteger: requests.length }],
      note: [{ time: now, text: `Exchange of ${requests.length} member(s) requested from ${owner.name}` }],
    });
    const children: string[] = [];
    for (const r of requests) {
      try {
        // Parked: the parent decides how each member is matched (one $bulk-member-match where the source serves it) before they run.
        children.push((await this.start(r, payer, parentId, undefined, true)).id as string);
      } catch (err) {
        if (!(err instanceof FhirError) || err.status !== 409) throw err;
        // This member's exchange is already running: its child says so and ends at once.
        const id = randomUUID();
        await this.tracker.create({
          resourceType: 'Task', id, meta: { tag: [EXCHANGE_TAG] }, partOf: [{ reference: `Task/${parentId}` }], status: 'failed', intent: 'order', code: DATA_REQUEST_CODE,
          for: { reference: `Patient/${r.localPatientId}` }, owner: { reference: `Organization/${owner.id}`, display: owner.name }, authoredOn: now, lastModified: now,
          businessStatus: { text: 'failed' }, statusReason: { text: err.message }, note: [{ time: now, text: `Failed: ${err.message}` }],
        });
        children.push(id);
      }
    }
    await this.runner.enqueue(BULK_EXCHANGE_JOB, parentId, { parentId, children, issuer: payer.issuer } satisfies BulkExchangeJobData);
    const parent = await this.tracker.change(parentId, { output: children.map((id) => ({ type: { text: 'member-task' }, valueReference: { reference: `Task/${id}` } })) });
    this.logger.info('bulk exchange requested', { task: parentId, issuer: payer.issuer, members: requests.length });
    req.res?.set('Content-Location', `Task/${parentId}`);
    return parent;
  }

  private key(patientId: string, issuer: string): string {
    return createHash('sha256').update(`${patientId}|${issuer}`).digest('hex');
  }

  /**
   * One active exchange per member and source, across processes. Taking the lock is one atomic
   * insert; a held lock is stale only when it says so itself (pending past its deadline: its request
   * died before creating the job) or its job has ended (the exchange could not release it).
   */
  private async lock(patientId: string, issuer: string, taskId: string): Promise<string> {
    const _id = this.key(patientId, issuer);
    for (let attempt = 0; attempt < 3; attempt++) {
      try {
        await this.locks.insertOne({ _id, taskId, state: 'pending', pendingUntil: Date.now() + PENDING_MS });
        return _id;
      } catch (err) {
        if (!(err instanceof DuplicateKeyError)) throw err;
      }
      const held = await this.locks.findOne({ _id });
      if (!held) continue;
      if (!(await this.isStale(held))) throw conflict(`An exchange for this member from this source payer is already active: Task/${held.taskId}`);
      await this.locks.deleteMany({ _id, taskId: held.taskId });
    }
    throw conflict('Could not start the exchange: concurrent requests for the same member');
  }

  private async isStale(lock: LockDoc): Promise<boolean> {
    if (lock.state === 'pending') return lock.pendingUntil < Date.now();
    // Active: the Task and the job exist; the exchange is over once either has ended.
    const job = await this.runner.get(lock.taskId);
    if (!job || TERMINAL_JOB.has(job.state)) return true;
    const task = (await this.store.readIfExists('Task', lock.taskId)) as Task | undefined;
    return !task || isTaskEnded(task);
  }

  async release(taskId: string): Promise<void> {
    await this.locks.deleteMany({ taskId });
  }
}

/** When a period ending at `end` is over (epoch ms): a date alone runs to the end of that day (UTC); undefined when unreadable. */
function periodEnd(end: string): number | undefined {
  const dateOnly = /^\d{4}(-\d{2}(-\d{2})?)?$/.test(end);
  if (!dateOnly) {
    const at = Date.parse(end);
    return Number.isNaN(at) ? undefined : at;
  }
  const [y, m = '12', d] = end.split('-');
  const last = d ?? String(new Date(Date.UTC(Number(y), Number(m), 0)).getUTCDate());
  const at = Date.parse(`${y}-${m}-${last.padStart(2, '0')}T23:59:59.999Z`);
  return Number.isNaN(at) ? undefined : at;
}

/** The member's consent as recorded here, the Task's focus: linked to the local Patient and the source payer. */
function localConsent(submitted: Consent, patientId: string, issuer: string): Consent {
  return JSON.parse(
    JSON.stringify({
      resourceType: 'Consent',
      status: submitted.status ?? 'active',
      scope: submitted.scope ?? { coding: [{ system: 'http://terminology.hl7.org/CodeSystem/consentscope', code: 'patient-privacy' }] },
      category: submitted.category ?? [{ coding: [{ system: 'http://loinc.org', code: '64292-6' }] }],
      patient: { reference: `Patient/${patientId}` },
      dateTime: submitted.dateTime ?? new Date().toISOString(),
      performer: submitted.performer,
      organization: submitted.organization,
      policy: submitted.policy,
      provision: submitted.provision,
      identifier: [{ system: 'urn:p2p-fhir-server:consent-for-source', value: issuer }],
    }),
  );
}
