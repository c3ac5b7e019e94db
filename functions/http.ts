/** Adapts @azure/functions HTTP triggers to the trigger-agnostic API handlers of src/api. */
import type { HttpHandler, HttpRequest, HttpResponseInit, InvocationContext } from '@azure/functions';
import type { ApiRequest } from '../src/api/apiTypes';
import { runApi, type ApiHandler } from '../src/api/runApi';
import { getAppServices, type AppServices } from '../src/appServices';
import { triggerInvocation } from './invocation';

/** The HttpRequest as the handlers see it (its headers, query, params and body stream fit as they are). */
export function toApiRequest(request: HttpRequest): ApiRequest {
  return {
    method: request.method,
    url: request.url,
    headers: request.headers,
    query: request.query,
    params: request.params,
    body: request.body as ReadableStream<Uint8Array> | null,
  };
}

/**
 * An HttpHandler running `handler` with the process AppServices (or `getServices`, in tests) in the request's
 * invocation (its id, traceparent and logger); it never throws.
 */
export function httpHandler(handler: ApiHandler, getServices: () => AppServices = getAppServices): HttpHandler {
  return async (request: HttpRequest, context: InvocationContext): Promise<HttpResponseInit> => {
    const response = await runApi(handler, toApiRequest(request), getServices, triggerInvocation(context));
    return {
      status: response.status,
      ...(response.headers ? { headers: response.headers } : {}),
      ...(response.jsonBody !== undefined ? { jsonBody: response.jsonBody } : {}),
      ...(response.body !== undefined ? { body: response.body } : {}),
    };
  };
}
