import { Router, Request } from 'express';
import type { Bundle, BundleEntry, BundleLink, FhirResource, Resource } from 'fhir/r4';
import { asyncHandler, sendResource } from '../fhir/http';
import { badRequest, notFound } from '../fhir/outcome';
import { parseInstant } from '../fhir/search/fhir-date';
import { ID_PARAM } from '../fhir/rest-routes';
import { collectSupportingReferences, PatientCompartment, SUPPORTING_TYPES } from '../fhir/compartment';
import { ResourceStore } from '../store/resource-store';
import { Filter } from '../store/types';
import { AccessPolicy } from '../access/access-policy';
import { allows } from '../auth/scopes';
import { Guard } from '../auth/guard';
import type { DisclosureInteraction } from '../audit/audit-log';
import { PayerOrganization, stableId, TransmitterLog } from './transmitter-provenance';

export interface EverythingRequest {
  since?: number;
  /** Types asked for (`_type`); undefined: all. */
  types?: string[];
  count: number;
  /** Where this page starts: the position in the type order, and the offset in that type. */
  cursor: { type: number; offset: number };
}

export interface EverythingDeps {
  store: ResourceStore;
  compartment: PatientCompartment;
  access: AccessPolicy;
  guard: Guard;
  baseUrl: () => string;
  defaultPageSize: number;
  maxPageSize: number;
  /** Told what a partner was shown (the audit trail of disclosures). */
  onPartnerRead?: (req: Request, interaction: DisclosureInteraction, type: string, resources: Resource[]) => Promise<void>;
  /** This payer's Organization: each page names it as transmitter of what the page sends (§pdex-127); none: no such Provenance. */
  payerOrganization?: PayerOrganization;
  now?: () => Date;
}

const KNOWN = new Set(['_since', '_type', '_count', '_cursor', '_format', '_pretty']);

/**
 * `Patient/{id}/$everything`: the member's Patient, then the rest of the compartment type by type
 * (each by id), in pages of `_count` (`next` links carry a `_cursor`); each page adds, as
 * `include` entries, the practitioners, organizations, locations and medications its resources
 * reference. What a caller gets is what its scope shows: for a partner, a granted member, and only
 * what the member's consent allows, the same as export.
 */
export class PatientEverything {
  /** Patient first, then the compartment's types in a fixed order: the order pages walk. */
  private readonly order: string[];

  constructor(private readonly d: EverythingDeps) {
    this.order = ['Patient', ...d.compartment.types().filter((t) => t !== 'Patient').sort()];
  }

  parse(query: Record<string, unknown>): EverythingRequest {
    const one = (name: string): string | undefined => {
      const v = query[name];
      if (v === undefined) return undefined;
      if (Array.isArray(v) && v.length > 1 && name !== '_type') throw badRequest(`${name} may be given once`);
      return (Array.isArray(v) ? v : [v]).map(String).join(',');
    };
    for (const key of Object.keys(query)) if (!KNOWN.has(key)) throw badRequest(`$everything does not take '${key}' (it takes _since, _type and _count)`);
    const req: EverythingRequest = { count: this.d.defaultPageSize, cursor: { type: 0, offset: 0 } };
    const since = one('_since');
    if (since !== undefined) {
      req.since = parseInstant(since);
      if (req.since === undefined) throw badRequest(`_since must be an instant (e.g. 2024-01-01T00:00:00Z), got '${since}'`);
    }
    const types = one('_type');
    if (types !== undefined) {
      req.types = types.split(',').map((t) => t.trim()).filter(Boolean);
      for (const t of req.types) if (!this.order.includes(t) && !SUPPORTING_TYPES.includes(t)) throw badRequest(`_type names '${t}', which is not in a member's record here`);
    }
    const count = one('_count');
    if (count !== undefined) {
      if (!/^\d{1,6}$/.test(count) || Number(count) < 1) throw badRequest(`_count must be a positive integer, got '${count}'`);
      req.count = Math.min(Number(count), this.d.maxPageSize);
    }
    const cursor = one('_cursor');
    if (cursor !== undefined) {
      const m = cursor.match(/^([A-Z][A-Za-z]+):(\d{1,9})$/);
      const type = m ? this.order.indexOf(m[1]) : -1;
      if (!m || type < 0) throw badRequest(`_cursor '${cursor}' is not one this server gave`);
      req.cursor = { type, offset: Number(m[2]) };
    }
    return req;
  }

