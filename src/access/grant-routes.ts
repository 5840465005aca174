import { Router } from 'express';
import type { Parameters, ParametersParameter } from 'fhir/r4';
import { asyncHandler, sendResource } from '../fhir/http';
import { first, readParameters } from '../fhir/parameters';
import { outcome } from '../fhir/outcome';
import { ID_PARAM } from '../fhir/rest-routes';
import { Guard } from '../auth/guard';
import { GrantStore, GrantInfo } from './grants';
import type { Logger } from '../logger';

function grantPart(g: GrantInfo): ParametersParameter {
  const part: ParametersParameter[] = [
    { name: 'client', valueString: g.clientId },
    { name: 'policy', valueCode: g.policy },
    { name: 'consent', valueReference: { reference: `Consent/${g.consentId}` } },
    { name: 'granted', valueInstant: g.grantedAt },
    { name: 'active', valueBoolean: g.active },
  ];
  if (g.start) part.push({ name: 'start', valueDateTime: g.start });
  if (g.end) part.push({ name: 'end', valueDateTime: g.end });
  if (g.revokedAt) part.push({ name: 'revoked', valueInstant: g.revokedAt });
  return { name: 'grant', part };
}

/**
 * The back office's view of partners' access to a member (service clients only):
 * `GET Patient/{id}/$access-grants` lists the grants; `POST Patient/{id}/$revoke-access`, with an
 * optional `client`, ends them at once (as deleting the member's Consent does).
 */
export function grantRoutes(guard: Guard, grants: GrantStore, logger: Logger): Router {
  const router = Router({ caseSensitive: true });
  router.get(
    `/Patient/${ID_PARAM}/([$])access-grants`,
    guard.require({ type: 'Consent', action: 'r', role: 'service' }),
    asyncHandler(async (req, res) => {
      const list = await grants.list(req.params.id);
      const body: Parameters = { resourceType: 'Parameters', parameter: list.map(grantPart) };
      sendResource(res, 200, body);
    }),
  );
  router.post(
    `/Patient/${ID_PARAM}/([$])revoke-access`,
    guard.require({ type: 'Consent', action: 'd', role: 'service' }),
    asyncHandler(async (req, res) => {
      const hasBody = req.body && typeof req.body === 'object' && Object.keys(req.body).length > 0;
      const params = hasBody ? readParameters(req.body, [{ name: 'client', min: 0, max: 1, type: 'valueString' }]) : new Map();
      const client = first<string>(params, 'client', 'valueString');
      const n = await grants.revoke(req.params.id, client);
      logger.info('access revoked', { by: req.access?.clientId, client: client ?? '*', grants: n });
      sendResource(res, 200, outcome('information', 'informational', `${n} grant(s) revoked`));
    }),
  );
  return router;
}
