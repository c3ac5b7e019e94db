/** Serves HTTP-triggered functions like the Functions host: route prefix, route templates, methods, function keys, 401/404/500 without bodies, 413 over the body limit. */
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import type { ApiErrorBody } from '../src/api/apiTypes';
import type { RpcHttpCookie, RpcHttpData, RpcInvocationResponse, RpcTypedData } from './functionsCore';
import type { Invoker } from './invoker';
import type { DevFunction } from './registrations';
import { compareRoutes, compileRoute, type CompiledRoute } from './routes';

export type HttpFunction = Extract<DevFunction, { kind: 'http' }>;

/** The host's default request body limit (100 MB) before it answers 413. */
export const MAX_REQUEST_BODY_BYTES = 104_857_600;
/** The app setting the Functions host takes its request body limit from, in bytes. */
export const BODY_SIZE_LIMIT_SETTING = 'FUNCTIONS_REQUEST_BODY_SIZE_LIMIT';
/**
 * After a 413, the longest the rest of the upload is read and thrown away before the connection closes, in ms. A
 * client still sending when the socket closes gets a reset, which can overtake the 413 it has not read yet.
 */
export const LINGER_AFTER_413_MS = 2_000;
const HOP_BY_HOP = new Set([
  'connection',
  'keep-alive',
  'transfer-encoding',
  'upgrade',
  'te',
  'trailer',
  'content-length',
]);

export interface HttpListenerOptions {
  functions: HttpFunction[];
  routePrefix: string;
  functionKey: string;
  invoker: Invoker;
  port: number;
  host: string;
  /** Bodies over this many bytes are answered 413 before the function runs (see requestBodyLimit). */
  maxRequestBodyBytes: number;
}

export interface HttpListener {
  port: number;
  url: string;
  close(): Promise<void>;
}

interface Route {
  fn: HttpFunction;
  compiled: CompiledRoute;
}

/**
 * The request body limit from the app settings, as the Functions host reads it: `FUNCTIONS_REQUEST_BODY_SIZE_LIMIT`
 * bytes, 100 MB when unset.
 *
 * Without `app.setup({ enableHttpStream: true })` (which the dev host does not serve) the host buffers the whole body
 * and hands it to the worker as bytes: `HttpRequest.body` is a stream over a complete buffer, so a function's own,
 * smaller cap (readJsonBody) applies only once the host has read up to this limit. Setting it to the app's own cap
 * makes the host refuse larger bodies as they arrive, locally and in Azure alike.
 */
export function requestBodyLimit(env: Record<string, string | undefined>): number {
  const value = env[BODY_SIZE_LIMIT_SETTING]?.trim();
  if (value === undefined || value === '') return MAX_REQUEST_BODY_BYTES;
  const bytes = Number(value);
  if (!/^\d+$/.test(value) || !Number.isSafeInteger(bytes) || bytes <= 0) {
    throw new Error(
      `${BODY_SIZE_LIMIT_SETTING} must be a whole number of bytes above 0, not "${value}"; ` +
        `unset it for the host's default (${MAX_REQUEST_BODY_BYTES}, 100 MB)`,
    );
  }
  return bytes;
}

/** The body, or undefined once more than `limit` bytes arrived (the rest is left unread, for refuseBody). */
function readBody(req: http.IncomingMessage, limit: number): Promise<Buffer | undefined> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    const settle = () => {
      req.off('data', onData);
      req.off('end', onEnd);
      req.off('error', onError);
    };
    const onData = (chunk: Buffer) => {
      size += chunk.length;
      if (size <= limit) {
        chunks.push(chunk);
        return;
      }
      settle();
      resolve(undefined);
    };
    const onEnd = () => {
      settle();
      resolve(Buffer.concat(chunks, size));
    };
    const onError = (error: Error) => {
      settle();
      reject(error);
    };
    req.on('data', onData);
    req.on('end', onEnd);
    req.on('error', onError);
  });
}

/** The 413 body, in the error shape of the app's own API, naming the body as the app's 413 does. */
function tooLargeBody(limit: number): Buffer {
  const body: ApiErrorBody = {
    error: {
      code: 'payload_too_large',
      message: `The request body is over the host's limit of ${limit} bytes (${BODY_SIZE_LIMIT_SETTING})`,
      details: [{ path: '(body)', message: `the body must be at most ${limit} bytes` }],
    },
  };
  return Buffer.from(JSON.stringify(body));
}

