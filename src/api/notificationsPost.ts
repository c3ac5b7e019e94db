/** POST /api/notifications: accepts a batch notification — stored in Blob storage, fanned out from the queue (202). */
import { MailError } from '../errors';
import { MAX_BATCH_JSON_VALUES } from '../inputBounds';
import type { AppServices } from '../appServices';
import type { Invocation } from '../invocation';
import type { ApiRequest, ApiResponse } from './apiTypes';
import { statusUrl } from './messagesPost';
import { readJsonBody } from './readJsonBody';

/** The largest batch body read: 16 MiB, room for MAX_BATCH_RECIPIENTS recipients with a few hundred bytes of data each. */
export const MAX_BATCH_BODY_BYTES = 16 * 1024 * 1024;

async function readBatchBody(request: ApiRequest): Promise<unknown> {
  try {
    return await readJsonBody(request, MAX_BATCH_BODY_BYTES, MAX_BATCH_JSON_VALUES);
  } catch (error) {
    // The generic hint talks about attachments; a batch is too large for another reason.
    if (error instanceof MailError && error.code === 'PAYLOAD_TOO_LARGE') {
      throw new MailError('PAYLOAD_TOO_LARGE', error.message, {
        ...(error.details ? { details: error.details } : {}),
        hint: `A batch body may be at most ${MAX_BATCH_BODY_BYTES} bytes: split the recipients into several batches, and put what they share into the batch's data rather than into each recipient's.`,
      });
    }
    throw error;
  }
}

/** Handles POST /api/notifications: 202 `{ batchId, status, recipients, statusUrl }` with a Location header. */
export async function postNotifications(
  request: ApiRequest,
  services: AppServices,
  invocation: Invocation = {},
): Promise<ApiResponse> {
  const body = await readBatchBody(request);
  const { batchId, summary, replayed } = await services.notifications.submit(body, invocation);
  const location = statusUrl(request.url, batchId);
  return {
    status: 202,
    headers: { Location: location, ...(replayed ? { 'Idempotent-Replayed': 'true' } : {}) },
    jsonBody: { batchId, status: summary.status, recipients: summary.total, statusUrl: location },
  };
}
