import { Router } from 'express';
import type { OperationDefinition } from 'fhir/r4';
import { asyncHandler, preferStrict, sendResource } from '../fhir/http';
import { badRequest, notFound } from '../fhir/outcome';
import { searchBundle } from '../fhir/bundle';
import { ID_PARAM } from '../fhir/rest-routes';
import { Guard, PUBLIC } from '../auth/guard';
import type { ServedOperation } from './operation-definitions';

const SEARCHABLE: Record<string, (d: OperationDefinition) => string[]> = {
  url: (d) => [d.url as string],
  _id: (d) => [d.id as string],
  code: (d) => [d.code],
  name: (d) => [d.name],
};
const IGNORED = new Set(['_format', '_pretty', '_count', '_summary', '_total']);

/**
 * The OperationDefinitions of the operations this server serves, read-only and public like the
 * CapabilityStatement that points at them: `GET OperationDefinition/{id}` and
 * `GET OperationDefinition?url=…` (also `_id`, `code`, `name`; exact matches, values comma-separated).
 */
export function definitionRoutes(guard: Guard, operations: () => ServedOperation[], baseUrl: () => string): Router {
  const router = Router({ caseSensitive: true });
  const all = () => {
    const seen = new Set<string>();
    return operations().map((op) => op.definition).filter((d) => !seen.has(d.id as string) && !!seen.add(d.id as string));
  };

  router.get(
    '/OperationDefinition',
    guard.require(PUBLIC),
    asyncHandler(async (req, res) => {
      const warnings: string[] = [];
      const applied: [string, string][] = [];
      let found = all();
      for (const [key, raw] of Object.entries(req.query)) {
        const values = (Array.isArray(raw) ? raw : [raw]).map(String);
        const field = SEARCHABLE[key];
        if (!field) {
          if (IGNORED.has(key)) continue;
          const msg = `Unknown search parameter '${key}' for OperationDefinition (url, _id, code and name are supported)`;
          if (preferStrict(req)) throw badRequest(msg);
          warnings.push(msg);
          continue;
        }
        for (const value of values) {
          const wanted = value.split(',');
          found = found.filter((d) => field(d).some((v) => wanted.includes(v)));
          applied.push([key, value]);
        }
      }
      sendResource(res, 200, searchBundle({ base: baseUrl(), type: 'OperationDefinition', resources: found, total: found.length, selfParams: applied, offset: 0, count: found.length, hasMore: false, warnings }));
    }),
  );

  router.get(
    `/OperationDefinition/${ID_PARAM}`,
    guard.require(PUBLIC),
    asyncHandler(async (req, res) => {
      const def = all().find((d) => d.id === req.params.id);
      if (!def) throw notFound(`OperationDefinition/${req.params.id} is not known`);
      sendResource(res, 200, def);
    }),
  );
  return router;
}
