/** The resource types this server serves over REST. */
export const RESOURCE_TYPES = [
  'Patient', 'Coverage', 'Consent', 'Task', 'Provenance', 'Group',
  'ExplanationOfBenefit', 'Encounter', 'Condition', 'Observation', 'Procedure',
  'MedicationRequest', 'MedicationDispense', 'Immunization', 'AllergyIntolerance',
  'DiagnosticReport', 'DocumentReference', 'CarePlan', 'CareTeam', 'Goal', 'Device',
  'Practitioner', 'PractitionerRole', 'Organization', 'Location', 'Medication',
  'RelatedPerson', 'ServiceRequest', 'Binary',
] as const;

export type ResourceType = (typeof RESOURCE_TYPES)[number];

export function isServedType(type: string): type is ResourceType {
  return (RESOURCE_TYPES as readonly string[]).includes(type);
}

export const ID_PATTERN = /^[A-Za-z0-9\-.]{1,64}$/;
