/** Runs an API handler with the process Runtime, turning everything thrown (settings errors included) into an HTTP answer. */
import { getRuntime, type Runtime } from '../appServices';
import type { ApiRequest, ApiResponse } from './apiTypes';
import { errorResponse } from './errorResponse';

export type ApiHandler = (request: ApiRequest, runtime: Runtime) => Promise<ApiResponse>;

/** Never rejects: a failure becomes a 4xx/5xx answer (see errorResponse). */
export async function runApi(
  handler: ApiHandler,
  request: ApiRequest,
  runtime: () => Runtime = getRuntime,
): Promise<ApiResponse> {
  let rt: Runtime;
  try {
    rt = runtime();
  } catch (error) {
    return errorResponse(error);
  }
  let response: ApiResponse;
  try {
    response = await handler(request, rt);
  } catch (error) {
    response = errorResponse(error, rt.logger);
  }
  // An error answer can quote what a server or an SDK said (a 422's SMTP reply, a storage message): the last
  // chance to take out the account key, IDENTITY_HEADER, Key Vault secrets and tokens before they leave the app.
  if (response.status >= 400 && response.jsonBody !== undefined) {
    response = { ...response, jsonBody: rt.redactor.redactValue(response.jsonBody) };
  }
  return response;
}
