const USAGE = `Registers a client of this server (a requesting payer, or a back-office system).

  npm run register-client -- --client-id <id> [--scopes "system/*.read"] [--alg ES384|RS384]
      [--role partner|service] [--secret <secret>] [--clients-file config/clients.json] [--keys-dir keys]

Without --secret: a key pair; the public key goes into the clients file, the private key to
<keys-dir>/<id>.private.jwk.json (mode 600; keys/ is ignored by git) for the requesting payer.
With --secret: a client_secret_basic client; only the secret's SHA-256 is written.
The server reads the clients file when it starts: restart it after a change.`;
import fs from 'node:fs';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { generateClientKeys, SigningAlg } from '../src/auth/keys';
import { ClientRegistry, RegisteredClient, roleOf, secretDigest } from '../src/auth/client-registry';

async function main() {
  const { values } = parseArgs({
    options: {
      'client-id': { type: 'string' },
      scopes: { type: 'string', default: 'system/*.read' },
      alg: { type: 'string', default: 'ES384' },
      'clients-file': { type: 'string', default: process.env.CLIENTS_FILE || 'config/clients.json' },
      'keys-dir': { type: 'string', default: 'keys' },
      secret: { type: 'string' },
      role: { type: 'string' },
      help: { type: 'boolean', short: 'h' },
    },
  });
  if (values.help) {
    console.log(USAGE);
    return;
  }
  const clientId = values['client-id'];
  if (!clientId || !/^[A-Za-z0-9._-]{1,64}$/.test(clientId)) throw new Error('--client-id is required (letters, digits, . _ -)');
  if (values.alg !== 'ES384' && values.alg !== 'RS384') throw new Error('--alg must be ES384 or RS384');
  if (values.role !== undefined && values.role !== 'partner' && values.role !== 'service') throw new Error('--role must be partner or service');
  const role = values.role ? { role: values.role as 'partner' | 'service' } : {};
  const file = path.resolve(values['clients-file'] as string);
  const existing: RegisteredClient[] = fs.existsSync(file) ? JSON.parse(fs.readFileSync(file, 'utf8')) : [];
  const others = existing.filter((c) => c.clientId !== clientId);

  let entry: RegisteredClient;
  if (values.secret) {
    entry = { clientId, clientSecretSha256: secretDigest(values.secret), scopes: values.scopes as string, ...role };
  } else {
    const { publicJwk, privateJwk } = await generateClientKeys(values.alg as SigningAlg);
    entry = { clientId, jwks: { keys: [publicJwk] }, scopes: values.scopes as string, ...role };
    const keysDir = path.resolve(values['keys-dir'] as string);
    fs.mkdirSync(keysDir, { recursive: true });
    const keyFile = path.join(keysDir, `${clientId}.private.jwk.json`);
    fs.writeFileSync(keyFile, JSON.stringify(privateJwk, null, 2), { mode: 0o600 });
    console.log(`Private key for ${clientId}: ${keyFile} (give it to the requesting payer; keep it secret)`);
  }
  new ClientRegistry([...others, entry]); // validates
  fs.mkdirSync(path.dirname(file), { recursive: true });
  fs.writeFileSync(file, JSON.stringify([...others, entry], null, 2) + '\n', { mode: 0o600 });
  console.log(`Registered client ${clientId} (${roleOf(entry)}) in ${file}; restart the server to let it in`);
}

main().catch((err) => {
  console.error(err.message);
  process.exit(1);
});
