/** GET /api/health (anonymous): settings, Key Vault, token and SMTP checks, cached; 200 healthy, 503 unhealthy. */
import { app } from '@azure/functions';
import { getHealth } from '../src/api/health';
import { httpHandler } from './http';

export const health = httpHandler(getHealth);

app.http('health', { route: 'health', methods: ['GET'], authLevel: 'anonymous', handler: health });
