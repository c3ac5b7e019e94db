/** An HTTP proxy in front of Azurite's table endpoint that refuses, or answers nothing to, the requests a test chooses. */
import http from 'node:http';
import type { AddressInfo } from 'node:net';

/** One request as the proxy saw it, before deciding what to do with it. */
export interface TableRequest {
  method: string;
  /** The decoded path and query, e.g. `/devstoreaccount1/MailStatus(PartitionKey='…',RowKey='…')`. */
  path: string;
  /** The JSON body of a write (PUT, MERGE, POST), parsed; undefined for reads and non-JSON bodies. */
  body?: Record<string, unknown>;
  /**
   * Which try of one SDK call this is (1, 2, …). The SDK's retries keep the call's `x-ms-client-request-id`, so a
   * test can fail every try of one call, which is what the product sees as one failed storage operation.
   */
  attempt: number;
}

/**
 * - `forward`: passed on to Azurite unchanged.
 * - `refuse`: answered 503 ServerBusy in the Table service's shape, never reaching Azurite (the SDK retries it).
 * - `drop-reply`: passed on to Azurite, which applies it, then the connection is cut before the answer: a write
 *   whose effect the caller cannot know.
 * - `{ delayMs }`: passed on after `delayMs` (a slow or stalled storage call).
 */
export type TableFault = 'forward' | 'refuse' | 'drop-reply' | { delayMs: number };

export interface TableFaultProxy {
  /** The table endpoint to put in `TableEndpoint=` of a connection string. */
  url: string;
  /** Decides each request; the default forwards everything. */
  decide: (request: TableRequest) => TableFault;
  /** Every request with what was done with it, oldest first. */
  readonly log: Array<TableRequest & { fault: TableFault }>;
  close(): Promise<void>;
}

const SERVER_BUSY = JSON.stringify({
  'odata.error': {
    code: 'ServerBusy',
    message: { lang: 'en-US', value: 'The server is currently unable to receive requests. Please retry your request.' },
  },
});

/**
 * Starts the proxy for `target`, Azurite's table endpoint with its account path (`http://127.0.0.1:PORT/devstoreaccount1`).
 * Shared Key signatures cover the path, not the host, so requests pass through unchanged.
 */
export async function startTableFaultProxy(target: string): Promise<TableFaultProxy> {
  const upstream = new URL(target);
  const tries = new Map<string, number>();
  const proxy: TableFaultProxy = {
    url: '',
    decide: () => 'forward',
    log: [],
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };

  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (chunk: Buffer) => chunks.push(chunk));
    req.on('end', () => {
      const raw = Buffer.concat(chunks);
      const callId = String(req.headers['x-ms-client-request-id'] ?? Math.random());
      const attempt = (tries.get(callId) ?? 0) + 1;
      tries.set(callId, attempt);
      let body: Record<string, unknown> | undefined;
      if (raw.length > 0 && String(req.headers['content-type'] ?? '').includes('json')) {
        try {
          body = JSON.parse(raw.toString('utf8')) as Record<string, unknown>;
        } catch {
          // A batch or anything not JSON: decided on method and path alone.
        }
      }
      const request: TableRequest = {
        method: req.method ?? 'GET',
        path: decodeURIComponent(req.url ?? ''),
        ...(body ? { body } : {}),
        attempt,
      };
      const fault = proxy.decide(request);
      proxy.log.push({ ...request, fault });
      if (fault === 'refuse') {
        res.writeHead(503, { 'content-type': 'application/json;odata=minimalmetadata' });
        res.end(SERVER_BUSY);
        return;
      }
      const delayMs = typeof fault === 'object' ? fault.delayMs : 0;
      setTimeout(() => forwardUpstream(raw, fault === 'drop-reply'), delayMs);
    });

    function forwardUpstream(raw: Buffer, dropReply: boolean): void {
      const forward = http.request(
        {
          host: upstream.hostname,
          port: upstream.port,
          method: req.method,
          path: req.url,
          headers: { ...req.headers, host: upstream.host },
        },
        (answer) => {
          if (dropReply) {
            // Azurite has done it; the caller never hears so.
            answer.resume();
            answer.on('end', () => req.socket.destroy());
            return;
          }
          res.writeHead(answer.statusCode ?? 502, answer.headers);
          answer.pipe(res);
        },
      );
      forward.on('error', () => res.destroy());
      forward.end(raw);
    }
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  proxy.url = `http://127.0.0.1:${port}${upstream.pathname}`;
  return proxy;
}

/** True when `request` is about the status record of message `id` (a single message: partition = id). */
export function isRecordOf(request: TableRequest, id: string): boolean {
  return /\/MailStatus\(/.test(request.path) && request.path.includes(`PartitionKey='${id}'`);
}
