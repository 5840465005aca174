import path from 'node:path';
import { Worker } from 'node:worker_threads';

/**
 * Starts a worker's module: compiled JavaScript in a build; from the TypeScript sources (tests),
 * each module is transpiled as it is loaded, as ts-jest does.
 */
const BOOT = `
const { workerData } = require('node:worker_threads');
if (workerData.typescript) {
  const ts = require(workerData.typescript);
  const fs = require('node:fs');
  const options = { module: ts.ModuleKind.CommonJS, target: ts.ScriptTarget.ES2022, esModuleInterop: true, resolveJsonModule: true };
  require.extensions['.ts'] = (module, filename) => module._compile(ts.transpileModule(fs.readFileSync(filename, 'utf8'), { compilerOptions: options, fileName: filename }).outputText, filename);
}
require(workerData.script);
`;

/**
 * A worker thread running the module `name` beside `callerFile` (`__filename` of the caller), in the
 * caller's own form: `.js` in a build, `.ts` from the sources. Unref'd: a caller refs it while it works.
 */
export function startWorkerModule(callerFile: string, name: string): Worker {
  const fromSources = callerFile.endsWith('.ts');
  const thread = new Worker(BOOT, {
    eval: true,
    workerData: { script: path.join(path.dirname(callerFile), `${name}${path.extname(callerFile)}`), typescript: fromSources ? require.resolve('typescript') : undefined },
  });
  thread.unref();
  return thread;
}
