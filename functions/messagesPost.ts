/** POST /api/messages (function key): accept a message into the outbox, or send it inline with ?wait=true. */
import { app } from '@azure/functions';
import { postMessage } from '../src/api/messagesPost';
import { httpHandler } from './http';

export const messagesPost = httpHandler(postMessage);

app.http('messagesPost', { route: 'messages', methods: ['POST'], authLevel: 'function', handler: messagesPost });
