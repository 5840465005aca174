/**
 * A deterministic synthetic member population for a source payer: members with member ids,
 * Coverage, claims (ExplanationOfBenefit), encounters, conditions (some labelled sensitive),
 * observations, medication requests, immunizations, and the practitioners, organizations,
 * locations and medications they reference. Every resource passes the R4 schema.
 */
import type { Resource } from 'fhir/r4';

export interface PopulationOptions {
  members: number;
  /** Identifier system of member ids at this payer. */
  memberSystem?: string;
  /** Prefix for ids, so two payers' data never collide. */
  prefix?: string;
  seed?: number;
  /** Encounters per member (each with a claim and an observation); 1 to 3 at random when left out. */
  encounters?: number;
}

export interface SyntheticMember {
  patientId: string;
  memberId: string;
  family: string;
  given: string;
  birthDate: string;
  gender: 'male' | 'female';
}

const FAMILIES = ['Smith', 'Johnson', 'Williams', 'Brown', 'Jones', 'García', 'Miller', 'Davis', 'Rodríguez', 'Martínez', 'Nguyen', 'Müller', "O'Brien", 'Kim', 'Patel', 'Okafor'];
const GIVEN_F = ['Mary', 'Patricia', 'Jennifer', 'Linda', 'Elena', 'Aisha', 'Mei', 'Zoë'];
const GIVEN_M = ['John', 'James', 'Robert', 'Michael', 'José', 'Ahmed', 'Wei', 'Kwame'];
const CITIES = [['Springfield', 'IL', '62701'], ['Columbus', 'OH', '43004'], ['Austin', 'TX', '73301'], ['Denver', 'CO', '80014']];

