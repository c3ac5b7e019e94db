/** POST /api/notifications (function key): accept a batch notification; it fans out from the mail-notifications queue. */
import { app } from '@azure/functions';
import { postNotifications } from '../src/api/notificationsPost';
import { httpHandler } from './http';

export const notificationsPost = httpHandler(postNotifications);

app.http('notificationsPost', {
  route: 'notifications',
  methods: ['POST'],
  authLevel: 'function',
  handler: notificationsPost,
});
