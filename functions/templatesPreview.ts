/** GET /api/templates/{name}/preview (function key): render a template with its sample data or ?data=. */
import { app } from '@azure/functions';
import { previewTemplate } from '../src/api/templatePreview';
import { httpHandler } from './http';

export const templatesPreview = httpHandler(previewTemplate);

app.http('templatesPreview', {
  route: 'templates/{name}/preview',
  methods: ['GET'],
  authLevel: 'function',
  handler: templatesPreview,
});
