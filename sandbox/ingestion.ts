/**
 * An Application Insights ingestion ("Breeze") capture for the sandbox: HTTPS on loopback with a certificate
 * from the sandbox CA. It accepts what the exporters post (`POST /v2.1/track`, also `/v2/track` and `/track`;
 * a JSON array or newline-delimited JSON; gzip, deflate or plain), answers as Breeze does and keeps every
 * envelope so that tests can read what actually went over the wire.
 *
 * Like a resource with local authentication turned off, it can require a Microsoft Entra bearer token on every
 * post ({@link IngestionCapture.setLocalAuth}): one the sandbox's issuer signed for Azure Monitor
 * (`https://monitor.azure.com`), held by an identity with Monitoring Metrics Publisher on the resource.
 */
import { createServer, type Server } from 'node:https';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { randomUUID } from 'node:crypto';
import { gunzipSync, inflateSync } from 'node:zlib';
import type { CertificateAuthority } from './ca';
import { MONITOR_RESOURCE } from './entra';
import type { TokenIssuer } from './tokens';
import { LOOPBACK_HOST, closeServer, listenOnLoopback, sendJson } from './httpServer';

/** Breeze accepts up to about 64 MB uncompressed; the capture keeps a lower cap since tests send little. */
const MAX_BODY_BYTES = 16 * 1024 * 1024;

/** One telemetry item as it arrived (the Breeze envelope). */
export interface CapturedEnvelope {
  /** e.g. `Microsoft.ApplicationInsights.Event`, `Microsoft.ApplicationInsights.Metric`. */
  name: string;
  iKey: string;
  time: string;
  sampleRate?: number;
  tags: Record<string, string>;
  data: { baseType: string; baseData: Record<string, unknown> & { name?: string } };
  /** The request path it came in on. */
  path: string;
}

/** A custom event (`customEvents` table): the EventData baseData. */
export interface CapturedEvent {
  name: string;
  properties: Record<string, string>;
  measurements: Record<string, number>;
  time: string;
  tags: Record<string, string>;
}

/** One metric data point from a MetricData item (`customMetrics` table). */
export interface CapturedMetric {
  name: string;
  value: number;
  count?: number;
  min?: number;
  max?: number;
  properties: Record<string, string>;
  time: string;
  tags: Record<string, string>;
}

/** One POST the capture answered, or that its client gave up on. */
export interface CapturedRequest {
  method: string;
  path: string;
  /** The Entra identity (`oid`) whose verified bearer token came with the post; absent without a valid token. */
  principal?: string;
  /** The status answered; 0 when the client closed the connection first (a request held by `delayNext`). */
  status: number;
  contentEncoding?: string;
  itemCount: number;
}

/** Entra ID authentication of telemetry, as Application Insights does it when the resource's local auth is off. */
export interface IngestionEntraAuth {
  /** The token issuer every sandbox service trusts (the managed identity endpoint signs with it). */
  issuer: TokenIssuer;
  /** Object ids that hold Monitoring Metrics Publisher on the resource; a valid token of anyone else is a 403. */
  publishers: string[];
}

/** Audiences Azure Monitor accepts (Entra writes the resource with or without its trailing slash). */
const MONITOR_AUDIENCES = [MONITOR_RESOURCE, `${MONITOR_RESOURCE}/`];

export interface IngestionCapture {
  /** `https://127.0.0.1:PORT` */
  url: string;
  port: number;
  instrumentationKey: string;
  /** `InstrumentationKey=…;IngestionEndpoint=https://127.0.0.1:PORT/;LiveEndpoint=https://127.0.0.1:PORT/` */
  connectionString: string;
  /** Envelopes from posts that were answered 200 (rejected posts are not "received"). */
  items: CapturedEnvelope[];
  /** Every request body, decompressed, accepted or not: for secret scanning. */
  rawBodies: string[];
  requests: CapturedRequest[];
  /** Custom events, optionally only those named `name`. */
  events(name?: string): CapturedEvent[];
  /** Metric data points, optionally only those named `name`. */
  metrics(name?: string): CapturedMetric[];
  /** Resolves true once `predicate(items)` holds, false after `timeoutMs` (default 10 s). */
  waitFor(predicate: (items: CapturedEnvelope[]) => boolean, timeoutMs?: number): Promise<boolean>;
  /** Answers the next `count` track posts with `status` (default 503) and Breeze's error body. */
  failNext(count: number, status?: number): void;
  /**
   * Holds the next `count` track posts for `ms` before answering them as usual: a hung endpoint when `ms` outlasts
   * the client's patience. A client that closes the connection first is recorded with status 0.
   */
  delayNext(count: number, ms: number): void;
  /**
   * `false`: every post must carry a valid Entra bearer token (the resource's `DisableLocalAuth: true`); a post
   * without one is answered 401, one from an identity without the publisher role 403. Default `true`. Needs `entra`.
   */
  setLocalAuth(enabled: boolean): void;
  /** Forgets everything received and any pending failures or delays (local auth stays as set). */
  reset(): void;
  close(): Promise<void>;
}

