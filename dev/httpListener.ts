/** Serves HTTP-triggered functions like the Functions host: route prefix, route templates, methods, function keys, 401/404/500 without bodies. */
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import type { RpcHttpCookie, RpcHttpData, RpcInvocationResponse, RpcTypedData } from './functionsCore';
import type { Invoker } from './invoker';
import type { DevFunction } from './registrations';
import { compareRoutes, compileRoute, type CompiledRoute } from './routes';

export type HttpFunction = Extract<DevFunction, { kind: 'http' }>;

/** The host's default request body limit (`maxRequestBodySize`, 100 MB) before it answers 413. */
export const MAX_REQUEST_BODY_BYTES = 104_857_600;
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

class BodyTooLarge extends Error {}

function readBody(req: http.IncomingMessage): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const declared = Number(req.headers['content-length'] ?? 0);
    if (declared > MAX_REQUEST_BODY_BYTES) return reject(new BodyTooLarge());
    const chunks: Buffer[] = [];
    let size = 0;
    req.on('data', (chunk: Buffer) => {
      size += chunk.length;
      if (size > MAX_REQUEST_BODY_BYTES) {
        req.destroy();
        reject(new BodyTooLarge());
      } else chunks.push(chunk);
    });
    req.on('end', () => resolve(Buffer.concat(chunks)));
    req.on('error', reject);
  });
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

function end(res: http.ServerResponse, status: number): void {
  res.writeHead(status, { 'content-length': '0' });
  res.end();
}

/** Starts the HTTP listener; resolves once it accepts connections. */
export async function startHttpListener(options: HttpListenerOptions): Promise<HttpListener> {
  const { invoker, functionKey } = options;
  const prefix = options.routePrefix ? `/${options.routePrefix}` : '';
  const routes: Route[] = options.functions
    .map((fn) => ({ fn, compiled: compileRoute(fn.route) }))
    .sort((a, b) => compareRoutes(a.compiled, b.compiled));

  const handle = async (req: http.IncomingMessage, res: http.ServerResponse): Promise<void> => {
    const url = new URL(req.url ?? '/', `http://${req.headers.host ?? `${options.host}:${listener.port}`}`);
    const method = (req.method ?? 'GET').toUpperCase();
    let path = url.pathname;
    if (prefix) {
      if (path.toLowerCase() !== prefix && !path.toLowerCase().startsWith(`${prefix}/`)) return end(res, 404);
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
    if (!matched) return end(res, 404);
    const { fn, params } = matched;
    if (!isAuthorized(fn, url, req, functionKey)) return end(res, 401);

    let body: Buffer;
    try {
      body = await readBody(req);
    } catch (error) {
      if (error instanceof BodyTooLarge) return end(res, 413);
      throw error;
    }
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

  const server = http.createServer((req, res) => {
    handle(req, res).catch((error: unknown) => {
      invoker.log('host', 'error', `HTTP request failed: ${error instanceof Error ? error.message : String(error)}`);
      if (!res.headersSent) end(res, 500);
      else res.destroy();
    });
  });
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
        server.closeIdleConnections();
      }),
  };
  return listener;
}
