/** DELETE /api/suppressions/{address}?list= (function key): remove a suppression. */
import { app } from '@azure/functions';
import { deleteSuppression } from '../src/api/suppressions';
import { httpHandler } from './http';

export const suppressionsDelete = httpHandler(deleteSuppression);

app.http('suppressionsDelete', {
  route: 'suppressions/{address}',
  methods: ['DELETE'],
  authLevel: 'function',
  handler: suppressionsDelete,
});
