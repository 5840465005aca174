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
