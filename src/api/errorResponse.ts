/** Maps anything a handler throws to an HTTP answer: the only place where error codes become HTTP statuses. */
import { randomUUID } from 'node:crypto';
import { MailError, ensureError, type MailErrorCode } from '../errors';
import { silentLogger, type Logger } from '../logger';
import { asStorageUnavailable } from '../storage/storageClients';
import type { ApiErrorBody, ApiResponse } from './apiTypes';

/** Clients should wait this long after a 503 before retrying. */
export const RETRY_AFTER_SECONDS = 30;

const STATUS: Partial<Record<MailErrorCode, { status: number; code: string }>> = {
  INVALID_MESSAGE: { status: 400, code: 'invalid_request' },
  TEMPLATE_NOT_FOUND: { status: 400, code: 'invalid_request' },
  SENDER_NOT_ALLOWED: { status: 400, code: 'invalid_request' },
  TOO_MANY_RECIPIENTS: { status: 400, code: 'invalid_request' },
  MESSAGE_TOO_LARGE: { status: 400, code: 'invalid_request' },
  UNSUBSCRIBE_NOT_CONFIGURED: { status: 400, code: 'unsubscribe_not_configured' },
  UNSUBSCRIBE_TOKEN_INVALID: { status: 400, code: 'invalid_token' },
  NOT_FOUND: { status: 404, code: 'not_found' },
  IDEMPOTENCY_CONFLICT: { status: 409, code: 'idempotency_conflict' },
  PAYLOAD_TOO_LARGE: { status: 413, code: 'payload_too_large' },
  UNSUPPORTED_MEDIA_TYPE: { status: 415, code: 'unsupported_media_type' },
  STORAGE_UNAVAILABLE: { status: 503, code: 'storage_unavailable' },
  // The unsubscribe endpoints read their key from Key Vault: an outage there is retried like one of storage.
  KEY_VAULT_UNAVAILABLE: { status: 503, code: 'key_vault_unavailable' },
};

/** A JSON error answer. */
export function errorBody(
  status: number,
  code: string,
  message: string,
  details: ApiErrorBody['error']['details'],
  hint?: string,
): ApiResponse {
  const body: ApiErrorBody = { error: { code, message, details, ...(hint ? { hint } : {}) } };
  return { status, jsonBody: body };
}

/**
 * The answer for `thrown`. Input problems are 4xx with details naming the field; storage outages are 503 with
 * Retry-After; a settings error says so without repeating the settings (they were logged once at start-up);
 * anything else is logged with an id and answered 500 with that id only.
 */
export function errorResponse(thrown: unknown, logger: Logger = silentLogger): ApiResponse {
  const error = asStorageUnavailable(thrown) ?? thrown;
  if (error instanceof MailError) {
    if (error.code === 'CONFIG_INVALID') {
      return errorBody(
        500,
        'configuration_error',
        "The app's settings are invalid; the function logs name the setting and the fix.",
        [],
      );
    }
    const mapped = STATUS[error.code];
    if (mapped) {
      if (mapped.status === 503) {
        const what = error.code === 'STORAGE_UNAVAILABLE' ? 'storage unavailable' : 'Key Vault unavailable';
        logger.warn(what, { error: ensureError(error.cause).message });
      }
      const response = errorBody(mapped.status, mapped.code, error.message, error.details ?? [], error.hint);
      if (mapped.status === 503) response.headers = { 'Retry-After': String(RETRY_AFTER_SECONDS) };
      return response;
    }
  }
  const errorId = randomUUID();
  const e = ensureError(thrown);
  logger.error('unexpected error in an HTTP handler', { errorId, name: e.name, error: e.message, stack: e.stack });
  return errorBody(500, 'internal_error', `Unexpected error (id ${errorId}); it was logged.`, []);
}
