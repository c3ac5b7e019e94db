/** POST /api/digests/{digest}/items (function key): store items for a recipient's next digest. */
import { app } from '@azure/functions';
import { postDigestItems } from '../src/api/digests';
import { httpHandler } from './http';

export const digestItemsPost = httpHandler(postDigestItems);

app.http('digestItemsPost', {
  route: 'digests/{digest}/items',
  methods: ['POST'],
  authLevel: 'function',
  handler: digestItemsPost,
});
