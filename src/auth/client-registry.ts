import { createHash } from 'node:crypto';
import { readJsonArrayFile } from '../json-file';
import type { JSONWebKeySet } from 'jose';

/** A system client allowed to call this server (a requesting payer), as registered in CLIENTS_FILE. */
export interface RegisteredClient {
  clientId: string;
  /** Inline public keys for private_key_jwt. */
  jwks?: JSONWebKeySet;
  /** Or a URL where the client publishes them. */
  jwksUrl?: string;
  /** Or a shared secret for client_secret_basic, stored as its SHA-256 (base64url): what `npm run register-client` writes. */
  clientSecretSha256?: string;
  /** The secret itself (older clients files); prefer `clientSecretSha256`. */
  clientSecret?: string;
  /** Space-separated scopes the client may be granted, e.g. `system/*.read`. */
  scopes: string;
  /** Display name, used in Provenance and logs. */
  name?: string;
  /**
   * `partner`: another payer, which sees only the members it matched, while their consent is in
   * force (the default for key-based clients). `service`: a back-office system, which sees all
   * that its scopes allow (the default for client_secret_basic clients).
   */
  role?: Role;
}

export type Role = 'partner' | 'service';

/** A client's role as registered, or its default. */
export function roleOf(client: RegisteredClient): Role {
  return client.role ?? (client.clientSecret !== undefined || client.clientSecretSha256 !== undefined ? 'service' : 'partner');
}

/** How a client secret is kept in the clients file. */
export function secretDigest(secret: string): string {
  return createHash('sha256').update(secret).digest('base64url');
}

export class ClientRegistry {
  private readonly clients = new Map<string, RegisteredClient>();

  constructor(clients: RegisteredClient[]) {
    for (const c of clients) {
      if (!c || typeof c.clientId !== 'string' || !c.clientId) throw new Error('every client needs a clientId');
      const kinds = [c.jwks, c.jwksUrl, c.clientSecret, c.clientSecretSha256].filter((x) => x !== undefined).length;
      if (kinds !== 1) throw new Error(`client ${c.clientId}: give exactly one of jwks, jwksUrl, clientSecretSha256 or clientSecret`);
      if (c.clientSecretSha256 !== undefined && !/^[A-Za-z0-9_-]{43}$/.test(c.clientSecretSha256)) throw new Error(`client ${c.clientId}: clientSecretSha256 must be a SHA-256 in base64url (43 characters)`);
      if (typeof c.scopes !== 'string' || !c.scopes.trim()) throw new Error(`client ${c.clientId}: scopes are required`);
      if (c.role !== undefined && c.role !== 'partner' && c.role !== 'service') throw new Error(`client ${c.clientId}: role must be partner or service`);
      if (this.clients.has(c.clientId)) throw new Error(`client ${c.clientId} is registered twice`);
      this.clients.set(c.clientId, c);
    }
  }

  /** Reads CLIENTS_FILE; a missing file means no clients. */
  static fromFile(file: string): ClientRegistry {
    return new ClientRegistry(readJsonArrayFile<RegisteredClient>(file, 'clients'));
  }

  get(clientId: string): RegisteredClient | undefined {
    return this.clients.get(clientId);
  }

  get size(): number {
    return this.clients.size;
  }

  /** How many clients have each role, for the start-up log. */
  roles(): Record<Role, number> {
    const out: Record<Role, number> = { partner: 0, service: 0 };
    for (const c of this.clients.values()) out[roleOf(c)]++;
    return out;
  }
}
