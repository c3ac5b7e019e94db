/** Time bounds for every outbound call: a per-try timeout for Azure SDK pipelines and HTTP clients, and a deadline for any promise. */
import type { HttpClient, PipelinePolicy, PipelineRequest, PipelineResponse } from '@azure/core-rest-pipeline';

/**
 * The pipeline package, loaded on first use: telemetry.ts imports this module and must stay cheap to import (it
 * loads nothing of the Azure SDK until the first event). A package require, which esbuild bundles and vitest resolves.
 */
function pipelinePackage(): typeof import('@azure/core-rest-pipeline') {
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  return require('@azure/core-rest-pipeline') as typeof import('@azure/core-rest-pipeline');
}

/**
 * The code a timed-out call carries. It is the socket timeout's code on purpose: the Azure SDK retry policies
 * (core's and Storage's) retry it, and every classifier here already treats it as transient.
 */
export const TIMEOUT_ERROR_CODE = 'ETIMEDOUT';

/**
 * Each token request an Azure SDK credential makes (the managed identity endpoint, Entra ID) must answer within
 * this. The App Service identity endpoint answers in milliseconds; the first token of a cold instance can take a few
 * seconds. The SDK retries a cut request. Every credential of the app gets this same bound: MSAL keeps the HTTP client
 * of the first managed identity credential that asks for a token for the rest of the process.
 */
export const CREDENTIAL_TRY_TIMEOUT_MS = 10_000;

/**
 * SMTP connections idle longer than this are closed: idle sessions count against Exchange's 3-connection limit.
 * Delivery also waits about this long when other instances hold every connection slot: that is when they give idle
 * ones back. Here rather than in the sender so that the outbox can read it without loading the send path.
 */
export const IDLE_CLOSE_MS = 5_000;

/** How long a Key Vault secret is served from memory before Key Vault is asked again (the unsubscribe key too). */
export const SECRET_CACHE_TTL_MS = 5 * 60 * 1000;

/** The name of the error {@link withDeadline} rejects with. */
export const DEADLINE_ERROR_NAME = 'DeadlineExceededError';

/** What {@link withDeadline} rejects with: `what` did not finish within `timeoutMs`. Holds no request data. */
export class DeadlineExceededError extends Error {
  override readonly name = DEADLINE_ERROR_NAME;
  readonly code = TIMEOUT_ERROR_CODE;

  constructor(
    what: string,
    readonly timeoutMs: number,
  ) {
    super(`${what} did not finish within ${timeoutMs} ms`);
  }
}

/**
 * Sends one try with its own abort signal (chained to the caller's) and cuts it after `timeoutMs`: connecting, the
 * request, and reading the response body, a streamed one (blob downloads) included. A try cut short fails with a
 * RestError with code ETIMEDOUT that names only the host (URLs can carry SAS signatures).
 */
async function sendWithin(
  request: PipelineRequest,
  send: (request: PipelineRequest) => Promise<PipelineResponse>,
  timeoutMs: number,
): Promise<PipelineResponse> {
  const outer = request.abortSignal;
  if (outer?.aborted) return send(request);
  const controller = new AbortController();
  const forward = () => controller.abort();
  outer?.addEventListener('abort', forward, { once: true });
  const timeoutError = () =>
    new (pipelinePackage().RestError)(`${new URL(request.url).host} did not answer within ${timeoutMs} ms`, {
      code: TIMEOUT_ERROR_CODE,
      request,
    });
  const state: { timedOut: boolean; streaming?: NodeJS.ReadableStream & { destroy(error: Error): void } } = {
    timedOut: false,
  };
  const release = () => {
    clearTimeout(timer);
    outer?.removeEventListener('abort', forward);
  };
  const timer = setTimeout(() => {
    state.timedOut = true;
    // A body still streaming is destroyed (its socket with it) with the timeout as the reason. A Storage download
    // stream reports it as an AbortError all the same: storage.ts downloadBlob makes that a storage error.
    if (state.streaming) state.streaming.destroy(timeoutError());
    else controller.abort();
  }, timeoutMs);
  request.abortSignal = controller.signal;
  let response: PipelineResponse;
  try {
    response = await send(request);
  } catch (error) {
    release();
    if (state.timedOut) throw timeoutError();
    throw error;
  } finally {
    if (outer) request.abortSignal = outer;
    else delete request.abortSignal;
  }
  const body = response.readableStreamBody;
  if (!body || state.timedOut) {
    release();
    return response;
  }
  // The bound now applies to reading the body, which the caller does after this returns.
  state.streaming = body as NodeJS.ReadableStream & { destroy(error: Error): void };
  body.once('end', release);
  body.once('close', release);
  body.once('error', release);
  return response;
}

