/**
 * `/api/suppressions` (function key): GET lists suppressions a page at a time (optionally of one `list`), POST adds
 * `{ address, list? }`, DELETE `/api/suppressions/{address}?list=` removes one. A suppression without a list applies
 * to every bulk list.
 */
import { MailError } from '../errors';
import type { AppServices } from '../appServices';
import { isStorageError } from '../storage/storageClients';
import {
  invalidContinuation,
  parseAddressParam,
  parseContinuationParam,
  parseListParam,
  parseSuppressionBody,
} from '../suppression/suppressionRequest';
import type { ApiRequest, ApiResponse } from './apiTypes';
import { readJsonBody } from './readJsonBody';

/** `{ address, list? }` is tiny: 4 KiB is room for it and nothing else. */
export const MAX_SUPPRESSION_BODY_BYTES = 4096;

/** Handles GET /api/suppressions[?list=][&continuation=]: `{ items, continuation? }`. */
export async function listSuppressions(request: ApiRequest, services: AppServices): Promise<ApiResponse> {
  const list = parseListParam(request.query.get('list'));
  const continuation = parseContinuationParam(request.query.get('continuation'));
  await services.storage.ensureResources();
  try {
    const page = await services.suppressions.page({ list, continuation });
    return { status: 200, jsonBody: page };
  } catch (error) {
    // A continuation of the right alphabet that is not one the SDK can decode (edited, truncated).
    if (continuation !== undefined && !isStorageError(error) && !(error instanceof MailError)) {
      throw invalidContinuation();
    }
    throw error;
  }
}

/** Handles POST /api/suppressions: 201 with the suppression, or 200 with the one already there. */
export async function addSuppression(request: ApiRequest, services: AppServices): Promise<ApiResponse> {
  const input = parseSuppressionBody(await readJsonBody(request, MAX_SUPPRESSION_BODY_BYTES, 16));
  await services.storage.ensureResources();
  const created = await services.suppressions.add({
    ...input,
    source: 'api',
    createdAt: new Date(services.now()).toISOString(),
  });
  const stored = await services.suppressions.get(input.address, input.list);
  return { status: created ? 201 : 200, jsonBody: stored ?? { ...input, source: 'api' } };
}

/** Handles DELETE /api/suppressions/{address}[?list=]: 204, or 404 when there was no such suppression. */
export async function deleteSuppression(request: ApiRequest, services: AppServices): Promise<ApiResponse> {
  const address = parseAddressParam(request.params.address);
  const list = parseListParam(request.query.get('list'));
  await services.storage.ensureResources();
  if (!(await services.suppressions.remove(address, list))) {
    throw new MailError('NOT_FOUND', 'No such suppression', {
      details: [
        {
          path: 'address',
          message: list ? `is not suppressed from list ${list}` : 'has no suppression from every list (give ?list=)',
        },
      ],
    });
  }
  return { status: 204 };
}
