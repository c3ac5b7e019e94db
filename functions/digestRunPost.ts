/** POST /api/digests/{digest}/run (function key): run one digest now, for operators and the demo. */
import { app } from '@azure/functions';
import { postDigestRun } from '../src/api/digests';
import { httpHandler } from './http';

export const digestRunPost = httpHandler(postDigestRun);

app.http('digestRunPost', {
  route: 'digests/{digest}/run',
  methods: ['POST'],
  authLevel: 'function',
  handler: digestRunPost,
});
