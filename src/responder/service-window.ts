/**
 * PDex's payer-to-payer window: a source sends the data with dates of service within the last five
 * years (CMS-0057-F). Each type's service dates are the elements below; a resource is inside the
 * window when its latest service date is on or after the cut-off, when a period it has is still
 * open, or when it has no service date at all (a Patient, a Coverage, a directory record). A
 * Condition or AllergyIntolerance still active is inside whatever its dates.
 */
const SERVICE_DATES: Record<string, string[]> = {
  ExplanationOfBenefit: ['billablePeriod', 'item.servicedDate', 'item.servicedPeriod', 'created'],
  Claim: ['billablePeriod', 'item.servicedDate', 'item.servicedPeriod', 'created'],
  ClaimResponse: ['created'],
  Encounter: ['period'],
  Observation: ['effectiveDateTime', 'effectivePeriod', 'effectiveInstant', 'issued'],
  DiagnosticReport: ['effectiveDateTime', 'effectivePeriod', 'issued'],
  Procedure: ['performedDateTime', 'performedPeriod'],
  Immunization: ['occurrenceDateTime'],
  MedicationRequest: ['authoredOn'],
  MedicationDispense: ['whenHandedOver', 'whenPrepared'],
  MedicationStatement: ['effectiveDateTime', 'effectivePeriod', 'dateAsserted'],
  MedicationAdministration: ['effectiveDateTime', 'effectivePeriod'],
  DocumentReference: ['context.period', 'date'],
  ServiceRequest: ['occurrenceDateTime', 'occurrencePeriod', 'authoredOn'],
  CarePlan: ['period'],
  CareTeam: ['period'],
  Goal: ['startDate', 'statusDate'],
  Condition: ['abatementDateTime', 'abatementPeriod', 'recordedDate', 'onsetDateTime', 'onsetPeriod'],
  AllergyIntolerance: ['lastOccurrence', 'recordedDate'],
  Device: ['manufactureDate'],
};

const STILL_ACTIVE = new Set(['active', 'recurrence', 'relapse']);

function valuesAt(value: unknown, steps: string[]): unknown[] {
  if (value === undefined || value === null) return [];
  if (Array.isArray(value)) return value.flatMap((v) => valuesAt(v, steps));
  if (steps.length === 0) return [value];
  if (typeof value !== 'object') return [];
  return valuesAt((value as Record<string, unknown>)[steps[0]], steps.slice(1));
}

/** The latest moment a date, dateTime, instant or Period stands for (an open period: +Infinity); undefined if unreadable. */
function latest(v: unknown): number | undefined {
  if (typeof v === 'string') {
    // A partial date (2019, 2019-05) stands for its whole span: compare its last moment.
    const m = v.match(/^(\d{4})(?:-(\d{2}))?(?:-(\d{2}))?/);
    if (!m) return undefined;
    if (m[3] || v.length > 10) return Date.parse(v.length === 10 ? `${v}T23:59:59Z` : v);
    return Date.UTC(Number(m[1]), m[2] ? Number(m[2]) : 12, 1) - 1;
  }
  if (v && typeof v === 'object') {
    const p = v as { start?: string; end?: string };
    if (p.end) return latest(p.end);
    if (p.start) return Number.POSITIVE_INFINITY;
  }
  return undefined;
}

export function inServiceWindow(resource: { resourceType: string } & Record<string, unknown>, from: number): boolean {
  const paths = SERVICE_DATES[resource.resourceType];
  if (!paths) return true;
  const status = (resource.clinicalStatus as { coding?: { code?: string }[] } | undefined)?.coding?.map((c) => c.code) ?? [];
  if (status.some((c) => c && STILL_ACTIVE.has(c))) return true;
  let found = false;
  for (const path of paths) {
    for (const v of valuesAt(resource, path.split('.'))) {
      const at = latest(v);
      if (at === undefined || Number.isNaN(at)) continue;
      if (at >= from) return true;
      found = true;
    }
  }
  return !found;
}

/** The start of a window of `years` years ending at `now`. */
export function serviceWindowStart(years: number, now = new Date()): number {
  return Date.UTC(now.getUTCFullYear() - years, now.getUTCMonth(), now.getUTCDate());
}

const YEAR_MS = 365 * 86_400_000;

type AnyResource = { resourceType: string; id?: string } & Record<string, unknown>;

/** A prior authorization: an ExplanationOfBenefit with `use` preauthorization (PDex Prior Authorization profile). */
export function isPriorAuthorization(resource: AnyResource): boolean {
  return resource.resourceType === 'ExplanationOfBenefit' && resource.use === 'preauthorization';
}

/**
 * PDex §pdex-131, §pdex-132, §pdex-170: the prior authorizations a partner gets are the current ones
 * (status active), the pending ones (outcome queued or partial, not cancelled), and those whose status
 * changed in the last twelve months, whatever their dates of service. This server keeps no separate
 * date of status change, so the last change of the record stands for it (`meta.lastUpdated`): a
 * superset, never fewer than the rule asks.
 */
export function priorAuthorizationInScope(resource: AnyResource, now: number): boolean {
  const status = resource.status;
  if (status === 'active') return true;
  const pending = resource.outcome === 'queued' || resource.outcome === 'partial';
  if (pending && status !== 'cancelled' && status !== 'entered-in-error') return true;
  const changed = Date.parse(String((resource.meta as { lastUpdated?: string } | undefined)?.lastUpdated ?? ''));
  return !Number.isNaN(changed) && changed >= now - YEAR_MS;
}

/** Types whose records, referenced by an active prior authorization, are its documentation (CMS-0057-F: "related clinical documentation and forms"). */
const DOCUMENTATION = /^(DocumentReference|QuestionnaireResponse|Binary)\/([A-Za-z0-9\-.]{1,64})$/;

/** The references (`Type/id`) to documentation that a prior authorization in force carries (supporting info and any other reference). */
export function priorAuthorizationDocumentation(resource: AnyResource, into: Set<string>): void {
  if (!isPriorAuthorization(resource) || resource.status !== 'active') return;
  const walk = (v: unknown): void => {
    if (Array.isArray(v)) v.forEach(walk);
    else if (v && typeof v === 'object') {
      for (const [k, x] of Object.entries(v)) {
        if (k === 'reference' && typeof x === 'string' && DOCUMENTATION.test(x)) into.add(x);
        else if (typeof x === 'object') walk(x);
      }
    }
  };
  walk(resource);
}

/**
 * Whether a record goes to a partner in a payer-to-payer export: prior authorizations by their own
 * rule; the documentation of an active prior authorization always; the rest by the window of dates
 * of service when one applies (`from`).
 */
export function inPayerToPayerScope(resource: AnyResource, from: number | undefined, now: number, documentation: ReadonlySet<string>): boolean {
  if (isPriorAuthorization(resource)) return priorAuthorizationInScope(resource, now);
  if (documentation.has(`${resource.resourceType}/${resource.id}`)) return true;
  return from === undefined || inServiceWindow(resource, from);
}
