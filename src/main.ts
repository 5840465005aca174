import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import type { AddressInfo } from 'node:net';
import { AppConfig, fhirBase, loadConfig, validateConfig } from './config';
import { createLogger, Logger } from './logger';
import { openDatabase } from './store/open';
import { Database } from './store/types';
import { ResourceStore } from './store/resource-store';
import { SearchRegistry } from './fhir/search/registry';
import { RESOURCE_TYPES } from './fhir/resource-types';
import { PatientCompartment } from './fhir/compartment';
import { createResourceService, ResourceService } from './fhir/resource-service';
import { buildApp } from './app';
import { ClientRegistry } from './auth/client-registry';
import { TokenService } from './auth/token-service';
import { smartConfigurationRoutes, TOKEN_PATH, tokenRoutes } from './auth/routes';
import { Guard } from './auth/guard';
import { GrantStore } from './access/grants';
import { AuditLog } from './audit/audit-log';
import { TokenRefusalLimiter } from './auth/token-rate-limit';
import { AccessPolicy } from './access/access-policy';
import { grantRoutes } from './access/grant-routes';
import { MatchThrottle } from './responder/match-throttle';
import { JobRunner } from './jobs/job-runner';
import { MemberMatchService } from './responder/member-match';
import { ExportFiles } from './responder/export-files';
import { EXPORT_JOB, ExportJobHandler } from './responder/export-job';
import { everythingRoutes } from './responder/everything';
import { PayerOrganization } from './responder/transmitter-provenance';
import { BULK_MATCH_JOB, BulkMemberMatchJob } from './responder/bulk-member-match';
import { bulkExportRoutes, sweepExpiredExports } from './responder/bulk-export-routes';
import { SourcePayerRegistry } from './requester/source-payers';
import { RemotePayerClient } from './requester/remote-payer-client';
import { Importer } from './requester/importer';
import { checkClientTaskWrite, TaskTracker } from './requester/task-tracker';
import { EXCHANGE_JOB, ExchangeJobData, ExchangeJobHandler } from './requester/exchange-job';
import { ImportJournal } from './requester/import-journal';
import { RecordChecker } from './requester/record-checker';
import { BodyChecker } from './fhir/body-checker';
import { InvokeExportService } from './requester/invoke-export';
import { BULK_EXCHANGE_JOB, BulkExchangeJob } from './requester/bulk-exchange-job';
import { GroupExporter } from './requester/group-export';
import { runOffRoutes } from './requester/run-off-routes';
import { servedOperations } from './conformance/operation-definitions';
import { definitionRoutes } from './conformance/definition-routes';
import { warmUpValidator } from './fhir/validator';
import { binaryRoutes } from './fhir/binary-routes';
import { BundleProcessor, bundleRoutes } from './fhir/bundle-routes';
import { systemHistoryRoutes } from './fhir/system-history';

/** The package version, found from src/ (ts-jest) and from dist/src/ (npm start) alike. */
function packageVersion(): string {
  for (let dir = __dirname; dir !== path.dirname(dir); dir = path.dirname(dir)) {
    const file = path.join(dir, 'package.json');
    if (fs.existsSync(file)) return JSON.parse(fs.readFileSync(file, 'utf8')).version;
  }
  return '0.0.0';
}
const VERSION = packageVersion();

export interface RunningServer {
  config: AppConfig;
  /** The FHIR base URL, e.g. http://127.0.0.1:3000/4_0_1 */
  baseUrl: string;
  tokenUrl: string;
  port: number;
  db: Database;
  store: ResourceStore;
  runner: JobRunner;
  bodyChecker: BodyChecker;
  stop(): Promise<void>;
}

