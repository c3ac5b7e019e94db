/** POST /api/messages: accept into the outbox (202), or with `?wait=true` deliver inline through the same delivery. */
import { MailError } from '../errors';
import { trimTrailingSlashes } from '../inputBounds';
import type { AppServices } from '../appServices';
import type { Invocation } from '../invocation';
import { statusView, type StoredRecord } from '../outbox/statusStore';
import type { ApiRequest, ApiResponse } from './apiTypes';
import { maxBodyBytes, readJsonBody } from './readJsonBody';

/**
 * With `?wait=true` the queue message is held back this long: it only matters if this process dies mid-send, and
 * must not race the inline delivery. Above the time a send normally takes, well below the lease.
 */
export const WAIT_HOLD_SECONDS = 60;

function parseWait(value: string | null): boolean {
  if (value === null || value === '' || value === 'false' || value === '0') return false;
  if (value === 'true' || value === '1') return true;
  throw new MailError('INVALID_MESSAGE', 'wait must be true or false', {
    details: [{ path: 'wait', message: 'must be true or false' }],
  });
}

/** The status URL of a message: this request's URL (without its query: no function key) plus the id. */
export function statusUrl(requestUrl: string, id: string): string {
  const url = new URL(requestUrl);
  return `${url.origin}${trimTrailingSlashes(url.pathname)}/${id}`;
}

function accepted(request: ApiRequest, record: StoredRecord, replayed: boolean): ApiResponse {
  const location = statusUrl(request.url, record.id);
  return {
    status: 202,
    headers: { Location: location, ...(replayed ? { 'Idempotent-Replayed': 'true' } : {}) },
    jsonBody: { id: record.id, status: record.status, statusUrl: location },
  };
}

/** Handles POST /api/messages, in `invocation` (the accept and an inline send carry its operation id). */
export async function postMessage(
  request: ApiRequest,
  services: AppServices,
  invocation: Invocation = {},
): Promise<ApiResponse> {
  const wait = parseWait(request.query.get('wait'));
  const body = await readJsonBody(request, maxBodyBytes(services.config.limits.maxMessageBytes));
  const result = await services.outbox.accept(body, {
    source: 'http',
    idempotencyKeyHeader: request.headers.get('idempotency-key'),
    ...(wait ? { holdSeconds: WAIT_HOLD_SECONDS } : {}),
    invocation,
  });
  let record = result.record;
  if (!wait) return accepted(request, record, result.replayed);

  if (record.status === 'queued' || record.status === 'sending') {
    const outcome = await services.delivery.deliver(result.id, { ...invocation, inline: true });
    if (outcome.outcome === 'sent') {
      return {
        status: 200,
        jsonBody: { id: result.id, status: 'sent', messageId: outcome.result.messageId, smtp: outcome.result.smtp },
      };
    }
    if (outcome.outcome !== 'missing') record = outcome.record;
  }
  if (record.status === 'sent') {
    return {
      status: 200,
      jsonBody: {
        id: record.id,
        status: 'sent',
        messageId: record.messageId,
        ...(record.smtp ? { smtp: record.smtp } : {}),
      },
    };
  }
  if (record.status === 'failed') {
    return { status: 422, jsonBody: { id: record.id, status: 'failed', error: record.error } };
  }
  // Transient failure, a limit of the mailbox, another worker on it, or scheduled: it stays in the outbox.
  const response = accepted(request, record, result.replayed);
  const view = statusView(record);
  if (view.waiting) (response.jsonBody as Record<string, unknown>).waiting = view.waiting;
  if (record.error) (response.jsonBody as Record<string, unknown>).error = record.error;
  return response;
}
