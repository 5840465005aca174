import { randomUUID } from 'node:crypto';
import { Router, Request } from 'express';
import { asyncHandler, hasBody, sendResource } from '../fhir/http';
import { badRequest, FhirError, forbidden, gone, notFound, outcome, unprocessable } from '../fhir/outcome';
import { SearchRegistry } from '../fhir/search/registry';
import { RESOURCE_TYPES } from '../fhir/resource-types';
import { PatientCompartment, SUPPORTING_TYPES } from '../fhir/compartment';
import { ResourceStore } from '../store/resource-store';
import { JobDoc, JobRunner } from '../jobs/job-runner';
import { AccessPolicy } from '../access/access-policy';
import { AUTHENTICATED, Guard } from '../auth/guard';
import { allows } from '../auth/scopes';
import { ExportFiles } from './export-files';
import { ExportLevel, kickoffParams, parseExportRequest } from './export-request';
import { serviceWindowStart } from './service-window';
import type { MatchThrottle } from './match-throttle';
import { EXPORT_JOB, ExportJobData } from './export-job';
import { BULK_MATCH_JOB, BulkMatchJobData, JobFailureAnswer, parseBulkMemberMatch } from './bulk-member-match';
import { PAYER_TO_PAYER, RESULT_SYSTEM } from '../fhir/pdex';
import type { Group } from 'fhir/r4';
import type { AuditLog } from '../audit/audit-log';

/** The asynchronous jobs whose status and files these routes serve. */
const ASYNC_KINDS = [EXPORT_JOB, BULK_MATCH_JOB];

/** A MatchedMembers Group: `Group.code` match (PDex 2.2), or the `characteristic` match of Groups stored before it. */
const isMatchedMembersGroup = (g: Group) =>
  [g.code, ...(g.characteristic ?? []).map((c) => c.code)].some((cc) => cc?.coding?.some((x) => x.system === RESULT_SYSTEM && x.code === 'match'));

export interface BulkExportDeps {
  runner: JobRunner;
  files: ExportFiles;
  store: ResourceStore;
  registry: SearchRegistry;
  compartment: PatientCompartment;
  access: AccessPolicy;
  guard: Guard;
  baseUrl: () => string;
  authRequired: boolean;
  /** How long a status request may wait for a running export to finish before answering 202 (small exports then need no second poll). */
  statusWaitMs?: number;
  audit?: AuditLog;
  /** PDex's window for $davinci-data-export: data with dates of service in the last this many years (0: no window). */
  serviceWindowYears: number;
  /** The allowance of failed matches of $bulk-member-match. */
  bulkThrottle: MatchThrottle;
}

