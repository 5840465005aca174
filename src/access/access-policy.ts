import type { Group, Resource } from 'fhir/r4';
import { Filter } from '../store/types';
import { PatientCompartment, SUPPORTING_TYPES } from '../fhir/compartment';
import { ConsentPolicy, isSensitive, SENSITIVE_SECURITY_TOKENS } from '../responder/consent-policy';
import { CLIENT_TAG_SYSTEM } from '../fhir/internal-markers';
import { referenceValues } from '../fhir/search/index-values';
import type { AccessContext } from '../auth/token-service';
import { GrantStore } from './grants';

/**
 * What one caller may see, for the duration of one request or one export run. Every read path
 * (read, vread, history, search, export, file downloads) asks its scope; no handler filters by hand.
 */
export interface AccessScope {
  /** The members this caller may see, with each one's consent policy; undefined means every member (a service client). */
  readonly members?: ReadonlyMap<string, ConsentPolicy>;
  /** Conditions to add to a search of `type` (`{}`: none), or null when nothing of that type is visible: exactly the resources `canSee` accepts. */
  filter(type: string): Filter | null;
  /** Whether the caller may see this resource. */
  canSee(resource: Resource): boolean;
  /** The resource as the caller may receive it (one it can see): a Group with only the members it may see; any other as it is. */
  view<T extends Resource>(resource: T): T;
  /** The same scope for these members only (an export or $everything of known members: small filters). */
  only(patientIds: string[]): AccessScope;
}

const UNRESTRICTED: AccessScope = {
  filter: () => ({}),
  canSee: () => true,
  view: (resource) => resource,
  only: () => UNRESTRICTED,
};

const NOT_SENSITIVE: Filter = { 's._security': { $nin: SENSITIVE_SECURITY_TOKENS } };
const CLIENT_TAG_PREFIX = new RegExp(`^${CLIENT_TAG_SYSTEM.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}\\|`);

/** Resources not made for a client: a client's own records (the result Groups of its $bulk-member-match, its Consents) carry its tag. */
export const NOT_FOR_A_CLIENT: Filter = { $nor: [{ 's._tag': { $regex: CLIENT_TAG_PREFIX } }] };

/** What a partner may see of a type: one rule per type, from which both the search filter and `canSee` are derived. */
export type AccessRule =
  /** Directory data (Practitioner, Organization, Location, Medication…): visible unless labelled sensitive. */
  | { kind: 'directory' }
  /** Never visible to a partner (the audit trail, Task, Binary, types outside the Patient compartment). */
  | { kind: 'hidden' }
  /**
   * Member data: visible when every member it is about (`params`, see compartment.ts ABOUT_PARAMS;
   * none: a Patient, about itself) is granted, and there is one; a sensitive record only when every
   * one of them gave `#sensitive`. `own`: only the caller's own (its tag), as Consents.
   */
  | { kind: 'about'; params: string[]; own?: boolean }
  /** A Group: the caller's own (its $bulk-member-match results) whole; another when one of its Patient members is visible, shown with those members only. */
  | { kind: 'members'; param: string };

/** The rule of each type (see AccessRule): directory data, the Patient compartment by its "about" parameters, and the exceptions. */
export function accessRule(type: string, compartment: PatientCompartment): AccessRule {
  if (SUPPORTING_TYPES.includes(type)) return { kind: 'directory' };
  if (type === 'AuditEvent' || !compartment.has(type)) return { kind: 'hidden' };
  if (type === 'Group') return { kind: 'members', param: 'member' };
  const params = compartment.about(type);
  if (type !== 'Patient' && params.length === 0) return { kind: 'hidden' }; // in the compartment, but about no one by name
  return { kind: 'about', params, ...(type === 'Consent' ? { own: true } : {}) };
}

const ownedBy = (resource: Resource) => (resource.meta?.tag ?? []).filter((t) => t.system === CLIENT_TAG_SYSTEM).map((t) => t.code);
const REDACTED = { system: 'http://terminology.hl7.org/CodeSystem/v3-ObservationValue', code: 'REDACTED' };

/**
 * The partner access model (PDex: data returned is constrained to the requester's permissions;
 * HRex: consent is evaluated before data is released). A partner sees a member's data only after its
 * own successful $member-match for that member, while the consent it gave is in force, and then
 * only what that consent allows: under `#regular` nothing labelled sensitive, under `#sensitive`
 * all. A record is the member's when the member is whom it is ABOUT (its subject, patient, a
 * Coverage's beneficiary), not when it merely mentions the member (a performer, a subscriber, an
 * author): a dependent's records do not reach the plan of the subscriber. See AccessRule.
 */
class PartnerScope implements AccessScope {
  private readonly granted: string[];
  private readonly sensitive: string[];
  private readonly rules = new Map<string, AccessRule>();

