import type { Consent } from 'fhir/r4';
import { Collection, Database, StoredDoc } from '../store/types';
import { ConsentPolicy, consentPeriod, consentPolicy } from '../responder/consent-policy';
import { patientIdOf } from '../fhir/reference';

/** What a partner may see of one member: written only by the server, after the partner's own successful $member-match. */
export interface Grant extends StoredDoc {
  clientId: string;
  patientId: string;
  policy: ConsentPolicy;
  /** The consent's period, epoch ms: the grant is in force within it only. A grant is made only under a Consent with both (consentPolicy); one without an end (made by an older version, under an open-ended Consent) is in force no more. */
  start?: number;
  end?: number;
  /** The Consent recorded by the match; deleting it revokes the grant. */
  consentId: string;
  grantedAt: number;
  revokedAt?: number;
}

export interface GrantInfo {
  clientId: string;
  patientId: string;
  policy: ConsentPolicy;
  start?: string;
  end?: string;
  consentId: string;
  grantedAt: string;
  revokedAt?: string;
  active: boolean;
}

/**
 * The grants collection, keyed by (client, member). No REST route writes it: only a match records a
 * grant, and only the member's Consent being deleted or withdrawn, or a service client, revokes one.
 */
export class GrantStore {
  private readonly grants: Collection<Grant>;
  private indexed?: Promise<void>;
  /**
   * Each client's unrevoked grants, read once for many requests: dropped at every change made here,
   * and at most CACHE_MS old, so a change made by another process sharing the database holds here
   * within that time. Whether a grant is in force now is judged at every call.
   */
  private readonly cache = new Map<string, { docs: Grant[]; at: number }>();

  constructor(db: Database, private readonly now: () => Date = () => new Date()) {
    this.grants = db.collection<Grant>('access_grants');
  }

  private async ready(): Promise<Collection<Grant>> {
    this.indexed ??= (async () => {
      await this.grants.createIndex(['clientId']);
      await this.grants.createIndex(['patientId']);
      await this.grants.createIndex(['consentId']);
    })();
    await this.indexed;
    return this.grants;
  }

  /** Records (or renews) a partner's access to a member under the consent it submitted. */
  async grant(clientId: string, patientId: string, consent: Consent & { id: string }): Promise<void> {
    const judged = consentPolicy(consent, this.now());
    if (!('policy' in judged)) throw new Error(`cannot grant under a consent that cannot be honoured: ${judged.problem}`);
    const { start, end } = consentPeriod(consent);
    if (start === undefined || end === undefined) throw new Error('cannot grant under a consent without a bounded period');
    const doc: Grant = { _id: `${clientId}|${patientId}`, clientId, patientId, policy: judged.policy, consentId: consent.id, grantedAt: this.now().getTime() };
    if (start !== undefined) doc.start = start;
    if (end !== undefined) doc.end = end;
    await (await this.ready()).replaceOne({ _id: doc._id }, doc, { upsert: true });
    this.cache.clear();
  }

  /** The members a client may see now, with the policy of each one's consent. */
  async activeFor(clientId: string): Promise<Map<string, ConsentPolicy>> {
    const t = this.now().getTime();
    let cached = this.cache.get(clientId);
    if (!cached || Date.now() - cached.at > CACHE_MS) {
      cached = { docs: await (await this.ready()).find({ clientId, revokedAt: { $exists: false } }), at: Date.now() };
      if (this.cache.size > 1000) this.cache.clear();
      this.cache.set(clientId, cached);
    }
    const docs = cached.docs;
    const out = new Map<string, ConsentPolicy>();
    for (const g of docs) if (isActive(g, t)) out.set(g.patientId, g.policy);
    return out;
  }

  /** Revokes a member's grants (one client's, or every client's); returns how many were active. */
  async revoke(patientId: string, clientId?: string): Promise<number> {
    const filter: Record<string, unknown> = { patientId, revokedAt: { $exists: false } };
    if (clientId !== undefined) filter.clientId = clientId;
    return this.revokeWhere(filter);
  }

  /**
   * Keeps grants in step with their Consent: deleted, no longer honourable, or now for another
   * member (its `patient` changed) revokes; a changed policy or period applies.
   */
  async consentChanged(consentId: string, consent?: Consent): Promise<void> {
    this.cache.clear();
    const filter = { consentId, revokedAt: { $exists: false } };
    if (!consent) {
      await this.revokeWhere(filter);
      return;
    }
    const judged = consentPolicy(consent, this.now());
    if (!('policy' in judged)) {
      await this.revokeWhere(filter);
      return;
    }
    const { start, end } = consentPeriod(consent);
    const grants = await this.ready();
    const patientId = patientIdOf(consent.patient?.reference, { relativeOnly: true });
    for (const g of await grants.find(filter)) {
      // A grant is for the member the Consent was given for: a Consent moved to another patient grants neither.
      if (g.patientId !== patientId) {
        await grants.updateOne({ _id: g._id, revokedAt: { $exists: false } }, { revokedAt: this.now().getTime() });
        continue;
      }
      const next: Grant = { ...g, policy: judged.policy };
      delete next.start;
      delete next.end;
      if (start !== undefined) next.start = start;
      if (end !== undefined) next.end = end;
      await grants.replaceOne({ _id: g._id, revokedAt: { $exists: false } }, next);
    }
    this.cache.clear(); // again: a request may have read the old grants meanwhile
  }

  async list(patientId: string): Promise<GrantInfo[]> {
    const t = this.now().getTime();
    const iso = (n?: number) => (n === undefined ? undefined : new Date(n).toISOString());
    const docs = await (await this.ready()).find({ patientId }, { sort: { grantedAt: 1 } });
    return docs.map((g) => ({
      clientId: g.clientId,
      patientId: g.patientId,
      policy: g.policy,
      start: iso(g.start),
      end: iso(g.end),
      consentId: g.consentId,
      grantedAt: iso(g.grantedAt) as string,
      revokedAt: iso(g.revokedAt),
      active: g.revokedAt === undefined && isActive(g, t),
    }));
  }

  private async revokeWhere(filter: Record<string, unknown>): Promise<number> {
    this.cache.clear();
    const grants = await this.ready();
    const t = this.now().getTime();
    let n = 0;
    for (const g of await grants.find(filter)) n += await grants.updateOne({ _id: g._id, revokedAt: { $exists: false } }, { revokedAt: t });
    this.cache.clear(); // again: a request may have read the old grants meanwhile
    return n;
  }
}

/** How long another process's change to grants may take to hold here. */
const CACHE_MS = 1000;

/** In force: not revoked, and within its Consent's period, which must have an end (HRex: a Consent with an open end grants nothing). */
function isActive(g: Grant, t: number): boolean {
  return g.revokedAt === undefined && (g.start === undefined || g.start <= t) && g.end !== undefined && g.end >= t;
}
