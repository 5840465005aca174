import { Router, Request } from 'express';
import type { Binary } from 'fhir/r4';
import { asyncHandler, sendResource } from './http';
import { ID_PARAM } from './rest-routes';
import { Guard } from '../auth/guard';
import { BlobStore } from '../store/blobs/blob-store';
import { BLOB_TAG_SYSTEM } from './internal-markers';
import type { ResourceService } from './resource-service';

/** Whether the client asks for the content itself rather than the Binary resource (FHIR: by Accept). */
function wantsRaw(req: Request): boolean {
  const accept = req.get('accept');
  if (!accept) return false;
  return !/application\/(fhir\+)?json|\*\/\*/.test(accept) || /application\/fhir\+ndjson|application\/octet-stream/.test(accept);
}

/**
 * `GET Binary/{id}` for Binaries whose content is a blob (archived originals): with an Accept of
 * the content's type the bytes themselves, streamed; as FHIR JSON the resource, with `data` when the
 * content is at most `inlineLimit` bytes. Other Binaries are read as any resource. The same access
 * as a read (partners see no Binary).
 */
export function binaryRoutes(guard: Guard, service: ResourceService, blobs: BlobStore, inlineLimit: number): Router {
  const router = Router({ caseSensitive: true });
  router.get(
    `/Binary/${ID_PARAM}`,
    guard.require({ type: 'Binary', action: 'r' }),
    asyncHandler(async (req, res, next) => {
      const binary = (await service.searchById({ id: req.params.id }, { req })) as Binary;
      const key = binary.meta?.tag?.find((t) => t.system === BLOB_TAG_SYSTEM)?.code;
      if (!key) return next();
      const blob = await blobs.open(key);
      res.set('ETag', `W/"${binary.meta?.versionId}"`);
      if (wantsRaw(req)) {
        if (!blob) return void sendResource(res.status(404), 404, binary);
        res.status(200).type(binary.contentType ?? 'application/octet-stream').set('Content-Length', String(blob.size));
        blob.stream.on('error', (err) => res.destroy(err)).pipe(res);
        return;
      }
      if (!blob || blob.size > inlineLimit) {
        blob?.stream.destroy();
        return void sendResource(res, 200, binary);
      }
      const chunks: Buffer[] = [];
      for await (const c of blob.stream) chunks.push(c as Buffer);
      sendResource(res, 200, { ...binary, data: Buffer.concat(chunks).toString('base64') });
    }),
  );
  return router;
}
