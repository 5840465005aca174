/** Codes of PDex's payer-to-payer exchange that both sides of it use. */

/** The codes of the result Groups of `$bulk-member-match`: match, nomatch, consentconstraint. */
export const RESULT_SYSTEM = 'http://hl7.org/fhir/us/davinci-pdex/CodeSystem/PdexMultiMemberMatchResultCS';

/** `$davinci-data-export`'s exportType for the payer-to-payer exchange. */
export const PAYER_TO_PAYER = 'hl7.fhir.us.davinci-pdex#payertopayer';
