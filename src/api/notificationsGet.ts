/** GET /api/notifications/{batchId}: a batch's progress, its rejected recipients and its outbox messages counted by status. */
import { MailError } from '../errors';
import { BATCH_ID } from '../notifications/batchRequest';
import type { AppServices } from '../appServices';
import type { ApiRequest, ApiResponse } from './apiTypes';

/** Handles GET /api/notifications/{batchId}. */
export async function getNotifications(request: ApiRequest, services: AppServices): Promise<ApiResponse> {
  const batchId = request.params.batchId ?? '';
  if (!BATCH_ID.test(batchId)) {
    throw new MailError('INVALID_MESSAGE', 'The batch id is malformed', {
      details: [{ path: 'batchId', message: 'must be 1 to 100 characters of letters, digits and . _ -' }],
    });
  }
  const view = await services.notifications.view(batchId);
  if (!view) {
    throw new MailError('NOT_FOUND', `No notification batch with id ${batchId}`, {
      details: [{ path: 'batchId', message: 'no batch with this id' }],
    });
  }
  return { status: 200, jsonBody: view };
}
