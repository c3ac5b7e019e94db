/**
 * The malformed-request table of test/integration/api.test.ts again, each case sent over the dev host's real HTTP port (the built
 * bundle, function key, the host's own body handling): the same status, and the JSON error names the field.
 *
 * Where the host answers before the function runs (a body over its 100 MB `FUNCTIONS_REQUEST_BODY_SIZE_LIMIT`), the
 * 413 is the host's, in the same JSON error shape, naming `(body)`:
 * - a declared Content-Length over it is refused at once, before any of the body is read;
 * - a body streamed without Content-Length is buffered by the host up to it: the function is handed a complete body
 *   (no `enableHttpStream`), so the app's own, smaller cap applies only to what the host let through.
 */
import { execFileSync } from 'node:child_process';
import http from 'node:http';
import path from 'node:path';
import { TableClient } from '@azure/data-tables';
import { BlobServiceClient } from '@azure/storage-blob';
import { QueueClient } from '@azure/storage-queue';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startAzurite, type AzuriteInstance } from '../../dev/azurite';
import { startDevHost, type DevHost } from '../../dev/host';
import { MAX_REQUEST_BODY_BYTES } from '../../dev/httpListener';
import { maxBodyBytes } from '../../src/api/readJsonBody';
import {
  IDEMPOTENCY_TABLE,
  OUTBOX_POISON_QUEUE,
  OUTBOX_QUEUE,
  PAYLOAD_CONTAINER,
  STATUS_TABLE,
} from '../../src/storage/storageClients';
import {
  MAX_MESSAGE_BYTES,
  bodyBytes,
  headersOf,
  limitSettings,
  malformed,
  type RequestSpec,
} from '../support/malformedRequests';
import { applySandboxEnv, startSandbox, type Sandbox } from '../support/sandboxMailer';

const ROOT = path.resolve(__dirname, '../..');
let sandbox: Sandbox;
let azurite: AzuriteInstance;
let host: DevHost;
const hostLog: string[] = [];

beforeAll(async () => {
  execFileSync(process.execPath, [path.join(ROOT, 'scripts/build.mjs')], { cwd: ROOT });
  [sandbox, azurite] = await Promise.all([startSandbox(), startAzurite()]);
  applySandboxEnv(sandbox);
  host = await startDevHost({
    entry: path.join(ROOT, 'dist/functions/index.js'),
    env: {
      ...sandbox.settings(),
      ...limitSettings(`billing@${sandbox.tenant.domain}`),
      AzureWebJobsStorage: azurite.connectionString,
    },
    port: 0,
    pollIntervalMs: 200,
    log: (line) => hostLog.push(line),
  });
}, 120_000);

afterAll(async () => {
  await host?.stop();
  await Promise.all([sandbox?.close(), azurite?.stop()]);
});

interface HttpAnswer {
  status: number;
  text: string;
}

/** The URL of `spec` on the dev host, with the function key. */
function urlOf(spec: RequestSpec): string {
  const route = spec.path ?? 'messages';
  return `${host.url}/api/${route}${route.includes('?') ? '&' : '?'}code=${encodeURIComponent(host.functionKey)}`;
}

/**
 * Sends a Content-Length that the body does not have (fetch refuses to: undici checks the length it sends), and
 * waits for the answer without finishing the body, as a client uploading a large body would.
 */
function sendDeclaredLength(spec: RequestSpec, headers: Record<string, string>): Promise<HttpAnswer> {
  return new Promise((resolve, reject) => {
    const req = http.request(urlOf(spec), { method: spec.method ?? 'POST', headers }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (chunk: Buffer) => chunks.push(chunk));
      res.on('end', () => {
        req.destroy();
        resolve({ status: res.statusCode ?? 0, text: Buffer.concat(chunks).toString('utf8') });
      });
      res.on('error', reject);
    });
    req.on('error', reject);
    const body = bodyBytes(spec);
    if (body) req.write(body);
  });
}

async function send(spec: RequestSpec): Promise<HttpAnswer> {
  const headers = headersOf(spec);
  const body = bodyBytes(spec);
  const declared = Object.entries(headers).find(([name]) => name.toLowerCase() === 'content-length')?.[1];
  if (declared !== undefined && Number(declared) !== (body?.length ?? 0)) return sendDeclaredLength(spec, headers);
  // A Uint8Array body: fetch adds no Content-Type of its own (a string body would get text/plain).
  const response = await fetch(urlOf(spec), {
    method: spec.method ?? 'POST',
    headers,
    ...(body ? { body: new Uint8Array(body) } : {}),
  });
  return { status: response.status, text: await response.text() };
}

interface ErrorJson {
  error: { code: string; message: string; details: Array<{ path: string; message: string }> };
}