/** Bulk Data Access 2.0 export: kick-off at system, Patient, Patient/{id} and Group/{id}; status; files. */
export function bulkExportRoutes(deps: BulkExportDeps): Router {
  const router = Router({ caseSensitive: true });
  const { guard } = deps;
  const patientTypes = [...deps.compartment.types(), ...SUPPORTING_TYPES];
  const systemTypes = RESOURCE_TYPES.filter((t) => t !== 'Binary');

  const kickoff = (level: ExportLevel, davinci = false) =>
    asyncHandler(async (req, res) => {
      if (!/respond-async/i.test(req.get('prefer') ?? '')) throw badRequest('A bulk export needs the header Prefer: respond-async');
      const accept = req.get('accept');
      if (accept && !/application\/(fhir\+)?json|\*\/\*/.test(accept)) throw badRequest(`Accept must be application/fhir+json, got '${accept}'`);
      const id = req.params.id;
      if (id) {
        // A partner learns nothing of a member or group it may not see: the same 404 as for none.
        // Deleted or never known: the same 404 to a partner (a 410 would tell it the member was here).
        const targetType = level === 'group' ? 'Group' : 'Patient';
        const scope = await deps.access.scopeFor(req.access);
        const target = scope.members ? await deps.store.readIfExists(targetType, id) : await deps.store.read(targetType, id);
        if (!target || !scope.canSee(target)) throw notFound(`${targetType}/${id} is not known`);
        if (davinci && !isMatchedMembersGroup(target as Group)) throw unprocessable(`Group/${id} is not a MatchedMembers Group of $bulk-member-match`);
      }
      const params = kickoffParams(req.method, req.query as Record<string, unknown>, req.body, hasBody(req));
      if (davinci) {
        // PDex: exportType, when given, is the payer-to-payer one.
        const exportType = params.get('exportType');
        if (exportType && exportType.some((t) => t !== PAYER_TO_PAYER)) throw badRequest(`exportType must be ${PAYER_TO_PAYER}`);
        params.delete('exportType');
      }
      const request = parseExportRequest({
        level,
        memberSubset: davinci,
        method: req.method,
        params,
        lenient: /handling\s*=\s*lenient/i.test(req.get('prefer') ?? ''),
        registry: deps.registry,
        defaultTypes: level === 'system' ? systemTypes : patientTypes,
        scope: req.access?.scope ?? '',
        id,
      });
      if (davinci) {
        request.reportWithheld = true;
        if (deps.serviceWindowYears > 0) request.serviceFrom = serviceWindowStart(deps.serviceWindowYears);
      }
      const jobId = randomUUID();
      const data: ExportJobData = {
        owner: req.access?.clientId ?? 'anonymous',
        role: req.access?.role ?? 'service',
        requestUrl: `${deps.baseUrl()}${req.path}${req.url.includes('?') ? req.url.slice(req.url.indexOf('?')) : ''}`,
        request,
        transactionTime: new Date().toISOString(),
      };
      await deps.runner.enqueue(EXPORT_JOB, jobId, data);
      await deps.audit?.record({ kind: 'export', action: 'E', outcome: 'success', client: data.owner, patients: request.patientIds, what: [...(id ? [`${level === 'group' ? 'Group' : 'Patient'}/${id}`] : []), ...request.types], description: `${davinci ? '$davinci-data-export' : '$export'} started (${level} level), job ${jobId}` });
      res.set('Content-Location', `${deps.baseUrl()}/bulkstatus/${jobId}`);
      sendResource(res, 202, outcome('information', 'informational', 'Export accepted; poll the Content-Location for its status'));
    });

  // Any client may start an export; the types it may read and the members it may see decide what it gets.
  for (const method of ['get', 'post'] as const) {
    router[method]('/([$])export', guard.require(AUTHENTICATED), kickoff('system'));
    router[method]('/Patient/([$])export', guard.require(AUTHENTICATED), kickoff('patient'));
    router[method]('/Patient/:id/([$])export', guard.require(AUTHENTICATED), kickoff('patient'));
    router[method]('/Group/:id/([$])export', guard.require(AUTHENTICATED), kickoff('group'));
  }
  // PDex 2.1: the export of a MatchedMembers Group (only its owner sees it), each member's consent judged when it runs.
  router.post('/Group/:id/([$])davinci-data-export', guard.require(AUTHENTICATED), kickoff('group', true));

  // PDex $bulk-member-match: asynchronous; the result Groups come as files of the manifest. The
  // IG's narrative calls it $multi-member-match: the same operation, handler and permission.
  const bulkMemberMatch = (name: string) =>
    asyncHandler(async (req, res) => {
      if (!/respond-async/i.test(req.get('prefer') ?? '')) throw badRequest(`$${name} needs the header Prefer: respond-async`);
      await deps.bulkThrottle.check(req.access?.clientId ?? 'anonymous');
      const inputs = parseBulkMemberMatch(req.body);
      const jobId = randomUUID();
      const data: BulkMatchJobData = {
        owner: req.access?.clientId ?? 'anonymous',
        role: req.access?.role ?? 'service',
        requestUrl: `${deps.baseUrl()}/Group/$${name}`,
        transactionTime: new Date().toISOString(),
        inputs,
      };
      await deps.runner.enqueue(BULK_MATCH_JOB, jobId, data);
      await deps.audit?.record({ kind: 'bulk-member-match', action: 'E', outcome: 'success', client: data.owner, description: `$${name} of ${inputs.length} member(s) started, job ${jobId}` });
      res.set('Content-Location', `${deps.baseUrl()}/bulkstatus/${jobId}`);
      sendResource(res, 202, outcome('information', 'informational', `$${name} of ${inputs.length} member(s) accepted; poll the Content-Location`));
    });
  for (const name of ['bulk-member-match', 'multi-member-match']) router.post(`/Group/([$])${name}`, guard.require({ type: 'Patient', action: 'r' }), bulkMemberMatch(name));

  /** The caller's job: 404 if unknown, 403 if another client's. */
  const ownJob = async (req: Request): Promise<JobDoc<ExportJobData>> => {
    const job = await deps.runner.get<ExportJobData>(req.params.id);
    if (!job || !ASYNC_KINDS.includes(job.kind)) throw notFound('No such export job');
    if (job.data.owner !== (req.access?.clientId ?? 'anonymous')) throw forbidden('This export belongs to another client');
    return job;
  };

  router.get(
    '/bulkstatus/:id',
    guard.require(AUTHENTICATED),
    asyncHandler(async (req, res) => {
      let job = await ownJob(req);
      if ((job.state === 'queued' || job.state === 'running') && (deps.statusWaitMs ?? 0) > 0) {
        await deps.runner.settled(job._id, deps.statusWaitMs as number);
        job = await ownJob(req);
      }
      switch (job.state) {
        case 'queued':
        case 'running':
          res.set({ 'X-Progress': job.data.progress ?? job.state, 'Retry-After': '1' });
          return void res.status(202).end();
        case 'cancelled':
          throw notFound('This export was cancelled');
        case 'failed': {
          // A job ended by the client's own request (e.g. its allowance of failed matches used up)
          // is that request's 4xx, with a non-transient code so a Bulk Data client stops polling.
          const failure = (job.data as { failure?: JobFailureAnswer }).failure;
          if (failure) throw new FhirError(failure.status, failure.code, job.error ?? 'The request failed');
          throw new FhirError(500, 'exception', `The export failed: ${job.error ?? 'unknown error'}`);
        }
        case 'completed': {
          if ((job.data.expiresAt ?? 0) < Date.now()) throw gone('This export has expired');
          res.set('Expires', new Date(job.data.expiresAt as number).toUTCString());
          res.status(200).type('application/json').send(
            JSON.stringify({
              transactionTime: job.data.transactionTime,
              request: job.data.requestUrl,
              requiresAccessToken: deps.authRequired,
              output: (job.data.output ?? []).map((o) => ({ type: o.type, url: `${deps.baseUrl()}/bulkfiles/${job._id}/${o.name}`, count: o.count })),
              error: (job.data.errorOutput ?? []).map((o) => ({ type: o.type, url: `${deps.baseUrl()}/bulkfiles/${job._id}/${o.name}`, count: o.count })),
            }),
          );
        }
      }
    }),
  );

  router.delete(
    '/bulkstatus/:id',
    guard.require(AUTHENTICATED),
    asyncHandler(async (req, res) => {
      const job = await ownJob(req);
      await deps.runner.cancel(job._id);
      await deps.runner.update(job._id, { state: 'cancelled' });
      await deps.files.remove(job._id);
      sendResource(res, 202, outcome('information', 'informational', 'Export cancelled and its files deleted'));
    }),
  );

  router.get(
    '/bulkfiles/:id/:name',
    guard.require(AUTHENTICATED),
    asyncHandler(async (req, res) => {
      const job = await ownJob(req);
      if (job.state !== 'completed') throw notFound('No such file');
      if ((job.data.expiresAt ?? 0) < Date.now()) throw gone('This export has expired');
      const entry = [...(job.data.output ?? []), ...(job.data.errorOutput ?? [])].find((o) => o.name === req.params.name);
      // The error file (OperationOutcomes about the request) is the requester's whatever its scopes.
      if (entry && entry.type !== 'OperationOutcome' && !allows(req.access?.scope ?? '', entry.type, 'r')) throw forbidden(`The token's scopes do not allow reading ${entry.type}`);
      // Consent is judged again at every download: a member whose grant ended closes the whole export.
      const scope = await deps.access.scopeFor(req.access);
      if (scope.members && (job.data.members ?? []).some((m) => !scope.members?.has(m))) {
        throw forbidden('The consent of a member in this export is no longer in force');
      }
      const file = entry && (await deps.files.read(job._id, entry.name));
      if (!file) throw notFound('No such file');
      await deps.audit?.record({ kind: 'download', action: 'R', outcome: 'success', client: job.data.owner, patients: job.data.members, what: [entry.type], description: `export file ${entry.name} of job ${job._id} downloaded (${entry.count} resources)` });
      res.status(200).type('application/fhir+ndjson');
      file.on('error', (err) => res.destroy(err)).pipe(res);
    }),
  );

  return router;
}

/** Deletes the files and jobs of exports past their expiry; run periodically. */
export async function sweepExpiredExports(runner: JobRunner, files: ExportFiles): Promise<number> {
  const expired = await runner.find({ kind: { $in: ASYNC_KINDS }, state: { $in: ['completed', 'cancelled', 'failed'] }, 'data.expiresAt': { $lt: Date.now() } });
  for (const job of expired) {
    await files.remove(job._id);
    await runner.update(job._id, { 'data.output': [] });
  }
  return expired.length;
}