/**
 * A pipeline policy that bounds every try of an Azure SDK client. Add it with position `perRetry` so that it sits
 * inside the retry policy: a hung try is cut after `timeoutMs` and retried like a socket timeout.
 */
export function tryTimeoutPolicy(timeoutMs: number): PipelinePolicy {
  return {
    name: 'm365MailerTryTimeout',
    sendRequest: (request, next) => sendWithin(request, next, timeoutMs),
  };
}

/**
 * An HTTP client that bounds every request it sends. For the Azure SDK clients whose pipeline cannot be given a
 * policy: ManagedIdentityCredential replaces `additionalPolicies` with its own, but keeps `httpClient`.
 */
export function timeoutHttpClient(timeoutMs: number, inner?: HttpClient): HttpClient {
  const client = inner ?? pipelinePackage().createDefaultHttpClient();
  return { sendRequest: (request) => sendWithin(request, (r) => client.sendRequest(r), timeoutMs) };
}

/**
 * Runs `work` with an abort signal and rejects with a {@link DeadlineExceededError} when it has not settled within
 * `timeoutMs` (the signal is aborted then, so work that honours it stops). For calls whose SDK offers no per-request
 * bound, and as the outer bound of calls made of several requests.
 */
export function withDeadline<T>(
  work: (signal: AbortSignal) => Promise<T>,
  timeoutMs: number,
  what: string,
): Promise<T> {
  const controller = new AbortController();
  return new Promise<T>((resolve, reject) => {
    // Not unref'd: a caller awaiting only this (the CLI) must get its answer before the process may exit.
    const timer = setTimeout(() => {
      reject(new DeadlineExceededError(what, timeoutMs));
      controller.abort();
    }, timeoutMs);
    let started: Promise<T>;
    try {
      started = work(controller.signal);
    } catch (error) {
      clearTimeout(timer);
      reject(error instanceof Error ? error : new Error(String(error)));
      return;
    }
    started.then(
      (value) => {
        clearTimeout(timer);
        resolve(value);
      },
      (error: unknown) => {
        clearTimeout(timer);
        reject(error instanceof Error ? error : new Error(String(error)));
      },
    );
  });
}

/** True when `test` holds for `error`, one of its causes, or one of the errors it aggregates (AggregateAuthenticationError). */
function anyInChain(error: unknown, test: (e: Record<string, unknown>) => boolean, depth = 0): boolean {
  if (!error || typeof error !== 'object' || depth > 5) return false;
  const e = error as Record<string, unknown>;
  if (test(e)) return true;
  if (anyInChain(e.cause, test, depth + 1)) return true;
  return Array.isArray(e.errors) && e.errors.some((inner) => anyInChain(inner, test, depth + 1));
}

/** True when `error` is, was caused by, or aggregates a timeout of these bounds or a socket timeout. */
export function isTimeoutError(error: unknown): boolean {
  return anyInChain(error, (e) => e.name === DEADLINE_ERROR_NAME || e.code === TIMEOUT_ERROR_CODE);
}

/**
 * True when `error` is, was caused by, or aggregates a timeout or an MSAL `network_error`: the endpoint (for a
 * managed identity: the platform's identity endpoint) could not be reached or did not answer. MSAL replaces the
 * network failure with a bare `network_error`, so the timeout itself may no longer be in the chain.
 */
export function isUnreachableError(error: unknown): boolean {
  return isTimeoutError(error) || anyInChain(error, (e) => e.errorCode === 'network_error');
}
