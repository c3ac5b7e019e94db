/** GET /api/messages/{id} (function key): the status of a message. */
import { app } from '@azure/functions';
import { getMessage } from '../src/api/messagesGet';
import { httpHandler } from './http';

export const messagesGet = httpHandler(getMessage);

app.http('messagesGet', { route: 'messages/{id}', methods: ['GET'], authLevel: 'function', handler: messagesGet });
