import { randomUUID } from 'node:crypto';
import type { Coverage, Extension, Group, GroupMember, Parameters, ParametersParameter, Patient, Resource } from 'fhir/r4';
import { badRequest, IssueCode } from '../fhir/outcome';
import { parametersOf } from '../fhir/parameters';
import { CLIENT_TAG_SYSTEM, INTERNAL_PREFIX, internalMarkers } from '../fhir/internal-markers';
import { ResourceStore } from '../store/resource-store';
import { JobContext, JobFailure } from '../jobs/job-runner';
import type { Role } from '../auth/client-registry';
import type { Logger } from '../logger';
import { ExportFiles } from './export-files';
import { ExportOutput } from './export-job';
import { MemberMatchInput, MemberMatchService, readMemberMatchParts } from './member-match';
import type { MatchThrottle, Reservation } from './match-throttle';
import { MATCH_COVERAGE_EXT, MATCH_PARAMETERS_EXT, MatchResultCode, RESULT_DISPLAY, RESULT_PARAMETER, RESULT_SYSTEM } from '../fhir/pdex';

export const BULK_MATCH_JOB = 'bulk-member-match';
/** At most this many members in one $bulk-member-match. */
export const MAX_BULK_MEMBERS = 10_000;
/** Failed matches a $bulk-member-match takes from the client's allowance at a time. */
const RESERVE_BLOCK = 100;

const MATCH_GROUP_PROFILE = 'http://hl7.org/fhir/us/davinci-pdex/StructureDefinition/pdex-member-match-group';
const NO_MATCH_GROUP_PROFILE = 'http://hl7.org/fhir/us/davinci-pdex/StructureDefinition/pdex-member-no-match-group';

type Outcome = MatchResultCode;

export interface BulkMatchJobData {
  owner: string;
  role: Role;
  requestUrl: string;
  transactionTime: string;
  /** The submitted members: kept in the job store only until the job has run. */
  inputs: MemberMatchInput[];
  output?: ExportOutput[];
  progress?: string;
  expiresAt?: number;
  /** The result Groups, by outcome. */
  groups?: Partial<Record<Outcome, string>>;
  /** How the status URL answers a job that failed because of the client's request (not a fault here). */
  failure?: JobFailureAnswer;
}

/** The 4xx a failed job's status URL answers with its error as an OperationOutcome. */
export interface JobFailureAnswer {
  status: number;
  /** A non-transient issue code, so a Bulk Data client does not poll again. */
  code: IssueCode;
}

/** The MemberBundle parts of a $bulk-member-match request; any malformed member is a 400 naming it. */
export function parseBulkMemberMatch(body: unknown): MemberMatchInput[] {
  const parts = parametersOf(body);
  const bundles = parts.filter((p) => p.name === 'MemberBundle');
  const others = parts.filter((p) => p.name !== 'MemberBundle');
  if (others.length) throw badRequest(`$bulk-member-match takes MemberBundle parameters only, got '${others[0].name}'`);
  if (bundles.length === 0) throw badRequest('$bulk-member-match needs at least one MemberBundle');
  if (bundles.length > MAX_BULK_MEMBERS) throw badRequest(`$bulk-member-match takes at most ${MAX_BULK_MEMBERS} members`);
  const inputs = bundles.map((b, i) => {
    if (!Array.isArray(b.part)) throw badRequest(`MemberBundle ${i + 1} has no parts`, [`Parameters.parameter[${i}]`]);
    const input = readMemberMatchParts(b.part, `MemberBundle ${i + 1}`);
    // What goes back in the result Groups (stored here) may not carry this server's own codes.
    for (const [name, r] of [['MemberPatient', input.patient], ['CoverageToMatch', input.coverageToMatch]] as const) {
      if (internalMarkers(r).length) throw badRequest(`MemberBundle ${i + 1}: its ${name} carries codes or identifiers under ${INTERNAL_PREFIX}, which this server sets only`, [`Parameters.parameter[${i}]`]);
    }
    return input;
  });
  const { conflict } = planContained(inputs);
  if (conflict) throw badRequest(conflict.text, [`Parameters.parameter[${conflict.index}]`]);
  return inputs;
}

/**
 * A submitted resource as a Group may contain it (R4 dom-2, dom-4, dom-5; PDex §pdex-151a): without
 * `meta.versionId`, `meta.lastUpdated`, `meta.security` and nested `contained`, all else (its id,
 * identifiers, demographics, `meta.profile`) as submitted.
 */
export function asContained<T extends Resource>(resource: T): T {
  const copy = JSON.parse(JSON.stringify(resource)) as T & { contained?: unknown };
  delete copy.contained;
  if (copy.meta) {
    const { versionId: _v, lastUpdated: _l, security: _s, ...meta } = copy.meta;
    if (Object.keys(meta).length) copy.meta = meta;
    else delete copy.meta;
  }
  return copy;
}

/** Where each member's submitted resources sit in the result Groups: the contained Patient's id, and the contained Coverage's when there is one. */
export interface ContainedPlan {
  patientId: string;
  /** Set when the same person comes in more than one MemberBundle (§pdex-153): which of their coverages this entry answers. */
  coverageId?: string;
}

