/** GET /api/digests/{digest} (function key): pending recipients and items, and the last run. */
import { app } from '@azure/functions';
import { getDigest } from '../src/api/digests';
import { httpHandler } from './http';

export const digestGet = httpHandler(getDigest);

app.http('digestGet', {
  route: 'digests/{digest}',
  methods: ['GET'],
  authLevel: 'function',
  handler: digestGet,
});
