/** GET and POST /api/unsubscribe?t=… (anonymous: the List-Unsubscribe link of bulk mail): GET confirms, POST records. */
import { app } from '@azure/functions';
import { unsubscribe as handleUnsubscribe } from '../src/api/unsubscribe';
import { httpHandler } from './http';

export const unsubscribe = httpHandler(handleUnsubscribe);

app.http('unsubscribe', {
  route: 'unsubscribe',
  methods: ['GET', 'POST'],
  authLevel: 'anonymous',
  handler: unsubscribe,
});