function headerMap(req: http.IncomingMessage): Record<string, string> {
  const headers: Record<string, string> = {};
  for (const [name, value] of Object.entries(req.headers)) {
    if (value !== undefined) headers[name] = Array.isArray(value) ? value.join(', ') : value;
  }
  return headers;
}

function bodyBytes(data: RpcTypedData | null | undefined): Buffer {
  if (!data) return Buffer.alloc(0);
  if (data.bytes) return Buffer.from(data.bytes);
  if (data.string !== undefined) return Buffer.from(data.string);
  if (data.json !== undefined) return Buffer.from(data.json);
  if (data.int !== undefined || data.double !== undefined) return Buffer.from(String(data.int ?? data.double));
  return Buffer.alloc(0);
}

function serializeCookie(cookie: RpcHttpCookie): string {
  const parts = [`${cookie.name ?? ''}=${encodeURIComponent(cookie.value ?? '')}`];
  if (cookie.domain?.value) parts.push(`Domain=${cookie.domain.value}`);
  if (cookie.path?.value) parts.push(`Path=${cookie.path.value}`);
  const seconds = cookie.expires?.value?.seconds;
  if (seconds !== undefined) parts.push(`Expires=${new Date(Number(seconds) * 1000).toUTCString()}`);
  if (cookie.maxAge?.value !== undefined) parts.push(`Max-Age=${Math.floor(cookie.maxAge.value)}`);
  if (cookie.secure?.value) parts.push('Secure');
  if (cookie.httpOnly?.value) parts.push('HttpOnly');
  const sameSite = { lax: 'Lax', strict: 'Strict', explicitNone: 'None' }[cookie.sameSite ?? ''];
  if (sameSite) parts.push(`SameSite=${sameSite}`);
  return parts.join('; ');
}

/** The HTTP output of an invocation: the `$return` binding or a named http output binding. */
function httpOutput(fn: HttpFunction, response: RpcInvocationResponse): RpcHttpData | undefined {
  const returnBinding = fn.metadata.bindings.$return;
  if (returnBinding?.type.toLowerCase() === 'http') return response.returnValue?.http;
  const name = Object.entries(fn.metadata.bindings).find(
    ([key, b]) => key !== '$return' && b.direction === 'out' && b.type.toLowerCase() === 'http',
  )?.[0];
  return response.outputData?.find((o) => o.name === name)?.data?.http;
}

function isAuthorized(fn: HttpFunction, url: URL, req: http.IncomingMessage, key: string): boolean {
  if (fn.authLevel === 'anonymous') return true;
  const given = url.searchParams.get('code') ?? req.headers['x-functions-key'];
  // The dev host has one key, which serves as both the function key and the master (admin) key.
  return given === key;
}

/**
 * Answers with an empty body. `close` ends the connection after it: a client that sent `Expect: 100-continue` and got
 * no 100 may or may not send its body, so the connection cannot be reused.
 */
function end(res: http.ServerResponse, status: number, close = false): void {
  res.writeHead(status, { 'content-length': '0', ...(close ? { connection: 'close' } : {}) });
  res.end();
}