/** The composition root: config → store → services → app → listen → background jobs. */
export async function startServer(config: AppConfig, logger: Logger = createLogger(config.logLevel)): Promise<RunningServer> {
  validateConfig(config);
  const clients = ClientRegistry.fromFile(config.clientsFile);
  const payers = SourcePayerRegistry.fromFile(config.sourcePayersFile);
  const db = await openDatabase({ mongodbUri: config.mongodbUri, mongodbDb: config.mongodbDb, dataDir: config.dataDir });
  const registry = new SearchRegistry(RESOURCE_TYPES);
  const store = new ResourceStore(db, registry, undefined, { perParameter: config.indexMaxValuesPerParam, perResource: config.indexMaxValues, textPerResource: config.indexMaxTextChars });
  const compartment = new PatientCompartment(registry, RESOURCE_TYPES);
  const audit = new AuditLog(store, logger, config.requestingPayerName);
  // What partners read is disclosed data: every read path (read, vread, history, search, $everything) tells this hook, which names the members.
  const onPartnerRead = audit.disclosures((r) => compartment.patientsOf(r));
  const grants = new GrantStore(db);
  const access = new AccessPolicy(grants, compartment);
  const base = { url: fhirBase(config) };
  const baseUrl = () => base.url;
  const operations = () => servedOperations(base.url);
  const tokenUrl = () => `${base.url.replace(/\/4_0_1$/, '')}${TOKEN_PATH}`;

  const services = new Map<string, ResourceService>();
  for (const type of RESOURCE_TYPES) {
    services.set(
      type,
      createResourceService(type, {
        store,
        registry,
        access,
        defaultPageSize: config.defaultPageSize,
        maxPageSize: config.maxPageSize,
        baseUrl,
        // Deleting or withdrawing a member's Consent ends the access granted under it, at once.
        onChange: type === 'Consent' ? (id, resource) => grants.consentChanged(id, resource as never) : undefined,
        // Clients may cancel an exchange Task, nothing more.
        beforeWrite: type === 'Task' ? checkClientTaskWrite : undefined,
        onPartnerRead,
      }),
    );
  }

  const tokens = new TokenService(db, clients, config.accessTokenTtlSeconds);
  const guard = new Guard(tokens, config.authRequired);
  const runner = new JobRunner(db, { leaseMs: config.jobLeaseSeconds * 1000, maxAttempts: config.jobMaxAttempts, concurrency: config.jobConcurrency, logger });
  const files = new ExportFiles(db.blobs);
  const payerOrganization = new PayerOrganization(store, { id: config.payerOrganizationId, name: config.requestingPayerName, identifiers: config.payerIdentifiers });
  const exportJobs = new ExportJobHandler(store, registry, compartment, access, files, config.exportFileTtlSeconds * 1000, undefined, payerOrganization);
  runner.register(EXPORT_JOB, exportJobs.run);
  const throttle = new MatchThrottle(db, { maxFailures: config.memberMatchMaxFailures, windowMs: config.memberMatchWindowSeconds * 1000 }, logger);
  const memberMatch = new MemberMatchService(store, grants, throttle, logger, undefined, audit, {
    memberIdSystem: config.memberIdSystem,
    // A Consent must name this payer as source and the calling client as recipient, where their identifiers are configured.
    consentParties: (clientId) => clients.consentParties(clientId, config.payerIdentifiers),
  });
  // Bulk matches have their own, larger allowance of failures: a bulk request must not be a way around the brute-force limit.
  const bulkThrottle = new MatchThrottle(db, { maxFailures: config.bulkMatchMaxFailures, windowMs: config.bulkMatchWindowSeconds * 1000, collection: 'bulk_match_failures' }, logger);
  runner.register(BULK_MATCH_JOB, new BulkMemberMatchJob(store, memberMatch, files, config.exportFileTtlSeconds * 1000, logger, bulkThrottle).run);

  const remoteClients = new Map<string, RemotePayerClient>();
  const clientFor = (issuer: string) => {
    const payer = payers.get(issuer);
    if (!payer) return undefined;
    let client = remoteClients.get(payer.issuer);
    if (!client) {
      client = new RemotePayerClient(payer, {
        timeoutMs: config.remoteTimeoutMs,
        retries: config.remoteRetries,
        baseRetryDelayMs: config.remoteRetryBaseMs,
        maxRetryDelayMs: config.remoteRetryMaxMs,
        maxJsonBytes: config.remoteMaxJsonBytes,
        logger,
      });
      remoteClients.set(payer.issuer, client);
    }
    return client;
  };
  const tracker = new TaskTracker(store);
  const invokeExport = new InvokeExportService(db, store, payers, tracker, runner, config.requestingPayerName, logger, audit, {
    payerIdentifiers: config.payerIdentifiers,
    defaultDays: config.consentDefaultDays,
    baseUrl,
  });
  const journal = new ImportJournal(db, store, logger);
  const exchangeLimits = {
    maxFileBytes: config.exchangeMaxFileBytes,
    maxExchangeBytes: config.exchangeMaxBytes,
    idleTimeoutMs: config.downloadIdleTimeoutMs,
    maxManifestPages: config.manifestMaxPages,
    maxManifestFiles: config.manifestMaxFiles,
    maxLineLength: config.maxLineLength,
  };
  const exchangeDir = path.join(config.dataDir, 'exchanges');
  const checker = new RecordChecker(undefined, config.largeBodyBytes, store.indexLimits);
  const groupExporter = new GroupExporter({ limits: exchangeLimits, pollMinMs: config.pollMinMs, pollMaxMs: config.pollMaxMs, logger, localBaseUrl: baseUrl });
  const exchanges = new ExchangeJobHandler({
    store,
    tracker,
    importer: new Importer(store, journal, config.maxLineLength),
    checker,
    journal,
    remoteFor: clientFor,
    payerFor: (issuer) => payers.get(issuer),
    workDir: exchangeDir,
    pollMinMs: config.pollMinMs,
    pollMaxMs: config.pollMaxMs,
    timeoutMs: config.exchangeTimeoutSeconds * 1000,
    maxAttempts: config.jobMaxAttempts - 1,
    limits: exchangeLimits,
    blobs: db.blobs,
    requesterDisplay: config.requestingPayerName,
    releaseLock: (taskId) => invokeExport.release(taskId),
    logger,
    audit,
    localBaseUrl: baseUrl,
    groupExporter,
    payerOrganization,
    payerIdentifiers: config.payerIdentifiers,
  });
  runner.register(BULK_EXCHANGE_JOB, new BulkExchangeJob({
    store,
    tracker,
    runner,
    remoteFor: clientFor,
    releaseLock: (taskId) => invokeExport.release(taskId),
    groupExporter,
    workDir: exchangeDir,
    timeoutMs: config.exchangeTimeoutSeconds * 1000,
    limits: exchangeLimits,
    logger,
  }).run);
  runner.register<ExchangeJobData>(EXCHANGE_JOB, exchanges.run, async (job, reason) => {
    await exchanges.giveUp(job, reason);
    await runner.update(job._id, { 'data.memberMatch': { resourceType: 'Parameters', parameter: [] } });
  });

  const bodyChecker = new BodyChecker(store.indexLimits);
  const app = buildApp({
    config,
    bodyChecker,
    logger,
    version: VERSION,
    services,
    baseUrl,
    tokenEndpoint: tokenUrl,
    rootRoutes: [tokenRoutes(tokens, tokenUrl, logger, audit, new TokenRefusalLimiter({ maxRefusals: config.tokenMaxRefusals, windowMs: config.tokenRefusalWindowSeconds * 1000 }))],
    rootPaths: [TOKEN_PATH],
    guard,
    overrideRoutes: [binaryRoutes(guard, services.get('Binary') as ResourceService, db.blobs, config.binaryInlineLimitBytes)],
    fhirRoutes: [
      smartConfigurationRoutes(guard, tokenUrl),
      bundleRoutes(guard, new BundleProcessor({ services, store, baseUrl })),
      runOffRoutes(guard, invokeExport),
      systemHistoryRoutes({ guard, store, access, baseUrl, defaultPageSize: config.defaultPageSize, maxPageSize: config.maxPageSize, onPartnerRead }),
      bulkExportRoutes({ runner, files, store, registry, compartment, access, guard, baseUrl, authRequired: config.authRequired, statusWaitMs: 500, audit, serviceWindowYears: config.serviceWindowYears, bulkThrottle }),
      everythingRoutes({ store, compartment, access, guard, baseUrl, defaultPageSize: config.defaultPageSize, maxPageSize: config.maxPageSize, onPartnerRead, payerOrganization }),
      grantRoutes(guard, grants, logger),
      definitionRoutes(guard, operations, baseUrl),
    ],
    operations: {
      Group: [
        {
          name: 'sdh.s2s.invoke-bulk-export',
          method: 'POST',
          // Like invoke-export: the requesting payer's back office, for many members at once.
          permission: { type: 'Task', action: 'c', role: 'service' },
          handler: (args, { req }) => invokeExport.handleBulk(args.resource, req),
        },
      ],
      Patient: [
        {
          name: 'member-match',
          method: 'POST',
          // Partners call it; a match is what grants them access to the member.
          permission: { type: 'Patient', action: 'r' },
          handler: (args, { req }) => memberMatch.handle(args.resource, req),
        },
        {
          name: 'sdh.s2s.invoke-export',
          method: 'POST',
          // The requesting payer's own back office starts exchanges.
          permission: { type: 'Task', action: 'c', role: 'service' },
          handler: (args, { req }) => invokeExport.handle(args.resource, req),
        },
      ],
    },
    servedOperations: operations,
  });
  await Promise.all([runner.ensureIndexes(), tokens.ensureIndexes(), invokeExport.ensureIndexes()]);
  warmUpValidator();
  const server = http.createServer(app);
  // Idle connections outlive a client's or load balancer's idea of them (with Node's 5 s default a
  // client may reuse a connection the server is closing: ECONNRESET). Node wants the headers
  // timeout above the keep-alive one.
  server.keepAliveTimeout = config.keepAliveSeconds * 1000;
  server.headersTimeout = server.keepAliveTimeout + 1000;
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(config.port, config.host, () => resolve());
  });
  const port = (server.address() as AddressInfo).port;
  base.url = fhirBase(config, port);
  runner.start();
  const sweeper = setInterval(() => void sweepExpiredExports(runner, files).catch((err) => logger.warn('export sweep failed', { error: err.message })), 60_000);
  sweeper.unref();
  // Scheduled run-offs (members with concurrent coverage), when configured: checked hourly.
  const runOffMs = config.runOffIntervalHours * 3600_000;
  const runOffs = runOffMs > 0 ? setInterval(() => void invokeExport.startDueRunOffs(runOffMs).then((n) => n && logger.info('run-offs started', { count: n })).catch((err) => logger.warn('run-off sweep failed', { error: err.message })), Math.min(runOffMs, 3600_000)) : undefined;
  runOffs?.unref();
  logger.info('listening', { base: base.url, engine: db.engine, sourcePayers: payers.size });
  logger.info(`authentication ${config.authRequired ? 'ON' : 'OFF'} (${config.authReason ?? 'as configured'})`, { clients: clients.roles() });
  // Once, at start-up: whose Consents cannot be checked to name them.
  const unidentified = clients.partnersWithoutIdentifiers();
  if (unidentified.length) logger.warn('partner clients registered without identifiers: the Consents they submit are not checked to name them as recipient (add "identifiers" to their CLIENTS_FILE entries)', { clients: unidentified });
  if (!config.payerIdentifiers.length && clients.roles().partner > 0) logger.warn('PAYER_IDENTIFIERS is not set: Consents are not checked to name this payer as source, and Consents sent to source payers name it by PAYER_NAME only');
  if (config.authRequired && clients.size === 0) logger.warn(`no clients are registered in ${config.clientsFile}: every request that needs a token will be refused (npm run register-client, then restart)`);

  let stopped = false;
  return {
    config,
    baseUrl: base.url,
    tokenUrl: tokenUrl(),
    port,
    db,
    store,
    runner,
    bodyChecker,
    async stop() {
      if (stopped) return;
      stopped = true;
      clearInterval(sweeper);
      if (runOffs) clearInterval(runOffs);
      await runner.stop();
      await checker.close();
      await bodyChecker.close();
      await new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      });
      await db.close();
    },
  };
}

if (require.main === module) {
  let config: AppConfig;
  try {
    config = loadConfig();
  } catch (err) {
    console.error(`Configuration error: ${(err as Error).message}`);
    process.exit(1);
  }
  const logger = createLogger(config.logLevel);
  startServer(config, logger).then(
    (running) => {
      const shutdown = (signal: string) => {
        logger.info('stopping', { signal });
        running.stop().then(() => process.exit(0), () => process.exit(1));
      };
      process.once('SIGINT', shutdown);
      process.once('SIGTERM', shutdown);
    },
    (err) => {
      logger.error('failed to start', { error: (err as Error).message });
      process.exit(1);
    },
  );
}
