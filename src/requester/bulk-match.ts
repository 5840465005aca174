import type { Group, Parameters, ParametersParameter } from 'fhir/r4';
import { sleep } from '../jobs/job-runner';
import type { RemotePayer } from './remote-payer-client';
import { readResources } from './ndjson';
import { limited } from './downloader';
import type { ExchangeLimits } from './exchange-job';
import { MatchOutcome, MatchResultReader } from './match-result';

/** One member put to the source's `$bulk-member-match`: its Task id, and its `$member-match` parts (MemberPatient, CoverageToMatch, CoverageToLink, Consent). */
export interface MatchInput {
  id: string;
  parts: ParametersParameter[];
}

/**
 * The MemberBundles of a `$bulk-member-match` request: each member's parts, its MemberPatient under
 * the member's Task id, unique in the request and ours to recognise in the answer (§pdex-150).
 */
export function memberBundles(inputs: MatchInput[]): ParametersParameter[] {
  return inputs.map((i) => ({ name: 'MemberBundle', part: i.parts.map((p) => (p.name === 'MemberPatient' && p.resource ? { ...p, resource: { ...p.resource, id: i.id } } : p)) }));
}

export interface BulkMatchWait {
  limits: ExchangeLimits;
  /** No poll, no download past this (epoch ms). */
  deadline: number;
  signal: AbortSignal;
  /** The error thrown once the deadline has passed. */
  late: () => Error;
  /** How long to wait before the next poll, given the source's Retry-After (ms, if any). */
  pollDelay: (retryAfterMs: number | undefined) => number;
  /** Throws when the exchange is no longer wanted (a cancelled Task). */
  check?: () => Promise<void>;
  /** The source's X-Progress, when it says something. */
  progress?: (text: string) => Promise<void>;
}

export interface BulkMatchResult {
  /** Each member the answer named (by its submitted id), with its outcome. */
  outcomes: Map<string, MatchOutcome>;
  /** The MatchedMembers Group at the source, for its `$davinci-data-export`. */
  groupId?: string;
}

/**
 * Waits for a `$bulk-member-match` started at `statusUrl` and reads its answer in either form: the
 * Group NDJSON files (PDex 2.2, preferred where both come, §pdex-138b), else the Parameters file
 * (PDex 2.1), with MatchResultReader. The result files are read like export files: within the
 * exchange's limits on bytes, idle time, deadline and line length, line by line, keeping of each
 * Group only each member's outcome. Files off the source's (and its file origins') URLs are skipped.
 * Used by the bulk exchange (one request for many members) and by a single exchange with a source
 * that declares the bulk operations (one MemberBundle).
 */
export async function awaitBulkMatch(remote: RemotePayer, statusUrl: string, submitted: string[], w: BulkMatchWait): Promise<BulkMatchResult> {
  let status = await remote.status(statusUrl);
  let said: string | undefined;
  while (!status.done) {
    await w.check?.();
    if (Date.now() > w.deadline) throw w.late();
    if (w.progress && status.progress && status.progress !== said) {
      said = status.progress;
      await w.progress(status.progress);
    }
    await sleep(Math.min(w.pollDelay(status.retryAfterMs), Math.max(0, w.deadline - Date.now()) + 1), w.signal);
    status = await remote.status(statusUrl);
  }
  const reader = new MatchResultReader(new Map(submitted.map((id) => [id, id])));
  const label = 'the $bulk-member-match result file';
  const output = Array.isArray(status.manifest.output) ? status.manifest.output : [];
  const groupFiles = output.filter((x) => x?.type === 'Group');
  const files = groupFiles.length ? groupFiles : output.filter((x) => x?.type === 'Parameters');
  let bytes = 0;
  for (const o of files) {
    if (typeof o.url !== 'string' || !remote.mayDownload(o.url)) continue;
    if (Date.now() > w.deadline) throw w.late();
    const limits = { ...w.limits, remainingBytes: w.limits.maxExchangeBytes - bytes, deadline: w.deadline };
    const stream = limited(await remote.download(o.url, status.manifest.requiresAccessToken !== false, w.signal), label, limits);
    for await (const { resource, raw } of readResources(stream, { expectedType: o.type, maxLineLength: w.limits.maxLineLength, label })) {
      bytes += Buffer.byteLength(raw) + 1;
      if (o.type === 'Group') reader.take(resource as unknown as Group);
      else reader.takeParameters(resource as unknown as Parameters);
    }
  }
  return { outcomes: reader.outcomes(), groupId: reader.groupId };
}