function decodeBody(raw: Buffer, encoding: string | undefined): string {
  const e = (encoding ?? '').toLowerCase();
  if (e === 'gzip') return gunzipSync(raw).toString('utf8');
  if (e === 'deflate') return inflateSync(raw).toString('utf8');
  // Some SDKs gzip without saying so.
  if (raw[0] === 0x1f && raw[1] === 0x8b) return gunzipSync(raw).toString('utf8');
  return raw.toString('utf8');
}

/** A JSON array of envelopes, or one JSON envelope per line (the classic SDKs). */
function parseEnvelopes(text: string): unknown[] {
  const trimmed = text.trim();
  if (!trimmed) return [];
  if (trimmed.startsWith('[')) return JSON.parse(trimmed) as unknown[];
  return trimmed
    .split(/\r?\n/)
    .filter((line) => line.trim())
    .map((line) => JSON.parse(line) as unknown);
}

/** A JSON field as text: strings as they are, numbers and booleans written out, anything else (absent, null, an object) ''. */
function text(value: unknown): string {
  if (typeof value === 'string') return value;
  return typeof value === 'number' || typeof value === 'boolean' ? String(value) : '';
}

function stringRecord(value: unknown): Record<string, string> {
  const out: Record<string, string> = {};
  if (value && typeof value === 'object') {
    for (const [k, v] of Object.entries(value)) out[k] = typeof v === 'string' ? v : JSON.stringify(v);
  }
  return out;
}

function numberRecord(value: unknown): Record<string, number> {
  const out: Record<string, number> = {};
  if (value && typeof value === 'object') {
    for (const [k, v] of Object.entries(value)) if (typeof v === 'number') out[k] = v;
  }
  return out;
}

function toEnvelope(raw: unknown, path: string): CapturedEnvelope | undefined {
  if (!raw || typeof raw !== 'object') return undefined;
  const r = raw as Record<string, unknown>;
  const data = (r.data ?? {}) as Record<string, unknown>;
  return {
    name: text(r.name),
    iKey: text(r.iKey ?? r.instrumentationKey),
    time: text(r.time),
    ...(typeof r.sampleRate === 'number' ? { sampleRate: r.sampleRate } : {}),
    tags: stringRecord(r.tags),
    data: {
      baseType: text(data.baseType),
      baseData: (data.baseData && typeof data.baseData === 'object'
        ? data.baseData
        : {}) as CapturedEnvelope['data']['baseData'],
    },
    path,
  };
}