describe(`POST /api/messages over HTTP: the ${malformed.length} malformed requests, each a 4xx naming the field`, () => {
  it('sends every case of the table', () => {
    expect(malformed.length).toBeGreaterThanOrEqual(100);
  });

  it.each(malformed)('%s', async (_name, spec, status, field) => {
    const answer = await send(spec);
    expect(answer.status, answer.text).toBe(status);
    const { error } = JSON.parse(answer.text) as ErrorJson;
    expect(error.code).toMatch(/^[a-z_]+$/);
    expect(typeof error.message).toBe('string');
    const paths = error.details.map((d) => d.path);
    if (typeof field === 'string') expect(paths).toContain(field);
    else
      expect(
        paths.some((p) => field.test(p)),
        paths.join(', '),
      ).toBe(true);
    for (const detail of error.details) expect(detail.message.length).toBeGreaterThan(0);
  });

  it('a body streamed without Content-Length over the app cap (under the host limit): the function answers 413', async () => {
    const limit = maxBodyBytes(MAX_MESSAGE_BYTES);
    const chunks = [Buffer.from('{"to":"a@example.com","text":"'), Buffer.alloc(limit, 0x74), Buffer.from('"}')];
    const body = new ReadableStream<Uint8Array>({
      pull(controller) {
        const next = chunks.shift();
        if (next) controller.enqueue(new Uint8Array(next));
        else controller.close();
      },
    });
    const response = await fetch(urlOf({}), {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body,
      duplex: 'half',
    });
    const { error } = (await response.json()) as ErrorJson;
    expect([response.status, error.code, error.message]).toEqual([
      413,
      'payload_too_large',
      `The request body is over ${limit} bytes`,
    ]);
    expect(error.details.map((d) => d.path)).toEqual(['(body)']);
  });

  it('a body streamed without Content-Length over the host limit (100 MB): the host answers 413, not read to its end', async () => {
    // Before: the host destroyed the request as it stopped reading, and the client saw ECONNRESET, not its 413.
    let pulled = 0;
    let done = false;
    const endless = new ReadableStream<Uint8Array>({
      pull(controller) {
        // Endless for the server; the client stops producing once the request is over (or at a safety bound).
        if (done || pulled > 4 * MAX_REQUEST_BODY_BYTES) return controller.close();
        pulled += 65_536;
        controller.enqueue(new Uint8Array(65_536).fill(0x20));
      },
    });
    try {
      const response = await fetch(urlOf({}), {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: endless,
        duplex: 'half',
      });
      const { error } = (await response.json()) as ErrorJson;
      expect([response.status, error.code]).toEqual([413, 'payload_too_large']);
      expect(error.message).toContain(`${MAX_REQUEST_BODY_BYTES} bytes`);
      expect(error.details.map((d) => d.path)).toEqual(['(body)']);
    } finally {
      done = true;
    }
    expect(pulled).toBeGreaterThan(MAX_REQUEST_BODY_BYTES);
    expect(pulled).toBeLessThan(MAX_REQUEST_BODY_BYTES + 32 * 1024 * 1024);
  });

  it('nothing malformed reached the outbox, the worker or the SMTP server', async () => {
    // Only malformed requests were sent to this host's storage: nothing may be in it.
    for (const name of [OUTBOX_QUEUE, OUTBOX_POISON_QUEUE]) {
      const queue = new QueueClient(azurite.connectionString, name);
      if (!(await queue.exists())) continue;
      expect((await queue.getProperties()).approximateMessagesCount ?? 0).toBe(0);
    }
    for (const name of [STATUS_TABLE, IDEMPOTENCY_TABLE]) {
      const table = TableClient.fromConnectionString(azurite.connectionString, name, { allowInsecureConnection: true });
      const rows: unknown[] = [];
      try {
        for await (const row of table.listEntities()) rows.push(row);
      } catch (error) {
        if ((error as { statusCode?: number }).statusCode !== 404) throw error; // never created: nothing stored
      }
      expect(rows, name).toEqual([]);
    }
    const payloads = BlobServiceClient.fromConnectionString(azurite.connectionString).getContainerClient(
      PAYLOAD_CONTAINER,
    );
    if (await payloads.exists()) {
      const blobs: string[] = [];
      for await (const blob of payloads.listBlobsFlat()) blobs.push(blob.name);
      expect(blobs).toEqual([]);
    }
    expect(hostLog.filter((line) => line.includes('[outboxDeliver'))).toEqual([]);
    expect(hostLog.filter((line) => line.includes('[messagesPost') && line.includes('Failed ('))).toEqual([]);
    expect(sandbox.smtp.messages).toHaveLength(0);
  });
});
