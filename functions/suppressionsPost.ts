/** POST /api/suppressions (function key): suppress an address from one bulk list or from all of them. */
import { app } from '@azure/functions';
import { addSuppression } from '../src/api/suppressions';
import { httpHandler } from './http';

export const suppressionsPost = httpHandler(addSuppression);

app.http('suppressionsPost', {
  route: 'suppressions',
  methods: ['POST'],
  authLevel: 'function',
  handler: suppressionsPost,
});
