import type { NextFunction, Request, RequestHandler, Response } from 'express';

/** Express 4 does not catch rejected promises: route every async handler's failure to the error handler. */
export function asyncHandler(fn: (req: Request, res: Response, next: NextFunction) => Promise<unknown>): RequestHandler {
  return (req, res, next) => {
    fn(req, res, next).catch(next);
  };
}

export const FHIR_JSON = 'application/fhir+json; charset=utf-8';

/** Sends a FHIR resource with the FHIR media type. */
export function sendResource(res: Response, status: number, body: unknown): void {
  res.status(status).type(FHIR_JSON).send(JSON.stringify(body));
}

/** `Prefer: handling=strict` asks for 400 on unknown search parameters instead of a warning. */
export function preferStrict(req: Request): boolean {
  return /handling\s*=\s*strict/i.test(req.get('prefer') ?? '');
}

/** `W/"3"` or `"3"` or `3` → `3`. */
export function parseETag(value: string | undefined): string | undefined {
  if (!value) return undefined;
  const m = value.trim().match(/^(?:W\/)?"?([^"]*)"?$/);
  return m ? m[1] : undefined;
}
