import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { AppConfig, fhirBase, loadConfig, validateConfig } from './config';
import { createLogger, Logger } from './logger';
import { openDatabase } from './store/open';
import { Database } from './store/types';
import { ResourceStore } from './store/resource-store';
import { SearchRegistry } from './fhir/search/registry';
import { RESOURCE_TYPES } from './fhir/resource-types';
import { createResourceService, ResourceService } from './fhir/resource-service';
import { buildApp } from './app';

import fs from 'node:fs';
import path from 'node:path';

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
  port: number;
  db: Database;
  store: ResourceStore;
  stop(): Promise<void>;
}

/** The composition root: config → store → services → app → listen. */
export async function startServer(config: AppConfig, logger: Logger = createLogger(config.logLevel)): Promise<RunningServer> {
  validateConfig(config);
  const db = await openDatabase({ mongodbUri: config.mongodbUri, mongodbDb: config.mongodbDb, dataDir: config.dataDir });
  const registry = new SearchRegistry(RESOURCE_TYPES);
  const store = new ResourceStore(db, registry);
  const base = { url: fhirBase(config) };
  const baseUrl = () => base.url;

  const services = new Map<string, ResourceService>();
  for (const type of RESOURCE_TYPES) {
    services.set(type, createResourceService(type, { store, registry, defaultPageSize: config.defaultPageSize, maxPageSize: config.maxPageSize, baseUrl }));
  }

  const app = buildApp({ config, logger, version: VERSION, services, baseUrl });
  const server = http.createServer(app);
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(config.port, config.host, () => resolve());
  });
  const port = (server.address() as AddressInfo).port;
  base.url = fhirBase(config, port);
  logger.info('listening', { base: base.url, engine: db.engine, auth: config.authRequired });

  let stopped = false;
  return {
    config,
    baseUrl: base.url,
    port,
    db,
    store,
    async stop() {
      if (stopped) return;
      stopped = true;
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
