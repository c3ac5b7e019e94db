/** Runs an API handler with the process Runtime, turning everything thrown (settings errors included) into an HTTP answer. */
import { getRuntime, type Runtime } from '../runtime';
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
  try {
    return await handler(request, rt);
  } catch (error) {
    return errorResponse(error, rt.logger);
  }
}
