/** The dev host's request body limit over real HTTP: 413 with a JSON error that the client actually receives, then a clean close. */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startDevHost, type DevHost } from '../../dev/host';
import {
  BODY_SIZE_LIMIT_SETTING,
  LINGER_AFTER_413_MS,
  MAX_REQUEST_BODY_BYTES,
  requestBodyLimit,
} from '../../dev/httpListener';

const FIXTURE = path.join(__dirname, '../programs/bodyLimitsApp.ts');
/** Small, so that going over it costs little. */
const LIMIT = 1024 * 1024;
const CHUNK_BYTES = 64 * 1024;

let host: DevHost;
let dir: string;

beforeAll(async () => {
  dir = mkdtempSync(path.join(tmpdir(), 'dev-host-limits-'));
  const hostJson = path.join(dir, 'host.json');
  writeFileSync(hostJson, JSON.stringify({ version: '2.0', extensions: { http: { routePrefix: 'api' } } }));
  host = await startDevHost({
    entry: FIXTURE,
    env: { [BODY_SIZE_LIMIT_SETTING]: String(LIMIT) },
    port: 0,
    hostJsonPath: hostJson,
    log: () => undefined,
  });
});

afterAll(async () => {
  await host?.stop();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

interface Upload {
  /** Bytes of body to send; Infinity sends until the connection closes. */
  bytes: number;
  headers?: Record<string, string>;
  /** Stop sending (and end the request) as soon as the answer arrives, as a careful client does. */
  stopOnResponse?: boolean;
  /** Wait for `100 Continue` before sending any of the body. */
  expectContinue?: boolean;
}

interface Outcome {
  status?: number | undefined;
  headers?: http.IncomingHttpHeaders;
  text: string;
  /** Body bytes the client wrote. */
  sent: number;
  sawContinue: boolean;
  /** Errors the client saw before it had read the whole answer. */
  errorsBeforeAnswer: string[];
  /** ms from the answer's end to the connection's close. */
  closedAfterMs?: number;
}

/** One upload on a connection of its own (no agent), through node:http, reporting what the client saw. */
function upload(spec: Upload): Promise<Outcome> {
  return new Promise((resolve) => {
    const outcome: Outcome = { text: '', sent: 0, sawContinue: false, errorsBeforeAnswer: [] };
    let answered = false;
    let answeredAt = 0;
    let stop = false;
    const req = http.request(`${host.url}/api/upload`, {
      method: 'POST',
      agent: false,
      headers: {
        'content-type': 'application/octet-stream',
        ...(spec.expectContinue ? { expect: '100-continue' } : {}),
        ...spec.headers,
      },
    });
    const pump = () => {
      while (!stop && !req.destroyed && outcome.sent < spec.bytes) {
        const size = Math.min(CHUNK_BYTES, spec.bytes - outcome.sent);
        outcome.sent += size;
        if (!req.write(Buffer.alloc(size, 0x61))) return void req.once('drain', pump);
      }
      if (!req.destroyed && !req.writableEnded) req.end();
    };
    req.on('response', (res) => {
      outcome.status = res.statusCode;
      outcome.headers = res.headers;
      if (spec.stopOnResponse) stop = true;
      const chunks: Buffer[] = [];
      res.on('data', (chunk: Buffer) => chunks.push(chunk));
      res.on('end', () => {
        answered = true;
        answeredAt = Date.now();
        outcome.text = Buffer.concat(chunks).toString('utf8');
        // A declared length the client never meant to send in full: hang up once answered.
        if (spec.headers?.['content-length'] && !req.writableEnded) req.destroy();
      });
    });
    req.on('continue', () => {
      outcome.sawContinue = true;
      pump();
    });
    req.on('error', (error: NodeJS.ErrnoException) => {
      if (!answered) outcome.errorsBeforeAnswer.push(error.code ?? error.message);
    });
    req.on('close', () => {
      if (answered) outcome.closedAfterMs = Date.now() - answeredAt;
      resolve(outcome);
    });
    if (spec.expectContinue) req.flushHeaders();
    else pump();
  });
}

interface RawOutcome {
  status?: number | undefined;
  headers: Record<string, string>;
  text: string;
  sent: number;
  /** Errors the client saw before the whole answer had arrived. */
  errorsBeforeAnswer: string[];
  /** ms from the answer's arrival to the connection's close. */
  closedAfterMs?: number;
}

/**
 * A chunked upload over a raw socket from a client that does not look at the answer until it has sent everything
 * (`bytes`; Infinity: until the connection closes). node:http stops sending once answered, so it cannot be this client.
 */
function rawUpload(bytes: number): Promise<RawOutcome> {
  return new Promise((resolve) => {
    const { port } = new URL(host.url);
    const socket = net.connect(Number(port), '127.0.0.1');
    const outcome: RawOutcome = { headers: {}, text: '', sent: 0, errorsBeforeAnswer: [] };
    const received: Buffer[] = [];
    let answeredAt: number | undefined;
    const chunk = Buffer.concat([
      Buffer.from(`${CHUNK_BYTES.toString(16)}\r\n`),
      Buffer.alloc(CHUNK_BYTES, 0x61),
      Buffer.from('\r\n'),
    ]);
    const parse = () => {
      const raw = Buffer.concat(received).toString('latin1');
      const split = raw.indexOf('\r\n\r\n');
      if (split < 0) return;
      const [statusLine = '', ...lines] = raw.slice(0, split).split('\r\n');
      outcome.status = Number(statusLine.split(' ')[1]);
      for (const line of lines) {
        const colon = line.indexOf(':');
        outcome.headers[line.slice(0, colon).toLowerCase()] = line.slice(colon + 1).trim();
      }
      const body = raw.slice(split + 4);
      if (body.length >= Number(outcome.headers['content-length'] ?? 0)) {
        outcome.text = body;
        answeredAt ??= Date.now();
      }
    };
    const pump = () => {
      while (!socket.destroyed && outcome.sent < bytes) {
        outcome.sent += CHUNK_BYTES;
        if (!socket.write(chunk)) return void socket.once('drain', pump);
      }
      if (!socket.destroyed) socket.write('0\r\n\r\n');
    };
    socket.on('data', (data: Buffer) => {
      received.push(data);
      parse();
    });
    socket.on('error', (error: NodeJS.ErrnoException) => {
      if (answeredAt === undefined) outcome.errorsBeforeAnswer.push(error.code ?? error.message);
    });
    socket.on('close', () => {
      if (answeredAt !== undefined) outcome.closedAfterMs = Date.now() - answeredAt;
      resolve(outcome);
    });
    socket.on('end', () => socket.end());
    socket.write(
      `POST /api/upload HTTP/1.1\r\nHost: ${new URL(host.url).host}\r\n` +
        'Content-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\n\r\n',
    );
    pump();
  });
}

interface ErrorJson {
  error: { code: string; message: string; details: Array<{ path: string; message: string }> };
}

/** The host's 413: JSON in the API's error shape, naming the body, and the connection closes after it. */
function expectHost413(outcome: Outcome | RawOutcome): void {
  expect(outcome.errorsBeforeAnswer).toEqual([]);
  expect(outcome.status, outcome.text).toBe(413);
  expect(outcome.headers?.['content-type']).toBe('application/json; charset=utf-8');
  expect(outcome.headers?.connection).toBe('close');
  const { error } = JSON.parse(outcome.text) as ErrorJson;
  expect(error.code).toBe('payload_too_large');
  expect(error.message).toContain(`${LIMIT} bytes`);
  expect(error.details).toEqual([{ path: '(body)', message: `the body must be at most ${LIMIT} bytes` }]);
}

async function uploads(): Promise<number> {
  return ((await (await fetch(`${host.url}/api/calls`)).json()) as { uploads: number }).uploads;
}

describe(`${BODY_SIZE_LIMIT_SETTING}`, () => {
  it('is the 100 MB default when unset, and must be a whole number of bytes', () => {
    expect(requestBodyLimit({})).toBe(MAX_REQUEST_BODY_BYTES);
    expect(requestBodyLimit({ [BODY_SIZE_LIMIT_SETTING]: ' 2048 ' })).toBe(2048);
    for (const bad of ['0', '-1', '1.5', '1e6', 'lots']) {
      expect(() => requestBodyLimit({ [BODY_SIZE_LIMIT_SETTING]: bad })).toThrow(
        `${BODY_SIZE_LIMIT_SETTING} must be a whole number of bytes above 0, not "${bad}"`,
      );
    }
  });

  it('is the limit the host serves with', () => {
    expect(host.maxRequestBodyBytes).toBe(LIMIT);
  });
});

describe('a body over the limit', () => {
  it('chunked: the client receives the 413 JSON, not ECONNRESET (the host used to destroy the request first)', async () => {
    const before = await uploads();
    const outcome = await upload({ bytes: 8 * LIMIT, stopOnResponse: true });
    expectHost413(outcome);
    expect(outcome.sent).toBeLessThan(8 * LIMIT);
    expect(await uploads()).toBe(before);
  });

  it('chunked, from a client that sends all of it before reading: still the 413, then a clean close', async () => {
    const outcome = await rawUpload(8 * LIMIT);
    expectHost413(outcome);
    expect(outcome.sent).toBe(8 * LIMIT);
    expect(outcome.closedAfterMs).toBeLessThan(LINGER_AFTER_413_MS);
  });

  it(`chunked and endless: the 413 arrives, and the host hangs up ${LINGER_AFTER_413_MS} ms after it`, async () => {
    const outcome = await rawUpload(Infinity);
    expectHost413(outcome);
    expect(outcome.closedAfterMs).toBeGreaterThanOrEqual(LINGER_AFTER_413_MS - 100);
    expect(outcome.closedAfterMs).toBeLessThan(LINGER_AFTER_413_MS + 1_000);
  });

  it('one byte over, chunked, is refused; exactly at the limit is served', async () => {
    expectHost413(await upload({ bytes: LIMIT + 1 }));
    const atLimit = await upload({ bytes: LIMIT });
    expect([atLimit.status, atLimit.text]).toEqual([200, JSON.stringify({ bytes: LIMIT })]);
  });

  it('declared by Content-Length: 413 before the body is read', async () => {
    const before = await uploads();
    const outcome = await upload({ bytes: CHUNK_BYTES, headers: { 'content-length': String(10 ** 9) } });
    expectHost413(outcome);
    expect(await uploads()).toBe(before);
  });

  it('declared by Content-Length with Expect: 100-continue: 413 instead of 100, so no body is sent', async () => {
    const outcome = await upload({
      bytes: LIMIT + 1,
      headers: { 'content-length': String(LIMIT + 1) },
      expectContinue: true,
    });
    expectHost413(outcome);
    expect(outcome.sawContinue).toBe(false);
    expect(outcome.sent).toBe(0);
  });
});

describe('after a refused upload', () => {
  it('a normal request works, on a new connection', async () => {
    expectHost413(await upload({ bytes: 2 * LIMIT, stopOnResponse: true }));
    const response = await fetch(`${host.url}/api/upload`, { method: 'POST', body: 'hello' });
    expect([response.status, await response.json()]).toEqual([200, { bytes: 5 }]);
  });

  it('Expect: 100-continue within the limit gets its 100 and is served', async () => {
    const outcome = await upload({
      bytes: 1000,
      headers: { 'content-length': '1000' },
      expectContinue: true,
    });
    expect(outcome.sawContinue).toBe(true);
    expect([outcome.status, outcome.text]).toEqual([200, JSON.stringify({ bytes: 1000 })]);
  });
});
