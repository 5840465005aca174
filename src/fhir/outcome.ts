import type { OperationOutcome, OperationOutcomeIssue } from 'fhir/r4';

export type IssueCode = OperationOutcomeIssue['code'];

/** A client- or server-caused failure that the error handler turns into an OperationOutcome. */
export class FhirError extends Error {
  constructor(
    readonly status: number,
    readonly code: IssueCode,
    message: string,
    readonly expression?: string[],
    readonly headers: Record<string, string> = {},
  ) {
    super(message);
    this.name = 'FhirError';
  }

  toOutcome(): OperationOutcome {
    return outcome('error', this.code, this.message, this.expression);
  }
}

export function outcome(severity: OperationOutcomeIssue['severity'], code: IssueCode, text: string, expression?: string[]): OperationOutcome {
  const issue: OperationOutcomeIssue = { severity, code, diagnostics: text, details: { text } };
  if (expression && expression.length) issue.expression = expression;
  return { resourceType: 'OperationOutcome', issue: [issue] };
}

export const badRequest = (text: string, expression?: string[]) => new FhirError(400, 'invalid', text, expression);
export const notFound = (text: string) => new FhirError(404, 'not-found', text);
export const gone = (text: string) => new FhirError(410, 'deleted', text);
export const conflict = (text: string) => new FhirError(409, 'conflict', text);
export const preconditionFailed = (text: string) => new FhirError(412, 'conflict', text);
export const unprocessable = (text: string, code: IssueCode = 'processing') => new FhirError(422, code, text);
export const forbidden = (text: string) => new FhirError(403, 'forbidden', text);
export const unauthorized = (text: string) =>
  new FhirError(401, 'login', text, undefined, { 'WWW-Authenticate': 'Bearer realm="fhir"' });