  constructor(private readonly clientId: string, readonly members: ReadonlyMap<string, ConsentPolicy>, private readonly compartment: PatientCompartment) {
    this.granted = [...members.keys()];
    this.sensitive = this.granted.filter((id) => members.get(id) === 'sensitive');
  }

  private rule(type: string): AccessRule {
    let rule = this.rules.get(type);
    if (!rule) this.rules.set(type, (rule = accessRule(type, this.compartment)));
    return rule;
  }

  private mine(): Filter {
    return { 's._tag': `${CLIENT_TAG_SYSTEM}|${this.clientId}` };
  }

  /** Records one of whose `params` names one of these patients (a Patient: is one of them). */
  private someAbout(params: string[], ids: string[]): Filter {
    if (params.length === 0) return { _id: { $in: ids } };
    const refs = ids.map((id) => `Patient/${id}`);
    return params.length === 1 ? { [`s.${params[0]}`]: { $in: refs } } : { $or: params.map((p) => ({ [`s.${p}`]: { $in: refs } })) };
  }

  /** Records all of whose Patients named by `params` are among these (and there is one). */
  private allAbout(params: string[], ids: string[]): Filter {
    if (params.length === 0) return { _id: { $in: ids } };
    const refs = ids.map((id) => `Patient/${id}`);
    const outside = params.map((p) => ({ [`s.${p}`]: { $elemMatch: { $regex: '^Patient/', $nin: refs } } }));
    return { $and: [this.someAbout(params, ids), { $nor: outside }] };
  }

  /** The filter of a rule for members with these grants: visible ones, sensitive ones among them. */
  private sensitivity(select: (ids: string[]) => Filter): Filter | undefined {
    if (this.sensitive.length === this.granted.length) return undefined;
    return this.sensitive.length === 0 ? NOT_SENSITIVE : { $or: [NOT_SENSITIVE, select(this.sensitive)] };
  }

  filter(type: string): Filter | null {
    const rule = this.rule(type);
    switch (rule.kind) {
      case 'directory':
        return NOT_SENSITIVE;
      case 'hidden':
        return null;
      case 'members': {
        if (this.granted.length === 0) return this.mine();
        const some = (ids: string[]) => this.someAbout([rule.param], ids);
        const others = [NOT_FOR_A_CLIENT, some(this.granted), this.sensitivity(some)].filter((f): f is Filter => !!f);
        return { $or: [this.mine(), { $and: others }] };
      }
      case 'about': {
        if (this.granted.length === 0) return null;
        const all = (ids: string[]) => this.allAbout(rule.params, ids);
        const conditions = [all(this.granted), this.sensitivity(all), rule.own ? this.mine() : undefined].filter((f): f is Filter => !!f);
        return conditions.length === 1 ? conditions[0] : { $and: conditions };
      }
    }
  }

  /** Whether a member's records of this sensitivity are visible. */
  private sees(id: string, sensitive: boolean): boolean {
    const policy = this.members.get(id);
    return policy !== undefined && (!sensitive || policy === 'sensitive');
  }

  /** The Patient members of a Group (not the caller's own) that the caller may see. */
  private visibleMembers(group: Group): Set<string> {
    const sensitive = isSensitive(group);
    return new Set(this.compartment.aboutOf(group).filter((id) => this.sees(id, sensitive)));
  }

  canSee(resource: Resource): boolean {
    const rule = this.rule(resource.resourceType);
    switch (rule.kind) {
      case 'directory':
        return !isSensitive(resource);
      case 'hidden':
        return false;
      case 'members': {
        const owners = ownedBy(resource);
        if (owners.length) return owners.includes(this.clientId);
        return this.visibleMembers(resource as Group).size > 0;
      }
      case 'about': {
        if (rule.own && !ownedBy(resource).includes(this.clientId)) return false;
        const about = this.compartment.aboutOf(resource);
        const sensitive = isSensitive(resource);
        return about.length > 0 && about.every((id) => this.sees(id, sensitive));
      }
    }
  }

  view<T extends Resource>(resource: T): T {
    if (this.rule(resource.resourceType).kind !== 'members' || ownedBy(resource).length) return resource;
    const group = resource as unknown as Group;
    const visible = this.visibleMembers(group);
    const kept = (group.member ?? []).filter((m) => referenceValues(m.entity).some((v) => v.startsWith('Patient/') && visible.has(v.slice('Patient/'.length))));
    if (kept.length === (group.member ?? []).length) return resource;
    const shown: Group = { ...group, member: kept };
    if (shown.quantity !== undefined) shown.quantity = kept.length;
    shown.meta = { ...(group.meta ?? {}), security: [...(group.meta?.security ?? []), REDACTED] };
    return shown as unknown as T;
  }

  only(patientIds: string[]): AccessScope {
    const kept = new Map<string, ConsentPolicy>();
    for (const id of patientIds) {
      const policy = this.members.get(id);
      if (policy) kept.set(id, policy);
    }
    return new PartnerScope(this.clientId, kept, this.compartment);
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
