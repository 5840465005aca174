import { createHash } from 'node:crypto';
import { readJsonArrayFile } from '../json-file';
import type { JSONWebKeySet } from 'jose';
import type { ConsentParties } from '../responder/consent-policy';

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
  /**
   * The client's organization identifiers (NPI, payer id), e.g.
   * `[{ "system": "http://hl7.org/fhir/sid/us-npi", "value": "1234567893" }]`: a Consent it submits
   * must name one of them as the recipient. Without them, its Consents are judged on the rest.
   */
  identifiers?: { system: string; value: string }[];
}

/** A registration's `identifiers`: a list of `{ system, value }`, both non-empty strings. */
export function checkIdentifiers(value: unknown, who: string): { system: string; value: string }[] | undefined {
  if (value === undefined) return undefined;
  if (!Array.isArray(value)) throw new Error(`${who}: identifiers must be a list of { system, value }`);
  return value.map((i) => {
    if (!i || typeof i !== 'object' || typeof i.system !== 'string' || !i.system.trim() || typeof i.value !== 'string' || !i.value.trim()) {
      throw new Error(`${who}: each of identifiers needs a system and a value`);
    }
    return { system: i.system.trim(), value: i.value.trim() };
  });
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
      const identifiers = checkIdentifiers(c.identifiers, `client ${c.clientId}`);
      this.clients.set(c.clientId, identifiers ? { ...c, identifiers } : c);
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

  /** The partner clients registered without identifiers (their Consents are not checked to name them), for the start-up warning. */
  partnersWithoutIdentifiers(): string[] {
    return [...this.clients.values()].filter((c) => roleOf(c) === 'partner' && !c.identifiers?.length).map((c) => c.clientId);
  }

  /**
   * Who a Consent submitted by this client must name: this payer (`self`) as the source, the
   * client's organization as the recipient; and the other clients' identifiers, against a Consent
   * naming another payer when the client has none of its own.
   */
  consentParties(clientId: string, self: readonly { system: string; value: string }[]): ConsentParties {
    const recipient = this.clients.get(clientId)?.identifiers ?? [];
    const others = [...this.clients.values()].filter((c) => c.clientId !== clientId).flatMap((c) => c.identifiers ?? []);
    return { source: self, recipient, others };
  }

  /** How many clients have each role, for the start-up log. */
  roles(): Record<Role, number> {
    const out: Record<Role, number> = { partner: 0, service: 0 };
    for (const c of this.clients.values()) out[roleOf(c)]++;
    return out;
  }
}