const personKey = (p: Patient) => JSON.stringify({ ...asContained(p), id: undefined });

/**
 * The ids the submitted resources keep in the result Groups. A MemberPatient keeps its own id
 * (§pdex-150, §pdex-152: the requester correlates by it); one submitted without an id gets
 * `member-{n}` (n its MemberBundle's place). One id is one person: two MemberBundles whose
 * MemberPatients share an id but differ are a `conflict` (never merged). A person (the same
 * MemberPatient, by id or by content) in several MemberBundles gets each bundle's CoverageToMatch
 * contained as well, under its own id where that is unique, else `coverage-{n}`.
 */
export function planContained(inputs: MemberMatchInput[]): { plan: ContainedPlan[]; conflict?: { index: number; text: string } } {
  const keys = inputs.map((i) => personKey(i.patient));
  const firstWithId = new Map<string, number>();
  let conflict: { index: number; text: string } | undefined;
  inputs.forEach((input, i) => {
    const id = input.patient.id;
    if (!id) return;
    const j = firstWithId.get(id);
    if (j === undefined) firstWithId.set(id, i);
    else if (keys[j] !== keys[i] && !conflict) conflict = { index: i, text: `MemberBundle ${i + 1}: its MemberPatient has the id '${id}' of MemberBundle ${j + 1}'s but not the same content; one id is one person (give each person an id of their own)` };
  });
  const used = new Set(firstWithId.keys());
  const unique = (wanted: string) => {
    let id = wanted;
    for (let n = 2; used.has(id); n++) id = `${wanted}-${n}`;
    used.add(id);
    return id;
  };
  const patientIds = inputs.map((input, i) => input.patient.id ?? unique(`member-${i + 1}`));
  const count = new Map<string, number>();
  for (const k of keys) count.set(k, (count.get(k) ?? 0) + 1);
  const coverageByKey = new Map<string, string>();
  const plan = inputs.map((input, i): ContainedPlan => {
    if ((count.get(keys[i]) ?? 0) < 2) return { patientId: patientIds[i] };
    // The same coverage sent twice for one person is one contained Coverage; other coverages each their own.
    const coverageKey = JSON.stringify(asContained(input.coverageToMatch));
    let coverageId = coverageByKey.get(coverageKey);
    if (!coverageId) {
      const own = input.coverageToMatch.id;
      coverageId = own && !used.has(own) ? (used.add(own), own) : unique(`coverage-${i + 1}`);
      coverageByKey.set(coverageKey, coverageId);
    }
    return { patientId: patientIds[i], coverageId };
  });
  return { plan, conflict };
}

/**
 * PDex `$bulk-member-match` (also served as `$multi-member-match`), run as a background job: each
 * member is matched as `$member-match` matches one (a match grants the client access under the
 * member's consent), and sorted into MatchedMembers, NonMatchedMembers and ConsentConstrainedMembers.
 * One member never fails the request. The result Groups follow PDex 2.2's profiles: `Group.code`
 * says which they are; each entry points (`matchedMember` / `nonMatchedMember`) at the MemberPatient
 * as submitted, contained under its submitted id, and, for a person sent in several MemberBundles,
 * at that bundle's CoverageToMatch (`matchedCoverage` / `nonMatchedCoverage`, §pdex-153). They are
 * stored, tagged as the client's own (only it sees them), and delivered in the job's manifest both
 * as a Group NDJSON file (PDex 2.2) and as the 2.1 Parameters. Submitted demographics stay only as
 * contained resources of the Groups.
 */
export class BulkMemberMatchJob {
  constructor(
    private readonly store: ResourceStore,
    private readonly matcher: MemberMatchService,
    private readonly files: ExportFiles,
    private readonly fileTtlMs: number,
    private readonly logger: Logger,
    private readonly throttle: MatchThrottle,
  ) {}

