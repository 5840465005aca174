/**
 * The profiles a PDex STU 2.2 server lists for each type it serves (its `pdex-server-6-1`
 * CapabilityStatement: US Core 6.1 and PDex), plus CARIN Blue Button's for claims data (PDex's
 * Patient Access API), advertised as each type's `supportedProfile`. The server stores and serves
 * resources claiming them; it checks them against R4, not against each profile.
 */
const US_CORE = 'http://hl7.org/fhir/us/core/StructureDefinition/';
const PDEX = 'http://hl7.org/fhir/us/davinci-pdex/StructureDefinition/';
const C4BB = 'http://hl7.org/fhir/us/carin-bb/StructureDefinition/';
const core = (...names: string[]) => names.map((n) => `${US_CORE}us-core-${n}`);

export const SUPPORTED_PROFILES: Record<string, string[]> = {
  AllergyIntolerance: core('allergyintolerance'),
  CarePlan: core('careplan'),
  CareTeam: core('careteam'),
  Condition: core('condition-encounter-diagnosis', 'condition-problems-health-concerns'),
  Consent: [`${PDEX}pdex-provider-consent`, 'http://hl7.org/fhir/us/davinci-hrex/StructureDefinition/hrex-consent'],
  Coverage: [...core('coverage'), `${C4BB}C4BB-Coverage`],
  Device: [...core('implantable-device'), `${PDEX}pdex-device`],
  DiagnosticReport: core('diagnosticreport-note', 'diagnosticreport-lab'),
  DocumentReference: core('documentreference'),
  Encounter: core('encounter'),
  ExplanationOfBenefit: [
    `${PDEX}pdex-priorauthorization`,
    `${C4BB}C4BB-ExplanationOfBenefit-Inpatient-Institutional`,
    `${C4BB}C4BB-ExplanationOfBenefit-Outpatient-Institutional`,
    `${C4BB}C4BB-ExplanationOfBenefit-Professional-NonClinician`,
    `${C4BB}C4BB-ExplanationOfBenefit-Pharmacy`,
    `${C4BB}C4BB-ExplanationOfBenefit-Oral`,
  ],
  Goal: core('goal'),
  Group: ['http://hl7.org/fhir/us/davinci-atr/StructureDefinition/atr-group', `${PDEX}pdex-member-match-group`, `${PDEX}pdex-member-no-match-group`],
  Immunization: core('immunization'),
  Location: core('location'),
  Medication: core('medication'),
  MedicationDispense: [...core('medicationdispense'), `${PDEX}pdex-medicationdispense`],
  MedicationRequest: core('medicationrequest'),
  Observation: [
    ...core('observation-lab', 'observation-clinical-result', 'observation-screening-assessment', 'simple-observation', 'vital-signs', 'blood-pressure', 'bmi', 'body-height', 'body-weight', 'body-temperature', 'heart-rate', 'respiratory-rate', 'pulse-oximetry', 'head-circumference', 'smokingstatus', 'observation-pregnancystatus', 'observation-pregnancyintent', 'observation-occupation', 'observation-sexual-orientation'),
    `${US_CORE}pediatric-weight-for-height`,
    `${US_CORE}pediatric-bmi-for-age`,
    `${US_CORE}head-occipital-frontal-circumference-percentile`,
  ],
  Organization: [...core('organization'), `${C4BB}C4BB-Organization`],
  Patient: [...core('patient'), `${C4BB}C4BB-Patient`],
  Practitioner: [...core('practitioner'), `${C4BB}C4BB-Practitioner`],
  PractitionerRole: core('practitionerrole'),
  Procedure: core('procedure'),
  Provenance: [...core('provenance'), `${PDEX}pdex-provenance`],
  QuestionnaireResponse: core('questionnaireresponse'),
  RelatedPerson: core('relatedperson'),
  ServiceRequest: core('servicerequest'),
  Specimen: core('specimen'),
};
