/** The digest endpoints: POST /api/digests/{digest}/items (intake), POST /api/digests/{digest}/run, GET /api/digests/{digest}. */
import type { AppServices } from '../appServices';
import type { Invocation } from '../invocation';
import { MAX_DIGEST_BODY_BYTES, MAX_DIGEST_BODY_VALUES } from '../digests/digestRequest';
import type { ApiRequest, ApiResponse } from './apiTypes';
import { readJsonBody } from './readJsonBody';

/**
 * Handles POST /api/digests/{digest}/items: 202 `{ digest, accepted, duplicates, rejected, rejections }`. A single
 * item that is invalid is a 400 naming the field; in a bulk request each bad item is a rejection of its own.
 */
export async function postDigestItems(request: ApiRequest, services: AppServices): Promise<ApiResponse> {
  // The name first: a bad or unknown digest is answered before its body is read.
  services.digests.checkKnown(request.params.digest);
  const body = await readJsonBody(request, MAX_DIGEST_BODY_BYTES, MAX_DIGEST_BODY_VALUES);
  const result = await services.digests.submit(request.params.digest, body);
  return { status: 202, jsonBody: result };
}

/**
 * Handles POST /api/digests/{digest}/run: runs the digest now and answers when it is done (200), busy (409), or
 * failed for the app's configuration (500, the run record naming the setting). The run's DigestRun event and the
 * messages it accepts carry the request's operation id.
 */
export async function postDigestRun(
  request: ApiRequest,
  services: AppServices,
  invocation: Invocation = {},
): Promise<ApiResponse> {
  const report = await services.digests.run(request.params.digest, invocation);
  const status = report.outcome === 'busy' ? 409 : report.outcome === 'failed' ? 500 : 200;
  return { status, jsonBody: report };
}

/** Handles GET /api/digests/{digest}: pending recipients and items, and the last run. */
export async function getDigest(request: ApiRequest, services: AppServices): Promise<ApiResponse> {
  return { status: 200, jsonBody: await services.digests.view(request.params.digest) };
}