/** Starts the capture on 127.0.0.1 with an OS-assigned port. Close it when done. */
export async function startIngestionCapture(options: {
  ca: CertificateAuthority;
  instrumentationKey?: string;
  /** How bearer tokens are verified; without it local auth cannot be turned off. */
  entra?: IngestionEntraAuth;
}): Promise<IngestionCapture> {
  const instrumentationKey = options.instrumentationKey ?? randomUUID();
  const { keyPem, certPem } = options.ca.issueServer();
  const items: CapturedEnvelope[] = [];
  const rawBodies: string[] = [];
  const requests: CapturedRequest[] = [];
  const failures = { remaining: 0, status: 503 };
  const delays = { remaining: 0, ms: 0 };
  const held = new Set<NodeJS.Timeout>();
  const waiters = new Set<(closing?: boolean) => void>();
  const auth = { localAuth: true };

  const notify = () => {
    for (const check of [...waiters]) check();
  };

  /**
   * The Entra check of one post: the verified token's `oid`, or the answer Breeze gives. A token is verified whenever
   * one is sent; without one, the post passes only while local auth is on.
   */
  const authenticate = async (
    request: IncomingMessage,
  ): Promise<{ principal?: string } | { status: 401 | 403; message: string }> => {
    const header = request.headers.authorization;
    if (!header) {
      return auth.localAuth
        ? {}
        : {
            status: 401,
            message:
              'Authorization is required: local authentication is disabled on this resource, send a Microsoft Entra token',
          };
    }
    const bearer = /^Bearer\s+(\S+)$/i.exec(header)?.[1];
    if (!bearer || !options.entra)
      return { status: 401, message: 'The Authorization header is not a valid Bearer token' };
    const check = await options.entra.issuer.verify(bearer, MONITOR_AUDIENCES);
    if (!check.ok) return { status: 401, message: `The bearer token was refused (${check.problem}): ${check.detail}` };
    const principal = check.claims.oid;
    if (!options.entra.publishers.includes(principal)) {
      return {
        status: 403,
        message: `The identity ${principal} does not have the Monitoring Metrics Publisher role on this resource`,
      };
    }
    return { principal };
  };

  const handle = (request: IncomingMessage, response: ServerResponse, body: Buffer, principal?: string) => {
    const path = new URL(request.url ?? '/', 'https://capture').pathname;
    const encoding = request.headers['content-encoding'];
    const record = (status: number, itemCount: number) =>
      requests.push({
        method: request.method ?? '',
        path,
        ...(principal ? { principal } : {}),
        status,
        ...(encoding ? { contentEncoding: encoding } : {}),
        itemCount,
      });

    if (request.method !== 'POST') {
      // Live metrics pings and the like: this capture is not a live metrics service.
      record(404, 0);
      sendJson(response, 404, { error: 'not found' });
      return;
    }
    if (!/^\/(v2(\.1)?\/)?track$/i.test(path)) {
      record(404, 0);
      sendJson(response, 404, {
        itemsReceived: 0,
        itemsAccepted: 0,
        errors: [{ index: 0, statusCode: 404, message: `unknown path ${path}` }],
      });
      return;
    }
    let text: string;
    let parsed: unknown[];
    try {
      text = decodeBody(body, encoding);
      rawBodies.push(text);
      parsed = parseEnvelopes(text);
    } catch (error) {
      record(400, 0);
      sendJson(response, 400, {
        itemsReceived: 0,
        itemsAccepted: 0,
        errors: [{ index: 0, statusCode: 400, message: `invalid body: ${(error as Error).message}` }],
      });
      return;
    }
    if (failures.remaining > 0) {
      failures.remaining -= 1;
      const status = failures.status;
      record(status, parsed.length);
      // Breeze lists every item as failed with the same (retriable) status.
      sendJson(response, status, {
        itemsReceived: parsed.length,
        itemsAccepted: 0,
        errors: parsed.map((_, index) => ({ index, statusCode: status, message: 'injected failure' })),
      });
      return;
    }
    const errors: Array<{ index: number; statusCode: number; message: string }> = [];
    parsed.forEach((raw, index) => {
      const envelope = toEnvelope(raw, path);
      if (!envelope || !envelope.iKey || !envelope.data.baseType) {
        errors.push({ index, statusCode: 400, message: 'Field is required: iKey/data.baseType' });
        return;
      }
      if (envelope.iKey !== instrumentationKey) {
        errors.push({ index, statusCode: 400, message: 'Invalid instrumentation key' });
        return;
      }
      items.push(envelope);
    });
    const accepted = parsed.length - errors.length;
    const status = errors.length === 0 ? 200 : accepted > 0 ? 206 : 400;
    record(status, parsed.length);
    sendJson(response, status, { itemsReceived: parsed.length, itemsAccepted: accepted, errors });
    notify();
  };

  const server: Server = createServer({ key: keyPem, cert: certPem, minVersion: 'TLSv1.2' }, (request, response) => {
    const chunks: Buffer[] = [];
    let size = 0;
    request.on('data', (chunk: Buffer) => {
      size += chunk.length;
      if (size > MAX_BODY_BYTES) {
        sendJson(response, 413, { itemsReceived: 0, itemsAccepted: 0, errors: [] });
        request.destroy();
        return;
      }
      chunks.push(chunk);
    });
    request.on('end', () => {
      if (size > MAX_BODY_BYTES) return;
      const answer = () => {
        authenticate(request)
          .then((result) => {
            if ('status' in result) {
              // Refused before the body is looked at, as Breeze does: nothing is received, the body is kept for scans.
              rawBodies.push(decodeBody(Buffer.concat(chunks), request.headers['content-encoding']));
              requests.push({
                method: request.method ?? '',
                path: new URL(request.url ?? '/', 'https://capture').pathname,
                status: result.status,
                itemCount: 0,
              });
              sendJson(response, result.status, {
                itemsReceived: 0,
                itemsAccepted: 0,
                errors: [{ index: 0, statusCode: result.status, message: result.message }],
              });
              return;
            }
            handle(request, response, Buffer.concat(chunks), result.principal);
          })
          .catch((error: unknown) => {
            if (!response.headersSent) sendJson(response, 500, { error: (error as Error).message });
          });
      };
      if (delays.remaining <= 0) return answer();
      delays.remaining -= 1;
      const timer = setTimeout(() => {
        held.delete(timer);
        answer();
      }, delays.ms);
      held.add(timer);
      response.on('close', () => {
        if (!held.delete(timer)) return;
        // The client gave up on the held request (its own timeout): nothing is answered, nothing received.
        clearTimeout(timer);
        requests.push({
          method: request.method ?? '',
          path: new URL(request.url ?? '/', 'https://capture').pathname,
          status: 0,
          itemCount: 0,
        });
      });
    });
    request.on('error', () => response.destroy());
  });

  const port = await listenOnLoopback(server);
  const url = `https://${LOOPBACK_HOST}:${port}`;

  const capture: IngestionCapture = {
    url,
    port,
    instrumentationKey,
    connectionString: `InstrumentationKey=${instrumentationKey};IngestionEndpoint=${url}/;LiveEndpoint=${url}/`,
    items,
    rawBodies,
    requests,
    events(name) {
      return items
        .filter((i) => i.data.baseType === 'EventData')
        .map((i) => ({
          name: String(i.data.baseData.name ?? ''),
          properties: stringRecord(i.data.baseData.properties),
          measurements: numberRecord(i.data.baseData.measurements),
          time: i.time,
          tags: i.tags,
        }))
        .filter((e) => name === undefined || e.name === name);
    },
    metrics(name) {
      const out: CapturedMetric[] = [];
      for (const item of items) {
        if (item.data.baseType !== 'MetricData') continue;
        const points = Array.isArray(item.data.baseData.metrics)
          ? (item.data.baseData.metrics as Array<Record<string, unknown>>)
          : [];
        for (const p of points) {
          const metric: CapturedMetric = {
            name: text(p.name),
            value: Number(p.value ?? 0),
            ...(typeof p.count === 'number' ? { count: p.count } : {}),
            ...(typeof p.min === 'number' ? { min: p.min } : {}),
            ...(typeof p.max === 'number' ? { max: p.max } : {}),
            properties: stringRecord(item.data.baseData.properties),
            time: item.time,
            tags: item.tags,
          };
          if (name === undefined || metric.name === name) out.push(metric);
        }
      }
      return out;
    },
    waitFor(predicate, timeoutMs = 10_000) {
      return new Promise<boolean>((resolve) => {
        const finish = (result: boolean) => {
          waiters.delete(check);
          clearTimeout(timer);
          resolve(result);
        };
        const check = (closing = false) => {
          let ok = false;
          try {
            ok = predicate(items);
          } catch {
            ok = false;
          }
          if (ok || closing) finish(ok);
        };
        const timer = setTimeout(() => finish(false), timeoutMs);
        waiters.add(check);
        check();
      });
    },
    failNext(count, status = 503) {
      failures.remaining = count;
      failures.status = status;
    },
    delayNext(count, ms) {
      delays.remaining = count;
      delays.ms = ms;
    },
    setLocalAuth(enabled) {
      if (!enabled && !options.entra) throw new Error('the capture has no Entra token check: pass `entra`');
      auth.localAuth = enabled;
    },
    reset() {
      items.length = 0;
      rawBodies.length = 0;
      requests.length = 0;
      failures.remaining = 0;
      delays.remaining = 0;
    },
    async close() {
      for (const check of [...waiters]) check(true);
      for (const timer of held) clearTimeout(timer);
      held.clear();
      await closeServer(server);
    },
  };
  return capture;
}