  run = async (ctx: JobContext<BulkMatchJobData>): Promise<void> => {
    const data = ctx.job.data;
    await this.files.reset(ctx.job._id);
    const { plan } = planContained(data.inputs);
    const members: Record<Outcome, GroupMember[]> = { match: [], nomatch: [], consentconstraint: [] };
    // Each Group contains each submitted Patient (and Coverage) it points at once, by its id.
    const contained: Record<Outcome, Map<string, Patient | Coverage>> = { match: new Map(), nomatch: new Map(), consentconstraint: new Map() };
    // The client's allowance of failed matches: a bulk request is no way around the brute-force
    // limit. It is taken a block at a time before the block's members are tried, so two requests of
    // one client running at once cannot together go past it. Each MemberBundle costs what
    // `$member-match` would: one failure per member identifier it puts forward, unless it matches.
    let slot: Reservation | undefined;
    let failed = 0;
    try {
      for (const [i, input] of data.inputs.entries()) {
        if (ctx.signal.aborted) throw ctx.signal.reason;
        const cost = this.matcher.check(input).tried;
        if (!slot || failed + cost > slot.granted) {
          await slot?.settle(failed);
          failed = 0;
          slot = await this.throttle.reserve(data.owner, Math.max(cost, Math.min(RESERVE_BLOCK, data.inputs.length - i)));
          if (slot.granted < cost) {
            // What is left of the allowance goes to this member's identifiers: it is a failed match.
            failed = slot.granted;
            this.logger.warn('bulk-member-match stopped: too many failed matches', { client: data.owner, members: data.inputs.length, evaluated: i });
            const text = `Too many members not matched: the client's allowance of failed matches is used up (${i} of ${data.inputs.length} members evaluated); try again in ${slot.retryAfterSeconds} s`;
            // The status URL answers this as the client's failed request (a 4xx OperationOutcome), not a server fault.
            await ctx.checkpoint({ inputs: [], failure: { status: 422, code: 'business-rule' }, expiresAt: Date.now() + this.fileTtlMs });
            throw new JobFailure(text);
          }
        }
        const result = await this.matcher.evaluate(input, data.owner);
        if (result.outcome !== 'match') failed += result.tried;
        // The submitted Patient as submitted (its id, identifiers, demographics), less what R4 forbids in a contained resource.
        const { patientId, coverageId } = plan[i];
        const into = contained[result.outcome];
        if (!into.has(patientId)) into.set(patientId, { ...asContained(input.patient), id: patientId });
        if (coverageId && !into.has(coverageId)) into.set(coverageId, { ...asContained(input.coverageToMatch), id: coverageId });
        const extension: Extension[] = [
          { url: MATCH_PARAMETERS_EXT, valueReference: { reference: `#${patientId}` } },
          ...(coverageId ? [{ url: MATCH_COVERAGE_EXT, valueReference: { reference: `#${coverageId}` } }] : []),
        ];
        // A member not matched here (or whose consent cannot be honoured) is named by the demographics submitted, never by a Patient here.
        members[result.outcome].push({ entity: { reference: result.outcome === 'match' ? `Patient/${result.patient.id}` : `#${patientId}`, extension } });
        if ((i + 1) % 100 === 0) await ctx.checkpoint({ progress: `${i + 1} of ${data.inputs.length} members matched` });
      }
    } finally {
      await slot?.settle(failed);
    }
    const today = new Date(data.transactionTime).toISOString().slice(0, 10);
    const groups: Partial<Record<Outcome, Group>> = {};
    for (const outcome of ['match', 'nomatch', 'consentconstraint'] as Outcome[]) {
      // MatchedMembers always, the others when they hold anyone.
      if (outcome !== 'match' && members[outcome].length === 0) continue;
      const result = { coding: [{ system: RESULT_SYSTEM, code: outcome, display: RESULT_DISPLAY[outcome] }] };
      const group: Group = {
        resourceType: 'Group',
        meta: { profile: [outcome === 'match' ? MATCH_GROUP_PROFILE : NO_MATCH_GROUP_PROFILE], tag: [{ system: CLIENT_TAG_SYSTEM, code: data.owner }] },
        contained: [...contained[outcome].values()],
        identifier: [{ system: 'urn:ietf:rfc:3986', value: `urn:uuid:${randomUUID()}` }],
        active: true,
        type: 'person',
        actual: true,
        // PDex 2.2 carries the outcome in Group.code (1..1); the characteristic, as the matched Group's profile
        // shows it, stays on all three for the requesters that read it there (PDex 2.1's and older).
        code: result,
        name: { match: 'Matched members', nomatch: 'Members not matched', consentconstraint: 'Members whose consent cannot be honoured' }[outcome],
        characteristic: [{ code: result, valueReference: { identifier: { value: data.owner } }, exclude: false, period: { start: today } }],
        quantity: members[outcome].length,
        member: members[outcome],
      };
      groups[outcome] = (await this.store.create(group)) as Group;
    }
    const groupFile = this.files.open(ctx.job._id, 'Group.ndjson');
    for (const g of Object.values(groups)) await groupFile.write(g);
    await groupFile.close();
    const parameters: Parameters = { resourceType: 'Parameters', parameter: Object.entries(groups).map(([o, g]) => ({ name: RESULT_PARAMETER[o as Outcome], resource: g }) as ParametersParameter) };
    const paramFile = this.files.open(ctx.job._id, 'Parameters.ndjson');
    await paramFile.write(parameters);
    await paramFile.close();
    this.logger.info('bulk-member-match done', { client: data.owner, members: data.inputs.length, matched: members.match.length, notMatched: members.nomatch.length, consentConstrained: members.consentconstraint.length });
    await ctx.checkpoint({
      inputs: [],
      groups: Object.fromEntries(Object.entries(groups).map(([o, g]) => [o, g?.id as string])),
      output: [
        { type: 'Group', name: 'Group.ndjson', count: groupFile.count },
        { type: 'Parameters', name: 'Parameters.ndjson', count: 1 },
      ],
      progress: 'complete',
      expiresAt: Date.now() + this.fileTtlMs,
    });
  };
}