  async page(req: Request, patientId: string, ask: EverythingRequest): Promise<Bundle> {
    const { store, compartment } = this.d;
    const scope = (await this.d.access.scopeFor(req.access)).only([patientId]);
    const patient = await store.readIfExists('Patient', patientId);
    // A partner learns nothing of a member it may not see: the same 404 as for none.
    if (!patient || !scope.canSee(patient)) throw notFound(`Patient/${patientId} is not known`);
    const token = req.access?.scope ?? '';
    const wanted = (type: string) => (!ask.types || ask.types.includes(type)) && allows(token, type, 'r');

    const matches: Resource[] = [];
    let next: EverythingRequest['cursor'] | undefined;
    let remaining = ask.count;
    for (let t = ask.cursor.type; t < this.order.length && remaining > 0; t++) {
      const type = this.order[t];
      const offset = t === ask.cursor.type ? ask.cursor.offset : 0;
      const visible = wanted(type) ? scope.filter(type) : null;
      if (visible === null) continue;
      const conditions: Filter[] = [compartment.filter(type, [patientId]), visible];
      if (ask.since !== undefined) conditions.push({ lu: { $gt: ask.since } });
      const found = await store.search(type, { $and: conditions }, { sort: { _id: 1 }, skip: offset, limit: remaining + 1 });
      matches.push(...found.slice(0, remaining).filter((r) => scope.canSee(r)).map((r) => scope.view(r)));
      if (found.length > remaining) {
        next = { type: t, offset: offset + remaining };
        break;
      }
      remaining -= found.length;
      if (remaining === 0 && t + 1 < this.order.length) next = { type: t + 1, offset: 0 };
    }

    const referenced = new Map<string, Set<string>>();
    collectSupportingReferences(matches, referenced);
    const includes: Resource[] = [];
    // §pdex-127: the page names this payer as transmitter of what it sends; its Organization comes along.
    const payer = this.d.payerOrganization;
    const transmitting = !!payer && matches.length > 0 && wanted('Provenance');
    if (transmitting && payer && wanted('Organization')) {
      await payer.ensure();
      if (!referenced.has('Organization')) referenced.set('Organization', new Set());
      referenced.get('Organization')?.add(payer.id);
    }
    for (const type of SUPPORTING_TYPES) {
      const ids = [...(referenced.get(type) ?? [])];
      if (ids.length === 0 || !wanted(type)) continue;
      for (const r of await store.search(type, { _id: { $in: ids } }, { sort: { _id: 1 } })) if (scope.canSee(r)) includes.push(r);
    }

    if (scope.members) await this.d.onPartnerRead?.(req, 'everything', 'Patient', [...matches, ...includes]);

    const base = this.d.baseUrl();
    const sentBy: Resource[] = [];
    if (transmitting && payer) {
      const recorded = (this.d.now?.() ?? new Date()).toISOString();
      const log = new TransmitterLog(stableId('transmitter', patientId, JSON.stringify(ask), recorded), recorded, { reference: payer.reference, name: payer.name });
      for (const r of [...matches, ...includes]) {
        const chunk = log.sent(r);
        if (chunk) sentBy.push(chunk);
      }
      sentBy.push(...log.flush());
    }
    const url = (cursor?: EverythingRequest['cursor']) => {
      const qs = new URLSearchParams();
      if (ask.since !== undefined) qs.set('_since', new Date(ask.since).toISOString());
      if (ask.types) qs.set('_type', ask.types.join(','));
      qs.set('_count', String(ask.count));
      if (cursor && (cursor.type > 0 || cursor.offset > 0)) qs.set('_cursor', `${this.order[cursor.type]}:${cursor.offset}`);
      return `${base}/Patient/${patientId}/$everything?${qs}`;
    };
    const link: BundleLink[] = [{ relation: 'self', url: url(ask.cursor) }];
    if (next) link.push({ relation: 'next', url: url(next) });
    const entry = (r: Resource, mode: 'match' | 'include'): BundleEntry => ({ fullUrl: `${base}/${r.resourceType}/${r.id}`, resource: r as FhirResource, search: { mode } });
    return { resourceType: 'Bundle', type: 'searchset', link, entry: [...matches.map((r) => entry(r, 'match')), ...includes.map((r) => entry(r, 'include')), ...sentBy.map((r) => entry(r, 'include'))] };
  }
}

/** GET `Patient/{id}/$everything`, for any caller that may read Patients. */
export function everythingRoutes(deps: EverythingDeps): Router {
  const router = Router({ caseSensitive: true });
  const everything = new PatientEverything(deps);
  const handler = asyncHandler(async (req, res) => {
    const bundle = await everything.page(req, req.params.id, everything.parse(req.query as Record<string, unknown>));
    sendResource(res, 200, bundle);
  });
  router.get(`/Patient/${ID_PARAM}/([$])everything`, deps.guard.require({ type: 'Patient', action: 'r' }), handler);
  return router;
}
