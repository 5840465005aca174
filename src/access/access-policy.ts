import type { Resource } from 'fhir/r4';
import { Filter } from '../store/types';
import { PatientCompartment, SUPPORTING_TYPES } from '../fhir/compartment';
import { ConsentPolicy, isSensitive, SENSITIVE_SECURITY_TOKENS } from '../responder/consent-policy';
import { CLIENT_TAG_SYSTEM } from '../fhir/internal-markers';
import type { AccessContext } from '../auth/token-service';
import { GrantStore } from './grants';

/**
 * What one caller may see, for the duration of one request or one export run. Every read path
 * (read, vread, history, search, export, file downloads) asks its scope; no handler filters by hand.
 */
export interface AccessScope {
  /** The members this caller may see, with each one's consent policy; undefined means every member (a service client). */
  readonly members?: ReadonlyMap<string, ConsentPolicy>;
  /** Conditions to add to a search of `type` (`{}`: none), or null when nothing of that type is visible. */
  filter(type: string): Filter | null;
  /** Whether the caller may see this resource. */
  canSee(resource: Resource): boolean;
  /** The same scope for these members only (an export or $everything of known members: small filters). */
  only(patientIds: string[]): AccessScope;
}

const UNRESTRICTED: AccessScope = {
  filter: () => ({}),
  canSee: () => true,
  only: () => UNRESTRICTED,
};

const NOT_SENSITIVE: Filter = { 's._security': { $nin: SENSITIVE_SECURITY_TOKENS } };
const CLIENT_TAG_PREFIX = new RegExp(`^${CLIENT_TAG_SYSTEM.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}\\|`);

/** Resources not made for a client: a client's own records (the result Groups of its $bulk-member-match, its Consents) carry its tag. */
export const NOT_FOR_A_CLIENT: Filter = { $nor: [{ 's._tag': { $regex: CLIENT_TAG_PREFIX } }] };

/**
 * The partner access model (PDex: data returned is constrained to the requester's permissions;
 * HRex: consent is evaluated before data is released). A partner sees a member's data only after its
 * own successful $member-match for that member, while the consent it gave is in force, and then
 * only what that consent allows: under `#regular` nothing labelled sensitive, under `#sensitive`
 * all. A resource belongs to the members whose Patient compartment holds it; it is visible when one
 * of them is granted, and a sensitive one only when every one of them gave a `#sensitive` consent.
 * Directory data (practitioners, organizations, locations, medications) is visible, other
 * resources outside the compartment (Task, Binary…) are not. Of Consents, a partner sees its own.
 */
class PartnerScope implements AccessScope {
  private readonly granted: string[];
  private readonly sensitive: string[];

  constructor(private readonly clientId: string, readonly members: ReadonlyMap<string, ConsentPolicy>, private readonly compartment: PatientCompartment) {
    this.granted = [...members.keys()];
    this.sensitive = this.granted.filter((id) => members.get(id) === 'sensitive');
  }

  filter(type: string): Filter | null {
    if (SUPPORTING_TYPES.includes(type)) return NOT_SENSITIVE;
    if (type === 'AuditEvent') return null; // the audit trail is the payer's own
    if (type === 'Group') {
      // A Group made for a client ($bulk-member-match) is that client's alone; others by their members.
      const mine = { 's._tag': `${CLIENT_TAG_SYSTEM}|${this.clientId}` };
      const members = this.granted.length ? { $and: [this.compartment.filter(type, this.granted), NOT_FOR_A_CLIENT] } : undefined;
      return members ? { $or: [mine, members] } : mine;
    }
    if (!this.compartment.has(type) || this.granted.length === 0) return null;
    const conditions: Filter[] = [this.compartment.filter(type, this.granted), { $or: [NOT_SENSITIVE, this.compartment.filter(type, this.sensitive)] }];
    if (type === 'Consent') conditions.push({ 's._tag': `${CLIENT_TAG_SYSTEM}|${this.clientId}` });
    return { $and: conditions };
  }

  only(patientIds: string[]): AccessScope {
    const kept = new Map<string, ConsentPolicy>();
    for (const id of patientIds) {
      const policy = this.members.get(id);
      if (policy) kept.set(id, policy);
    }
    return new PartnerScope(this.clientId, kept, this.compartment);
  }

  canSee(resource: Resource): boolean {
    const type = resource.resourceType;
    if (SUPPORTING_TYPES.includes(type)) return !isSensitive(resource);
    if (type === 'AuditEvent') return false;
    if (type === 'Group') {
      const owners = (resource.meta?.tag ?? []).filter((t) => t.system === CLIENT_TAG_SYSTEM).map((t) => t.code);
      if (owners.length) return owners.includes(this.clientId);
      return this.compartment.patientsOf(resource).some((id) => this.members.has(id));
    }
    if (!this.compartment.has(type)) return false;
    if (type === 'Consent' && !(resource.meta?.tag ?? []).some((t) => t.system === CLIENT_TAG_SYSTEM && t.code === this.clientId)) return false;
    const patients = this.compartment.patientsOf(resource);
    if (!patients.some((id) => this.members.has(id))) return false;
    return !isSensitive(resource) || patients.every((id) => this.members.get(id) === 'sensitive');
  }
}

/** Decides, from the caller's role and grants, what it may see. */
export class AccessPolicy {
  constructor(private readonly grants: GrantStore, private readonly compartment: PatientCompartment) {}

  /** The scope of a request's caller (no caller, as when auth is off, is the anonymous service). */
  async scopeFor(access: Pick<AccessContext, 'clientId' | 'role'> | undefined): Promise<AccessScope> {
    if (!access || access.role === 'service') return UNRESTRICTED;
    return new PartnerScope(access.clientId, await this.grants.activeFor(access.clientId), this.compartment);
  }
}
