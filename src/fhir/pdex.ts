/** Codes of PDex's payer-to-payer exchange that both sides of it use. */

/** The codes of the result Groups of `$bulk-member-match`: match, nomatch, consentconstraint. */
export const RESULT_SYSTEM = 'http://hl7.org/fhir/us/davinci-pdex/CodeSystem/PdexMultiMemberMatchResultCS';

/** `$davinci-data-export`'s exportType for the payer-to-payer exchange. */
export const PAYER_TO_PAYER = 'hl7.fhir.us.davinci-pdex#payertopayer';

/**
 * The Parameters of a `$davinci-data-export` kick-off, each part of the type ATR's OperationDefinition
 * declares: `exportType` canonical, `_since`/`_until` instant, `patient` Reference, `_type` and
 * `_typeFilter` string (repeated values of one parameter stay separate parts).
 */
export function davinciExportParameters(params: Record<string, string[]>): { name: string; [value: string]: unknown }[] {
  const typed = (name: string, v: string) => {
    if (name === '_since' || name === '_until') return { name, valueInstant: v };
    if (name === 'patient') return { name, valueReference: { reference: v } };
    return { name, valueString: v };
  };
  const rest = Object.entries(params).filter(([k]) => k !== 'exportType');
  return [{ name: 'exportType', valueCanonical: PAYER_TO_PAYER }, ...rest.flatMap(([k, vs]) => vs.map((v) => typed(k, v)))];
}

/** The three outcomes of `$bulk-member-match`, as `Group.code` carries them (PDex 2.2; 1..1 on every result Group). */
export type MatchResultCode = 'match' | 'nomatch' | 'consentconstraint';
export const RESULT_DISPLAY: Record<MatchResultCode, string> = { match: 'Matched', nomatch: 'Not Matched', consentconstraint: 'Consent Constraint' };
/** The Parameters names of the three result Groups (PDex 2.1's envelope, still served beside the Group NDJSON). */
export const RESULT_PARAMETER: Record<MatchResultCode, string> = { match: 'MatchedMembers', nomatch: 'NonMatchedMembers', consentconstraint: 'ConsentConstrainedMembers' };

/** `matchedMember` / `nonMatchedMember` (one extension, two slice names): the submitted MemberPatient, contained. */
export const MATCH_PARAMETERS_EXT = 'http://hl7.org/fhir/us/davinci-pdex/StructureDefinition/base-ext-match-parameters';
/** `matchedCoverage` / `nonMatchedCoverage`: the submitted CoverageToMatch, contained (§pdex-153). */
export const MATCH_COVERAGE_EXT = 'http://hl7.org/fhir/us/davinci-pdex/StructureDefinition/base-ext-match-coverage';
