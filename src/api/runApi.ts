/** Runs an API handler with the process AppServices, turning everything thrown (settings errors included) into an HTTP answer. */
import { getAppServices, type AppServices } from '../appServices';
import { invocationFrom, type Invocation, type TriggerInvocation } from '../invocation';
import type { ApiRequest, ApiResponse } from './apiTypes';
import { errorResponse } from './errorResponse';

/**
 * An API handler; one with nothing to wait for answers at once (runApi awaits either way, inside its try).
 * `invocation` is the Functions invocation it runs in: the core's events carry its ids, its lines go to its logger.
 * `withoutServices`, when present, answers when the AppServices cannot be built (bad settings) instead of the
 * default 500 configuration_error: GET /api/health answers 503 with its settings check failed.
 */
export type ApiHandler = ((
  request: ApiRequest,
  services: AppServices,
  invocation: Invocation,
) => ApiResponse | Promise<ApiResponse>) & {
  withoutServices?: (error: unknown, request: ApiRequest) => ApiResponse;
};

/** Never rejects: a failure becomes a 4xx/5xx answer (see errorResponse). */
export async function runApi(
  handler: ApiHandler,
  request: ApiRequest,
  getServices: () => AppServices = getAppServices,
  trigger?: TriggerInvocation,
): Promise<ApiResponse> {
  let services: AppServices;
  try {
    services = getServices();
  } catch (error) {
    return handler.withoutServices?.(error, request) ?? errorResponse(error);
  }
  const invocation = invocationFrom(trigger, services.redactor);
  let response: ApiResponse;
  try {
    response = await handler(request, services, invocation);
  } catch (error) {
    response = errorResponse(error, invocation.logger ?? services.logger);
  }
  // An error answer can quote what a server or an SDK said (a 422's SMTP reply, a storage message): the last
  // chance to take out the account key, IDENTITY_HEADER, Key Vault secrets and tokens before they leave the app.
  if (response.status >= 400 && response.jsonBody !== undefined) {
    response = { ...response, jsonBody: services.redactor.redactValue(response.jsonBody) };
  }
  return response;
}
