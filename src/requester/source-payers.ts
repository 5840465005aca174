import fs from 'node:fs';
import path from 'node:path';
import type { JWK } from 'jose';
import { readJsonArrayFile } from '../json-file';
import { checkIdentifiers } from '../auth/client-registry';

/** A registered source payer (Smile CDR calls it an "OIDC Server Definition"). Only these are ever called. */
export interface SourcePayer {
  issuer: string;
  fhirBaseUrl: string;
  /** Discovered from [fhirBaseUrl]/.well-known/smart-configuration when left out. */
  tokenEndpoint?: string;
  clientId: string;
  clientAuthenticationMode: 'PRIVATE_KEY_JWT' | 'CLIENT_SECRET_BASIC';
  privateKeyJwk?: JWK;
  privateKeyFile?: string;
  clientSecret?: string;
  scopes: string;
  /** The identifier system under which imported resources keep their id at the source. */
  responderIdentifierSystem?: string;
  /** A display name for the Task's owner and the Provenance. */
  name?: string;
  /**
   * Other origins (`https://files.example.com`) the source hosts export files on, or redirects file
   * downloads to. Files are downloaded from them without our token; no other origin is ever called.
   */
  fileOrigins?: string[];
  /**
   * Whether a bulk exchange uses the source's PDex bulk operations where its CapabilityStatement
   * declares them: `$bulk-member-match` for all members at once, then one `$davinci-data-export` of
   * the matched group. On unless set to false (then: one `$member-match` and one export per member).
   */
  bulkMemberMatch?: boolean;
  /**
   * The source payer's organization identifiers (NPI, payer id): the Consent sent to it names it as
   * the source (HRex's actor with role `performer`) by these; without them, by its name only.
   */
  identifiers?: { system: string; value: string }[];
}

const normalizeIssuer = (s: string) => s.trim().replace(/\/+$/, '');

function checkUrl(value: unknown, what: string, issuer: string): string {
  if (typeof value !== 'string') throw new Error(`source payer ${issuer}: ${what} is required`);
  let url: URL;
  try {
    url = new URL(value);
  } catch {
    throw new Error(`source payer ${issuer}: ${what} is not a URL`);
  }
  if (url.protocol !== 'https:' && url.protocol !== 'http:') throw new Error(`source payer ${issuer}: ${what} must be http(s)`);
  return value.replace(/\/+$/, '');
}

export class SourcePayerRegistry {
  private readonly byIssuer = new Map<string, SourcePayer>();

  constructor(entries: SourcePayer[], baseDir = process.cwd()) {
    for (const raw of entries) {
      if (!raw || typeof raw.issuer !== 'string' || !raw.issuer.trim()) throw new Error('every source payer needs an issuer');
      const issuer = normalizeIssuer(raw.issuer);
      const entry: SourcePayer = { ...raw, issuer, fhirBaseUrl: checkUrl(raw.fhirBaseUrl, 'fhirBaseUrl', issuer) };
      if (raw.tokenEndpoint !== undefined) entry.tokenEndpoint = checkUrl(raw.tokenEndpoint, 'tokenEndpoint', issuer);
      if (raw.fileOrigins !== undefined) {
        if (!Array.isArray(raw.fileOrigins)) throw new Error(`source payer ${issuer}: fileOrigins must be a list of origins`);
        entry.fileOrigins = raw.fileOrigins.map((o) => {
          const url = checkUrl(o, 'each of fileOrigins', issuer);
          if (new URL(url).origin !== url) throw new Error(`source payer ${issuer}: fileOrigins takes origins (scheme, host and port, no path), got '${o}'`);
          return url;
        });
      }
      if (raw.bulkMemberMatch !== undefined && typeof raw.bulkMemberMatch !== 'boolean') throw new Error(`source payer ${issuer}: bulkMemberMatch must be true or false`);
      const identifiers = checkIdentifiers(raw.identifiers, `source payer ${issuer}`);
      if (identifiers) entry.identifiers = identifiers;
      if (typeof raw.clientId !== 'string' || !raw.clientId) throw new Error(`source payer ${issuer}: clientId is required`);
      if (typeof raw.scopes !== 'string' || !raw.scopes.trim()) throw new Error(`source payer ${issuer}: scopes are required`);
      if (raw.clientAuthenticationMode === 'PRIVATE_KEY_JWT') {
        if (!raw.privateKeyJwk && raw.privateKeyFile) {
          const file = path.resolve(baseDir, raw.privateKeyFile);
          try {
            entry.privateKeyJwk = JSON.parse(fs.readFileSync(file, 'utf8'));
          } catch (err) {
            throw new Error(`source payer ${issuer}: cannot read privateKeyFile ${file}: ${(err as Error).message}`);
          }
        }
        if (!entry.privateKeyJwk || typeof entry.privateKeyJwk !== 'object' || !('d' in entry.privateKeyJwk)) {
          throw new Error(`source payer ${issuer}: PRIVATE_KEY_JWT needs a private key (privateKeyJwk or privateKeyFile)`);
        }
      } else if (raw.clientAuthenticationMode === 'CLIENT_SECRET_BASIC') {
        if (typeof raw.clientSecret !== 'string' || !raw.clientSecret) throw new Error(`source payer ${issuer}: CLIENT_SECRET_BASIC needs a clientSecret`);
      } else {
        throw new Error(`source payer ${issuer}: clientAuthenticationMode must be PRIVATE_KEY_JWT or CLIENT_SECRET_BASIC`);
      }
      if (this.byIssuer.has(issuer)) throw new Error(`source payer ${issuer} is registered twice`);
      this.byIssuer.set(issuer, entry);
    }
  }

  /** Reads SOURCE_PAYERS_FILE; a missing file means no source payers. */
  static fromFile(file: string): SourcePayerRegistry {
    return new SourcePayerRegistry(readJsonArrayFile<SourcePayer>(file, 'source payers'));
  }

  /** Looks a payer up by issuer, ignoring a trailing slash. */
  get(issuer: string): SourcePayer | undefined {
    return this.byIssuer.get(normalizeIssuer(issuer));
  }

  get size(): number {
    return this.byIssuer.size;
  }
}
