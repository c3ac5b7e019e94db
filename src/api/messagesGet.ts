/** GET /api/messages/{id}: a message's status record, as the API documents it. */
import { MailError } from '../errors';
import { isMessageId } from '../outbox/messageIds';
import type { AppServices } from '../appServices';
import { statusView } from '../outbox/statusStore';
import type { ApiRequest, ApiResponse } from './apiTypes';

/** Handles GET /api/messages/{id}. */
export async function getMessage(request: ApiRequest, services: AppServices): Promise<ApiResponse> {
  const id = request.params.id ?? '';
  if (!isMessageId(id)) {
    throw new MailError('INVALID_MESSAGE', 'The message id is malformed', {
      details: [
        {
          path: 'id',
          message:
            'must be a message id as returned by POST /api/messages (a lower-case UUID, or <batchId>~<32 hex digits> for a batch message)',
        },
      ],
    });
  }
  await services.storage.ensure('statusTable');
  const record = await services.status.get(id);
  if (!record) {
    throw new MailError('NOT_FOUND', `No message with id ${id}`, {
      details: [{ path: 'id', message: 'no message with this id' }],
    });
  }
  return { status: 200, jsonBody: statusView(record) };
}
