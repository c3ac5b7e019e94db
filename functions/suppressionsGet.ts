/** GET /api/suppressions (function key): suppressed recipients, a page at a time, optionally of one list. */
import { app } from '@azure/functions';
import { listSuppressions } from '../src/api/suppressions';
import { httpHandler } from './http';

export const suppressionsGet = httpHandler(listSuppressions);

app.http('suppressionsGet', {
  route: 'suppressions',
  methods: ['GET'],
  authLevel: 'function',
  handler: suppressionsGet,
});
