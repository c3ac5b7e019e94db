/** GET /api/notifications/{batchId} (function key): a batch's progress and its messages counted by status. */
import { app } from '@azure/functions';
import { getNotifications } from '../src/api/notificationsGet';
import { httpHandler } from './http';

export const notificationsGet = httpHandler(getNotifications);

app.http('notificationsGet', {
  route: 'notifications/{batchId}',
  methods: ['GET'],
  authLevel: 'function',
  handler: notificationsGet,
});
