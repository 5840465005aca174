import { randomUUID } from 'node:crypto';
import type { Group, GroupMember, Parameters, ParametersParameter, Patient } from 'fhir/r4';
import { badRequest, IssueCode } from '../fhir/outcome';
import { parametersOf } from '../fhir/parameters';
import { CLIENT_TAG_SYSTEM } from '../fhir/internal-markers';
import { ResourceStore } from '../store/resource-store';
import { JobContext, JobFailure } from '../jobs/job-runner';
import type { Role } from '../auth/client-registry';
import type { Logger } from '../logger';
import { ExportFiles } from './export-files';
import { ExportOutput } from './export-job';
import { MemberMatchInput, MemberMatchService, readMemberMatchParts } from './member-match';
import type { MatchThrottle, Reservation } from './match-throttle';
import { RESULT_SYSTEM } from '../fhir/pdex';

export const BULK_MATCH_JOB = 'bulk-member-match';
/** At most this many members in one $bulk-member-match. */
export const MAX_BULK_MEMBERS = 10_000;
/** Failed matches a $bulk-member-match takes from the client's allowance at a time. */
const RESERVE_BLOCK = 100;

const MATCH_PARAMETERS_EXT = 'http://hl7.org/fhir/us/davinci-pdex/StructureDefinition/base-ext-match-parameters';
const MATCH_GROUP_PROFILE = 'http://hl7.org/fhir/us/davinci-pdex/StructureDefinition/pdex-member-match-group';
const NO_MATCH_GROUP_PROFILE = 'http://hl7.org/fhir/us/davinci-pdex/StructureDefinition/pdex-member-no-match-group';

type Outcome = 'match' | 'nomatch' | 'consentconstraint';

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
  return bundles.map((b, i) => {
    if (!Array.isArray(b.part)) throw badRequest(`MemberBundle ${i + 1} has no parts`, [`Parameters.parameter[${i}]`]);
    return readMemberMatchParts(b.part, `MemberBundle ${i + 1}`);
  });
}

/**
 * PDex 2.1 `$bulk-member-match`, run as a background job: each member is matched as
 * `$member-match` matches one (a match grants the client access under the member's consent), and
 * sorted into MatchedMembers, NonMatchedMembers and ConsentConstrainedMembers. One member never
 * fails the request. The result Groups are stored, tagged as the client's own (only it sees them),
 * and delivered in the job's manifest both as a Group NDJSON file (PDex 2.2) and as the 2.1
 * Parameters. Submitted demographics stay only as contained Patients of the Groups.
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
    const members: Record<Outcome, GroupMember[]> = { match: [], nomatch: [], consentconstraint: [] };
    const contained: Record<Outcome, Patient[]> = { match: [], nomatch: [], consentconstraint: [] };
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
        const submitted: Patient = { ...input.patient, id: `member-${i + 1}` };
        delete submitted.meta;
        contained[result.outcome].push(submitted);
        const pointer = { url: MATCH_PARAMETERS_EXT, valueReference: { reference: `#member-${i + 1}` } };
        members[result.outcome].push(
          result.outcome === 'match'
            ? { entity: { reference: `Patient/${result.patient.id}`, extension: [pointer] } }
            : { entity: { reference: `#member-${i + 1}` } },
        );
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
      const group: Group = {
        resourceType: 'Group',
        meta: { profile: [outcome === 'match' ? MATCH_GROUP_PROFILE : NO_MATCH_GROUP_PROFILE], tag: [{ system: CLIENT_TAG_SYSTEM, code: data.owner }] },
        contained: contained[outcome],
        identifier: [{ system: 'urn:ietf:rfc:3986', value: `urn:uuid:${randomUUID()}` }],
        active: true,
        type: 'person',
        actual: true,
        name: { match: 'Matched members', nomatch: 'Members not matched', consentconstraint: 'Members whose consent cannot be honoured' }[outcome],
        characteristic: [{ code: { coding: [{ system: RESULT_SYSTEM, code: outcome }] }, valueReference: { identifier: { value: data.owner } }, exclude: false, period: { start: today } }],
        quantity: members[outcome].length,
        member: members[outcome],
      };
      groups[outcome] = (await this.store.create(group)) as Group;
    }
    const groupFile = this.files.open(ctx.job._id, 'Group.ndjson');
    for (const g of Object.values(groups)) await groupFile.write(g);
    await groupFile.close();
    const names: Record<Outcome, string> = { match: 'MatchedMembers', nomatch: 'NonMatchedMembers', consentconstraint: 'ConsentConstrainedMembers' };
    const parameters: Parameters = { resourceType: 'Parameters', parameter: Object.entries(groups).map(([o, g]) => ({ name: names[o as Outcome], resource: g }) as ParametersParameter) };
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