function rng(seed: number) {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const pad = (n: number, w = 2) => String(n).padStart(w, '0');

export function generatePopulation(opts: PopulationOptions): { resources: Resource[]; members: SyntheticMember[] } {
  const rand = rng(opts.seed ?? 42);
  const pick = <T>(xs: readonly T[]) => xs[Math.floor(rand() * xs.length)];
  const int = (lo: number, hi: number) => lo + Math.floor(rand() * (hi - lo + 1));
  const memberSystem = opts.memberSystem ?? 'http://source-payer.example.com/member-id';
  const p = opts.prefix ?? 'src';
  const resources: Resource[] = [];
  const members: SyntheticMember[] = [];

  const payer = `${p}-payer`;
  resources.push({ resourceType: 'Organization', id: payer, active: true, name: 'Source Health Plan', type: [{ coding: [{ system: 'http://terminology.hl7.org/CodeSystem/organization-type', code: 'pay' }] }] } as Resource);
  const providers = Array.from({ length: 5 }, (_, i) => `${p}-org-${i}`);
  providers.forEach((id, i) => resources.push({ resourceType: 'Organization', id, active: true, name: `Community Clinic ${i + 1}`, type: [{ coding: [{ system: 'http://terminology.hl7.org/CodeSystem/organization-type', code: 'prov' }] }] } as Resource));
  const practitioners = Array.from({ length: 10 }, (_, i) => `${p}-pract-${i}`);
  practitioners.forEach((id, i) =>
    resources.push({ resourceType: 'Practitioner', id, active: true, identifier: [{ system: 'http://hl7.org/fhir/sid/us-npi', value: `19${pad(i, 8)}` }], name: [{ family: pick(FAMILIES), given: [pick(GIVEN_F)], prefix: ['Dr.'] }] } as Resource),
  );
  const locations = Array.from({ length: 3 }, (_, i) => `${p}-loc-${i}`);
  locations.forEach((id, i) => resources.push({ resourceType: 'Location', id, status: 'active', name: `Clinic site ${i + 1}`, managingOrganization: { reference: `Organization/${providers[i]}` } } as Resource));
  const meds = [['197361', 'Amlodipine 5 MG Oral Tablet'], ['860975', 'Metformin 500 MG Oral Tablet'], ['314076', 'Lisinopril 10 MG Oral Tablet']];
  meds.forEach(([code, text], i) => resources.push({ resourceType: 'Medication', id: `${p}-med-${i}`, code: { coding: [{ system: 'http://www.nlm.nih.gov/research/umls/rxnorm', code, display: text }], text } } as Resource));

  for (let m = 0; m < opts.members; m++) {
    const gender = rand() < 0.5 ? 'female' : 'male';
    const family = pick(FAMILIES);
    const given = gender === 'female' ? pick(GIVEN_F) : pick(GIVEN_M);
    const birthDate = `${int(1940, 2010)}-${pad(int(1, 12))}-${pad(int(1, 28))}`;
    const patientId = `${p}-pat-${m}`;
    const memberId = `MEM-${pad(m + 1, 6)}`;
    const [city, state, zip] = pick(CITIES);
    members.push({ patientId, memberId, family, given, birthDate, gender });
    const patientRef = { reference: `Patient/${patientId}` };
    resources.push({
      resourceType: 'Patient', id: patientId,
      identifier: [{ type: { coding: [{ system: 'http://terminology.hl7.org/CodeSystem/v2-0203', code: 'MB' }] }, system: memberSystem, value: memberId }],
      name: [{ use: 'official', family, given: [given] }], gender, birthDate,
      address: [{ line: [`${int(1, 999)} Main St`], city, state, postalCode: zip, country: 'US' }],
    } as Resource);
    resources.push({
      resourceType: 'Coverage', id: `${p}-cov-${m}`, status: 'active',
      identifier: [{ type: { coding: [{ system: 'http://terminology.hl7.org/CodeSystem/v2-0203', code: 'MB' }] }, system: memberSystem, value: memberId }],
      subscriberId: `SUB-${pad(m + 1, 6)}`, beneficiary: patientRef, subscriber: patientRef, relationship: { coding: [{ system: 'http://terminology.hl7.org/CodeSystem/subscriber-relationship', code: 'self' }] },
      period: { start: '2019-01-01', end: '2025-12-31' }, payor: [{ reference: `Organization/${payer}` }],
    } as Resource);
    const encounters = opts.encounters ?? int(1, 3);
    for (let e = 0; e < encounters; e++) {
      const date = `${int(2020, 2025)}-${pad(int(1, 12))}-${pad(int(1, 28))}`;
      const pract = pick(practitioners);
      const org = pick(providers);
      resources.push({
        resourceType: 'Encounter', id: `${p}-enc-${m}-${e}`, status: 'finished',
        class: { system: 'http://terminology.hl7.org/CodeSystem/v3-ActCode', code: 'AMB' }, subject: patientRef,
        participant: [{ individual: { reference: `Practitioner/${pract}` } }], period: { start: `${date}T09:00:00Z`, end: `${date}T09:30:00Z` },
        location: [{ location: { reference: `Location/${pick(locations)}` } }], serviceProvider: { reference: `Organization/${org}` },
      } as Resource);
      resources.push({
        resourceType: 'ExplanationOfBenefit', id: `${p}-eob-${m}-${e}`, status: 'active', use: 'claim', outcome: 'complete', created: `${date}T12:00:00Z`,
        identifier: [{ system: `${memberSystem.replace(/member-id$/, 'claim-id')}`, value: `CLM-${m}-${e}` }],
        type: { coding: [{ system: 'http://terminology.hl7.org/CodeSystem/claim-type', code: 'professional' }] },
        patient: patientRef, insurer: { reference: `Organization/${payer}` }, provider: { reference: `Organization/${org}` },
        careTeam: [{ sequence: 1, provider: { reference: `Practitioner/${pract}` } }],
        insurance: [{ focal: true, coverage: { reference: `Coverage/${p}-cov-${m}` } }],
        billablePeriod: { start: date, end: date },
        item: [{ sequence: 1, productOrService: { coding: [{ system: 'http://www.ama-assn.org/go/cpt', code: '99213' }] }, servicedDate: date }],
      } as Resource);
      resources.push({
        resourceType: 'Observation', id: `${p}-obs-${m}-${e}`, status: 'final',
        category: [{ coding: [{ system: 'http://terminology.hl7.org/CodeSystem/observation-category', code: 'vital-signs' }] }],
        code: { coding: [{ system: 'http://loinc.org', code: '8867-4', display: 'Heart rate' }] }, subject: patientRef,
        encounter: { reference: `Encounter/${p}-enc-${m}-${e}` }, effectiveDateTime: `${date}T09:10:00Z`,
        valueQuantity: { value: int(55, 100), unit: 'beats/minute', system: 'http://unitsofmeasure.org', code: '/min' },
      } as Resource);
    }
    resources.push({
      resourceType: 'Condition', id: `${p}-cond-${m}`, subject: patientRef,
      clinicalStatus: { coding: [{ system: 'http://terminology.hl7.org/CodeSystem/condition-clinical', code: 'active' }] },
      code: { coding: [{ system: 'http://snomed.info/sct', code: '38341003', display: 'Hypertension' }] }, onsetDateTime: '2018-04-01',
    } as Resource);
    if (m % 3 === 0) {
      // A sensitive record: shared only under a #sensitive consent.
      resources.push({
        resourceType: 'Condition', id: `${p}-cond-sens-${m}`, subject: patientRef,
        meta: { security: [{ system: 'http://terminology.hl7.org/CodeSystem/v3-ActCode', code: 'PSY' }] },
        clinicalStatus: { coding: [{ system: 'http://terminology.hl7.org/CodeSystem/condition-clinical', code: 'active' }] },
        code: { coding: [{ system: 'http://snomed.info/sct', code: '35489007', display: 'Depressive disorder' }] }, onsetDateTime: '2021-09-01',
      } as Resource);
    }
    const med = int(0, meds.length - 1);
    resources.push({
      resourceType: 'MedicationRequest', id: `${p}-medreq-${m}`, status: 'active', intent: 'order', subject: patientRef,
      medicationReference: { reference: `Medication/${p}-med-${med}` }, authoredOn: '2024-02-01', requester: { reference: `Practitioner/${pick(practitioners)}` },
    } as Resource);
    resources.push({
      resourceType: 'Immunization', id: `${p}-imm-${m}`, status: 'completed', patient: patientRef, occurrenceDateTime: '2024-10-01',
      vaccineCode: { coding: [{ system: 'http://hl7.org/fhir/sid/cvx', code: '140', display: 'Influenza, seasonal' }] },
    } as Resource);
  }
  return { resources, members };
}
