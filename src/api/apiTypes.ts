/** The trigger-agnostic HTTP shapes the API handlers take and return (an @azure/functions HttpRequest fits ApiRequest as is). */

/** What a handler reads from a request. */
export interface ApiRequest {
  method: string;
  url: string;
  headers: { get(name: string): string | null };
  query: { get(name: string): string | null };
  params: Record<string, string | undefined>;
  /** The body as a web stream, read by the handler with a byte cap; null when there is none. */
  body: ReadableStream<Uint8Array> | null;
}

/** What a handler answers: JSON (`jsonBody`) or text (`body`, e.g. a rendered HTML preview). */
export interface ApiResponse {
  status: number;
  headers?: Record<string, string>;
  jsonBody?: unknown;
  body?: string;
}

/** A field-level problem, as the error body lists it. */
export interface ApiProblem {
  path: string;
  message: string;
}

/** The body of every 4xx/5xx answer except 422 (which carries the classified send error). */
export interface ApiErrorBody {
  error: { code: string; message: string; details: ApiProblem[]; hint?: string };
}
