/**
 * Checks a registered source payer before go-live, as the requesting side will use it:
 *   npm run check-partner -- --issuer https://source-payer.example.com [--member member.json] [--timeout 300]
 * `--member` is a $member-match body (Parameters: MemberPatient, CoverageToMatch, Consent) for a
 * test member the source holds. Source payers come from SOURCE_PAYERS_FILE, as for the server.
 * Prints a pass/fail table; exits 1 when any check fails.
 */
import fs from 'node:fs';
import { parseArgs } from 'node:util';
import type { Parameters } from 'fhir/r4';
import { loadConfig } from '../src/config';
import { createLogger } from '../src/logger';
import { SourcePayerRegistry } from '../src/requester/source-payers';
import { checkPartner, formatResults } from '../src/requester/partner-check';

const USAGE = `Checks a registered source payer as the exchange will use it, and prints a pass/fail table.

  npm run check-partner -- --issuer <issuer> [--member <file>] [--timeout <seconds>]

--member: a $member-match body (Parameters) for a test member the source holds.
Source payers come from SOURCE_PAYERS_FILE. Exit code 1 when a check fails, 2 on a usage error.`;

export async function runCheckPartner(argv: string[], env: NodeJS.ProcessEnv = process.env, overrides: { minPollMs?: number } = {}): Promise<{ code: number; output: string }> {
  let values;
  try {
    values = parseArgs({ args: argv, options: { issuer: { type: 'string' }, member: { type: 'string' }, timeout: { type: 'string', default: '300' }, help: { type: 'boolean', short: 'h' } } }).values;
  } catch (err) {
    return { code: 2, output: `${(err as Error).message}\n${USAGE}` };
  }
  if (values.help) return { code: 0, output: USAGE };
  if (!values.issuer) return { code: 2, output: USAGE };
  const config = loadConfig(env);
  const payer = SourcePayerRegistry.fromFile(config.sourcePayersFile).get(values.issuer);
  if (!payer) return { code: 2, output: `No source payer with issuer ${values.issuer} in ${config.sourcePayersFile}` };
  let member: Parameters | undefined;
  if (values.member) {
    try {
      member = JSON.parse(fs.readFileSync(values.member, 'utf8'));
    } catch (err) {
      return { code: 2, output: `Cannot read --member ${values.member}: ${(err as Error).message}` };
    }
    if (member?.resourceType !== 'Parameters') return { code: 2, output: `--member ${values.member} must hold a Parameters resource (the $member-match body)` };
  }
  const timeout = Number(values.timeout);
  if (!Number.isFinite(timeout) || timeout <= 0) return { code: 2, output: '--timeout must be a number of seconds' };
  const results = await checkPartner(payer, { member, exportTimeoutMs: timeout * 1000, requestTimeoutMs: config.remoteTimeoutMs, logger: createLogger('error', true), ...overrides });
  const failed = results.filter((r) => r.status === 'fail').length;
  const summary = failed ? `${failed} check(s) failed` : 'all checks passed' + (results.some((r) => r.status === 'skip') ? ' (some skipped)' : '');
  return { code: failed ? 1 : 0, output: `Partner check: ${payer.name ?? payer.issuer} at ${payer.fhirBaseUrl}\n\n${formatResults(results)}\n\n${summary}` };
}

if (require.main === module) {
  runCheckPartner(process.argv.slice(2)).then(
    ({ code, output }) => {
      console.log(output);
      process.exit(code);
    },
    (err) => {
      console.error((err as Error).message);
      process.exit(2);
    },
  );
}
