import type { RawSearchParameter } from './registry';

/**
 * The search parameters PDex STU 2.2 defines that R4 has not (its `input/capabilities` and
 * SearchParameters.fsh), which its server CapabilityStatement requires: ExplanationOfBenefit `type`,
 * `use` and `service-date` (the IG's `_typeFilter` example is `ExplanationOfBenefit?service-date=ge…`),
 * and Group `characteristic-value-reference` (§pdex-157).
 */
export const PDEX_SEARCH_PARAMETERS: RawSearchParameter[] = [
  {
    url: 'http://hl7.org/fhir/us/davinci-pdex/SearchParameter/explanationofbenefit-service-date',
    code: 'service-date',
    base: ['ExplanationOfBenefit'],
    type: 'date',
    expression: 'ExplanationOfBenefit.billablePeriod | ExplanationOfBenefit.item.serviced',
  },
  { url: 'http://hl7.org/fhir/us/davinci-pdex/SearchParameter/explanationofbenefit-type', code: 'type', base: ['ExplanationOfBenefit'], type: 'token', expression: 'ExplanationOfBenefit.type' },
  { url: 'http://hl7.org/fhir/us/davinci-pdex/SearchParameter/explanationofbenefit-use', code: 'use', base: ['ExplanationOfBenefit'], type: 'token', expression: 'ExplanationOfBenefit.use' },
  {
    url: 'http://hl7.org/fhir/us/davinci-pdex/SearchParameter/pdex-group-characteristic-value-reference',
    code: 'characteristic-value-reference',
    base: ['Group'],
    type: 'reference',
    expression: 'Group.characteristic.value.ofType(Reference)',
    target: [],
  },
];
