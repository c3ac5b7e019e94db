/** GET /api/templates/{name}/preview: renders a template with its sample.json or `?data=`, as JSON or as the HTML itself. */
import { MailError } from '../errors';
import { MAX_BODY_JSON_VALUES, parseBoundedJson } from '../inputBounds';
import type { AppServices } from '../appServices';
import { MAX_TEMPLATE_DATA_CHARS } from '../templates/templateRenderer';
import type { ApiRequest, ApiResponse } from './apiTypes';

/** The preview is served from the app's own origin: forbid scripts and remote loads, as a sandboxed iframe would. */
const PREVIEW_CSP = "sandbox; default-src 'none'; img-src data: https:; style-src 'unsafe-inline'";

const invalid = (path: string, message: string) =>
  new MailError('INVALID_MESSAGE', `Invalid preview request: ${path}: ${message}`, { details: [{ path, message }] });

function previewData(request: ApiRequest, services: AppServices, name: string): unknown {
  const raw = request.query.get('data');
  if (raw === null) return services.renderer.sample(name) ?? {};
  // Bounded before it is parsed: the data could not be rendered anyway (MAX_TEMPLATE_DATA_CHARS).
  if (raw.length > MAX_TEMPLATE_DATA_CHARS) {
    throw invalid('data', `must be at most ${MAX_TEMPLATE_DATA_CHARS} characters of JSON`);
  }
  let data: unknown;
  try {
    data = parseBoundedJson(raw, { maxValues: MAX_BODY_JSON_VALUES }, 'data', 'Invalid preview request');
  } catch (error) {
    if (error instanceof MailError) throw error;
    throw invalid('data', 'must be a JSON object (URL-encoded)');
  }
  if (data === null || typeof data !== 'object' || Array.isArray(data)) throw invalid('data', 'must be a JSON object');
  return data;
}

/** Handles GET /api/templates/{name}/preview[?data=<json>][&format=html]. */
export function previewTemplate(request: ApiRequest, services: AppServices): ApiResponse {
  const name = request.params.name ?? '';
  if (!services.renderer.has(name)) {
    throw new MailError('NOT_FOUND', `No template named ${JSON.stringify(name.slice(0, 80))}`, {
      details: [{ path: 'template', message: `unknown template; known: ${services.renderer.names().join(', ')}` }],
    });
  }
  const format = request.query.get('format') ?? 'json';
  if (format !== 'json' && format !== 'html') throw invalid('format', 'must be json or html');
  const rendered = services.renderer.render(name, previewData(request, services, name));
  if (format === 'html') {
    return {
      status: 200,
      headers: { 'Content-Type': 'text/html; charset=utf-8', 'Content-Security-Policy': PREVIEW_CSP },
      body: rendered.html,
    };
  }
  return { status: 200, jsonBody: rendered };
}