/** Starts the HTTP listener; resolves once it accepts connections. */
export async function startHttpListener(options: HttpListenerOptions): Promise<HttpListener> {
  const { invoker, functionKey } = options;
  const prefix = options.routePrefix ? `/${options.routePrefix}` : '';
  const routes: Route[] = options.functions
    .map((fn) => ({ fn, compiled: compileRoute(fn.route) }))
    .sort((a, b) => compareRoutes(a.compiled, b.compiled));

  const limit = options.maxRequestBodyBytes;
  /** Ends the lingering 413 connections at once (on close). */
  const lingering = new Set<() => void>();

  /**
   * Answers 413 and only then stops reading: the rest of the upload is read and thrown away until the client ends it,
   * hangs up, or LINGER_AFTER_413_MS pass, and the connection closes after. Destroying the request at once (as
   * before) reset the connection under a client still sending, which then saw ECONNRESET instead of the 413.
   */
  const refuseBody = (req: http.IncomingMessage, res: http.ServerResponse, bodyComing: boolean): void => {
    const payload = tooLargeBody(limit);
    res.writeHead(413, {
      'content-type': 'application/json; charset=utf-8',
      'content-length': String(payload.length),
      connection: 'close',
    });
    if (!bodyComing || req.complete) {
      res.end(payload);
      return;
    }
    // The whole answer goes out now; ending the response is what closes the socket, so that waits.
    res.write(payload);
    const finish = () => {
      clearTimeout(timer);
      lingering.delete(finish);
      req.off('end', finish);
      req.off('close', finish);
      res.end();
    };
    const timer = setTimeout(finish, LINGER_AFTER_413_MS);
    lingering.add(finish);
    req.once('end', finish);
    req.once('close', finish);
    req.resume();
  };

  const handle = async (
    req: http.IncomingMessage,
    res: http.ServerResponse,
    expectsContinue: boolean,
  ): Promise<void> => {
    const url = new URL(req.url ?? '/', `http://${req.headers.host ?? `${options.host}:${listener.port}`}`);
    const method = (req.method ?? 'GET').toUpperCase();
    let path = url.pathname;
    if (prefix) {
      if (path.toLowerCase() !== prefix && !path.toLowerCase().startsWith(`${prefix}/`)) {
        return end(res, 404, expectsContinue);
      }
      path = path.slice(prefix.length);
    }
    let matched: { fn: HttpFunction; params: Record<string, string> } | undefined;
    for (const route of routes) {
      if (route.fn.methods.length > 0 && !route.fn.methods.includes(method)) continue;
      const params = route.compiled.match(path);
      if (params) {
        matched = { fn: route.fn, params };
        break;
      }
    }
    // The host answers an unknown route and a known route with another method alike: 404, empty body.
    if (!matched) return end(res, 404, expectsContinue);
    const { fn, params } = matched;
    if (!isAuthorized(fn, url, req, functionKey)) return end(res, 401, expectsContinue);

    // A declared length over the limit is refused before any of the body is read (or, with Expect, sent).
    if (Number(req.headers['content-length'] ?? 0) > limit) return refuseBody(req, res, !expectsContinue);
    if (expectsContinue) res.writeContinue();
    const body = await readBody(req, limit);
    if (!body) return refuseBody(req, res, true);
    const query: Record<string, string> = {};
    for (const key of new Set(url.searchParams.keys())) query[key] = url.searchParams.getAll(key).join(',');
    const request: RpcHttpData = {
      method,
      url: url.toString(),
      headers: headerMap(req),
      query,
      params,
      body: { bytes: body },
    };

    let output: RpcHttpData | undefined;
    try {
      const response = await invoker.invoke(fn, {
        trigger: { http: request },
        traceParent: typeof req.headers.traceparent === 'string' ? req.headers.traceparent : undefined,
      });
      output = httpOutput(fn, response);
    } catch {
      // The invoker has logged the error; the host never returns the stack to the caller.
      return end(res, 500);
    }
    if (!output) return end(res, 204);
    const payload = bodyBytes(output.body);
    const headers: Record<string, string | string[]> = {};
    for (const [name, value] of Object.entries(output.headers ?? {})) {
      if (!HOP_BY_HOP.has(name.toLowerCase())) headers[name] = value;
    }
    const cookies = (output.cookies ?? []).map(serializeCookie);
    if (cookies.length > 0) headers['set-cookie'] = cookies;
    headers['content-length'] = String(payload.length);
    res.writeHead(Number(output.statusCode ?? 200), headers);
    res.end(method === 'HEAD' ? undefined : payload);
  };

  const serve = (req: http.IncomingMessage, res: http.ServerResponse, expectsContinue: boolean) => {
    handle(req, res, expectsContinue).catch((error: unknown) => {
      invoker.log('host', 'error', `HTTP request failed: ${error instanceof Error ? error.message : String(error)}`);
      if (!res.headersSent) end(res, 500);
      else res.destroy();
    });
  };
  const server = http.createServer((req, res) => serve(req, res, false));
  // With `Expect: 100-continue` the client waits for a 100 before it sends the body: 100 only once the route, the key
  // and the declared length are accepted, so a refused upload is never sent at all.
  server.on('checkContinue', (req: http.IncomingMessage, res: http.ServerResponse) => serve(req, res, true));
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(options.port, options.host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  const port = (server.address() as AddressInfo).port;
  const listener: HttpListener = {
    port,
    url: `http://${options.host}:${port}`,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        for (const finish of [...lingering]) finish();
        server.closeIdleConnections();
      }),
  };
  return listener;
}
