/** The resource types this server serves over REST. */
export const RESOURCE_TYPES = [
  'Patient', 'Coverage', 'Consent', 'Task', 'Provenance', 'Group',
  'ExplanationOfBenefit', 'Encounter', 'Condition', 'Observation', 'Procedure',
  'MedicationRequest', 'MedicationDispense', 'Immunization', 'AllergyIntolerance',
  'DiagnosticReport', 'DocumentReference', 'CarePlan', 'CareTeam', 'Goal', 'Device',
  'Practitioner', 'PractitionerRole', 'Organization', 'Location', 'Medication',
  'RelatedPerson', 'ServiceRequest', 'Binary', 'AuditEvent',
] as const;

/** Types the server writes itself and no client may write (the audit trail). */
export const SERVER_WRITTEN_TYPES: readonly string[] = ['AuditEvent'];

export type ResourceType = (typeof RESOURCE_TYPES)[number];

export function isServedType(type: string): type is ResourceType {
  return (RESOURCE_TYPES as readonly string[]).includes(type);
}

export const ID_PATTERN = /^[A-Za-z0-9\-.]{1,64}$/;
