import type { Resource } from 'fhir/r4';
import { generatePopulation, SyntheticMember } from '../../scripts/synthetic';
import { RunningServer } from '../../src/main';

/** Seeds a server's store with the synthetic population (the same data `npm run seed` sends over HTTP). */
export async function seedPopulation(server: RunningServer, members: number, prefix = 'src', memberSystem = 'http://source-payer.example.com/member-id'): Promise<SyntheticMember[]> {
  const { resources, members: list } = generatePopulation({ members, prefix, memberSystem });
  for (const r of resources) await server.store.update(r.resourceType, r.id as string, r as Resource);
  return list;
}

export function memberMatchBody(m: { family: string; given: string; birthDate: string; memberId: string }, opts: { policy?: string; consent?: Record<string, unknown>; memberSystem?: string } = {}) {
  return {
    resourceType: 'Parameters',
    parameter: [
      { name: 'MemberPatient', resource: { resourceType: 'Patient', name: [{ family: m.family, given: [m.given] }], birthDate: m.birthDate } },
      { name: 'CoverageToMatch', resource: { resourceType: 'Coverage', identifier: [{ system: opts.memberSystem ?? 'http://source-payer.example.com/member-id', value: m.memberId }] } },
      { name: 'Consent', resource: { resourceType: 'Consent', policy: [{ uri: `http://hl7.org/fhir/us/davinci-hrex/StructureDefinition-hrex-consent.html#${opts.policy ?? 'regular'}` }], ...(opts.consent ?? {}) } },
    ],
  };
}
