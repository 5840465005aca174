import { Router } from 'express';
import { asyncHandler, sendResource } from '../fhir/http';
import { ID_PARAM } from '../fhir/rest-routes';
import { Guard } from '../auth/guard';
import { InvokeExportService } from './invoke-export';

/** `POST Task/{id}/$sdh.s2s.run-off`: the requesting payer's back office asks again for what changed since a completed exchange. */
export function runOffRoutes(guard: Guard, invokeExport: InvokeExportService): Router {
  const router = Router({ caseSensitive: true });
  router.post(
    `/Task/${ID_PARAM}/([$])sdh.s2s.run-off`,
    guard.require({ type: 'Task', action: 'c', role: 'service' }),
    asyncHandler(async (req, res) => {
      sendResource(res, 200, await invokeExport.runOff(req.params.id, req));
    }),
  );
  return router;
}
