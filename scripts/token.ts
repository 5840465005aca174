/**
 * Mints an access token from a SMART Backend Services token endpoint for a key-based client (what
 * Postman's OAuth 2.0 helper cannot do: sign an RS384/ES384 assertion), and prints it:
 *   npm run token -- --client-id new-health-plan --key keys/new-health-plan.private.jwk.json
 *       [--token-url http://127.0.0.1:3000/oauth/token] [--scope "system/*.read"]
 */
import fs from 'node:fs';
import { parseArgs } from 'node:util';
import { signClientAssertion } from '../src/requester/client-assertion';

const USAGE = `Prints an access token for a key-based (private_key_jwt) client.

  npm run token -- --client-id <id> --key <private JWK file> [--token-url http://127.0.0.1:3000/oauth/token] [--scope "system/*.read"]

Use it in Postman as the collection's {{token}} (or: export TOKEN=$(npm run --silent token -- …)).`;

async function main() {
  const { values } = parseArgs({
    options: {
      'client-id': { type: 'string' },
      key: { type: 'string' },
      'token-url': { type: 'string', default: process.env.TOKEN_URL || 'http://127.0.0.1:3000/oauth/token' },
      scope: { type: 'string', default: 'system/*.read' },
      help: { type: 'boolean', short: 'h' },
    },
  });
  if (values.help) return console.log(USAGE);
  if (!values['client-id'] || !values.key) throw new Error(`--client-id and --key are required\n\n${USAGE}`);
  const privateJwk = JSON.parse(fs.readFileSync(values.key, 'utf8'));
  const tokenUrl = values['token-url'] as string;
  const assertion = await signClientAssertion({ clientId: values['client-id'], tokenUrl, privateJwk });
  const res = await fetch(tokenUrl, {
    method: 'POST',
    headers: { 'content-type': 'application/x-www-form-urlencoded', accept: 'application/json' },
    body: new URLSearchParams({ grant_type: 'client_credentials', scope: values.scope as string, client_assertion_type: 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer', client_assertion: assertion }).toString(),
  });
  const body = (await res.json()) as { access_token?: string; error?: string; error_description?: string };
  if (!res.ok || !body.access_token) throw new Error(`token request refused (HTTP ${res.status}): ${body.error ?? ''} ${body.error_description ?? ''}`.trim());
  console.log(body.access_token);
}

main().catch((err) => {
  console.error(err instanceof Error ? err.message : err);
  process.exit(1);
});
