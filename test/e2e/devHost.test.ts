/** The dev host serves the app's own registrations with Functions semantics, driven over real HTTP and real (Azurite) queues. */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { build } from 'esbuild';
import { QueueServiceClient, type QueueClient } from '@azure/storage-queue';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startAzurite, type AzuriteInstance } from '../../dev/azurite';
import { startDevHost, type DevHost } from '../../dev/host';

const FIXTURE = path.join(__dirname, '../support/functions.ts');
const KEY = 'test-function-key';
const MAX_DEQUEUE_COUNT = 3;

interface Seen {
  queue: Array<{
    message: { id: string };
    dequeueCount: number;
    id: string;
    popReceipt: string;
    insertionTime: string;
  }>;
  timer: Array<{ isPastDue: boolean; scheduleStatus: { last: string; next: string; lastUpdated: string } }>;
}

let azurite: AzuriteInstance;
let host: DevHost;
let dir: string;
let hostJson: string;
let work: QueueClient;
let poison: QueueClient;
const logs: string[] = [];

async function until<T>(probe: () => Promise<T | undefined>, what: string, timeoutMs = 15_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

async function seen(): Promise<Seen> {
  const response = await fetch(`${host.url}/api/seen`);
  return (await response.json()) as Seen;
}

const attemptsOf = async (id: string) => (await seen()).queue.filter((q) => q.message.id === id);

beforeAll(async () => {
  azurite = await startAzurite();
  dir = mkdtempSync(path.join(tmpdir(), 'dev-host-'));
  hostJson = path.join(dir, 'host.json');
  writeFileSync(
    hostJson,
    JSON.stringify({
      version: '2.0',
      extensions: {
        queues: { batchSize: 4, maxDequeueCount: MAX_DEQUEUE_COUNT, visibilityTimeout: '00:00:00' },
        http: { routePrefix: 'api' },
      },
    }),
  );
  host = await startDevHost({
    entry: FIXTURE,
    env: { AzureWebJobsStorage: azurite.connectionString, DEV_HOST_WORK_QUEUE: 'dev-host-work' },
    port: 0,
    hostJsonPath: hostJson,
    functionKey: KEY,
    pollIntervalMs: 200,
    log: (line) => logs.push(line),
  });
  const service = QueueServiceClient.fromConnectionString(azurite.connectionString);
  work = service.getQueueClient('dev-host-work');
  poison = service.getQueueClient('dev-host-work-poison');
});

afterAll(async () => {
  await host?.stop();
  await azurite?.stop();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

describe('registrations', () => {
  it('are the ones the entry registered with @azure/functions, normalised', () => {
    const summary = host.functions.map((fn) => {
      switch (fn.kind) {
        case 'http':
          return [fn.name, fn.kind, fn.route, fn.methods.join(','), fn.authLevel];
        case 'queue':
          return [fn.name, fn.kind, fn.queueName, fn.connection];
        case 'timer':
          return [fn.name, fn.kind, fn.schedule, fn.runOnStartup];
        default:
          return [fn.name, fn.kind];
      }
    });
    expect(summary).toEqual([
      ['getItem', 'http', 'items/{id}', 'GET', 'anonymous'],
      ['getThing', 'http', 'things/{id:guid}', 'GET', 'anonymous'],
      ['echo', 'http', 'echo', 'POST', 'function'],
      ['stream', 'http', 'stream', 'POST', 'anonymous'],
      ['boom', 'http', 'boom', 'GET', 'anonymous'],
      ['seen', 'http', 'seen', 'GET', 'anonymous'],
      ['work', 'queue', 'dev-host-work', 'AzureWebJobsStorage'],
      ['tick', 'timer', '0 0 0 1 1 *', false],
    ]);
    expect(host.functionUrl('echo')).toBe(`${host.url}/api/echo`);
  });
});

describe('HTTP', () => {
  it('routes with parameters and query, and gives the handler a context with a trace', async () => {
    const response = await fetch(`${host.url}/api/items/42?q=hello`, {
      headers: { traceparent: '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01' },
    });
    expect(response.status).toBe(200);
    expect(response.headers.get('content-type')).toBe('application/json');
    const body = (await response.json()) as Record<string, string>;
    expect(body).toMatchObject({ id: '42', q: 'hello', functionName: 'getItem' });
    expect(body.invocationId).toMatch(/^[0-9a-f-]{36}$/);
    // A child span of the caller's trace.
    expect(body.traceParent).toMatch(/^00-0af7651916cd43dd8448eb211c80319c-[0-9a-f]{16}-01$/);
    expect(body.traceParent).not.toContain('b7ad6b7169203331');
  });

  it('matches route constraints', async () => {
    const id = '6f1c1a4e-2b3d-4c5e-8f90-1a2b3c4d5e6f';
    const ok = await fetch(`${host.url}/api/things/${id}`);
    expect([ok.status, await ok.text()]).toEqual([200, `thing ${id}`]);
    expect((await fetch(`${host.url}/api/things/not-a-guid`)).status).toBe(404);
  });

  it('requires the function key for authLevel function: 401 without, 200 with (query or header)', async () => {
    const post = (url: string, headers: Record<string, string> = {}) =>
      fetch(url, { method: 'POST', headers: { 'content-type': 'application/json', ...headers }, body: '{"a":[1,2]}' });
    const missing = await post(`${host.url}/api/echo`);
    expect([missing.status, await missing.text()]).toEqual([401, '']);
    expect((await post(`${host.url}/api/echo?code=wrong`)).status).toBe(401);

    const withCode = await post(`${host.url}/api/echo?code=${KEY}`);
    expect(withCode.status).toBe(201);
    expect(withCode.headers.get('x-echo')).toBe('yes');
    expect(await withCode.json()).toEqual({ body: { a: [1, 2] }, contentLength: '11' });

    const withHeader = await post(`${host.url}/api/echo`, { 'x-functions-key': KEY });
    expect(withHeader.status).toBe(201);
  });

  it('streams the request body to the handler', async () => {
    const response = await fetch(`${host.url}/api/stream`, { method: 'POST', body: 'x'.repeat(200_000) });
    expect(await response.json()).toEqual({ bytes: 200_000, chunks: true });
  });

  it('answers 404 for an unknown route, a wrong method and a path outside the route prefix', async () => {
    for (const [url, method] of [
      [`${host.url}/api/nothing-here`, 'GET'],
      [`${host.url}/api/items/42`, 'POST'],
      [`${host.url}/items/42`, 'GET'],
    ] as const) {
      const response = await fetch(url, { method, ...(method === 'POST' ? { body: '{}' } : {}) });
      expect([url, method, response.status, await response.text()]).toEqual([url, method, 404, '']);
    }
  });

  it('turns a handler exception into a 500 with no body, and logs it', async () => {
    const response = await fetch(`${host.url}/api/boom`);
    expect(response.status).toBe(500);
    expect(await response.text()).toBe('');
    expect(logs.join('\n')).toContain('secret detail that must not reach the caller');
  });
});

describe('queue trigger', () => {
  it('delivers base64 and plain JSON messages as parsed objects, with trigger metadata, and deletes them', async () => {
    await work.sendMessage(Buffer.from(JSON.stringify({ id: 'b64' })).toString('base64'));
    await work.sendMessage(JSON.stringify({ id: 'plain' }));
    const [b64, plain] = [
      await until(async () => (await attemptsOf('b64'))[0], 'b64'),
      await until(async () => (await attemptsOf('plain'))[0], 'plain'),
    ];
    expect(b64.message).toEqual({ id: 'b64' });
    expect(plain.message).toEqual({ id: 'plain' });
    expect(b64.dequeueCount).toBe(1);
    expect(b64.id).toMatch(/^[0-9a-f-]{36}$/);
    expect(typeof b64.popReceipt).toBe('string');
    expect(Number.isNaN(Date.parse(b64.insertionTime))).toBe(false);
    // Success deletes: nothing is left, visible or not.
    await until(
      async () => ((await work.getProperties()).approximateMessagesCount === 0 ? true : undefined),
      'queue empty',
    );
  });

  it('retries a failing message with a growing dequeueCount, then succeeds', async () => {
    await work.sendMessage(Buffer.from(JSON.stringify({ id: 'flaky', failTimes: 1 })).toString('base64'));
    const attempts = await until(async () => {
      const found = await attemptsOf('flaky');
      return found.length >= 2 ? found : undefined;
    }, 'second attempt');
    expect(attempts.map((a) => a.dequeueCount)).toEqual([1, 2]);
  });

  it('moves a message to <queue>-poison after maxDequeueCount attempts', async () => {
    const text = Buffer.from(JSON.stringify({ id: 'poisoned', fail: true })).toString('base64');
    await work.sendMessage(text);
    const poisoned = await until(async () => {
      const exists = await poison.exists();
      const peeked = exists ? (await poison.peekMessages({ numberOfMessages: 32 })).peekedMessageItems : [];
      return peeked.find((m) => m.messageText === text);
    }, 'poison message');
    expect(JSON.parse(Buffer.from(poisoned.messageText, 'base64').toString('utf8'))).toEqual({
      id: 'poisoned',
      fail: true,
    });
    expect((await attemptsOf('poisoned')).map((a) => a.dequeueCount)).toEqual([1, 2, 3]);
    expect(logs.join('\n')).toContain(`has reached MaxDequeueCount of ${MAX_DEQUEUE_COUNT}`);
    await until(
      async () => ((await work.getProperties()).approximateMessagesCount === 0 ? true : undefined),
      'work queue empty',
    );
  });
});

describe('timer trigger', () => {
  it('runs on demand with the timer object the host passes', async () => {
    await host.runTimer('tick');
    const [timer] = (await seen()).timer;
    expect(timer?.isPastDue).toBe(false);
    // The yearly schedule's next occurrence, in UTC.
    expect(timer?.scheduleStatus.next).toMatch(/^\d{4}-01-01T00:00:00\.000Z$/);
    expect(logs.some((line) => line.includes('[tick] tick ran'))).toBe(true);
  });
});

describe('a bundled entry', () => {
  it('serves the registrations of an esbuild CommonJS bundle with @azure/functions-core external (as scripts/build.mjs builds)', async () => {
    const outfile = path.join(dir, 'bundle/index.js');
    await build({
      entryPoints: [FIXTURE],
      outfile,
      bundle: true,
      platform: 'node',
      target: 'node20',
      format: 'cjs',
      external: ['@azure/functions-core'],
      logLevel: 'silent',
    });
    const bundled = await startDevHost({
      entry: outfile,
      env: { AzureWebJobsStorage: azurite.connectionString, DEV_HOST_WORK_QUEUE: 'dev-host-bundle-work' },
      port: 0,
      hostJsonPath: hostJson,
      functionKey: KEY,
      log: () => undefined,
    });
    try {
      expect(bundled.functions.map((fn) => fn.name)).toEqual(host.functions.map((fn) => fn.name));
      expect(bundled.functions.find((fn) => fn.kind === 'queue')).toMatchObject({ queueName: 'dev-host-bundle-work' });
      const response = await fetch(`${bundled.url}/api/items/b?q=1`);
      expect(await response.json()).toMatchObject({ id: 'b', q: '1', functionName: 'getItem' });
      expect((await fetch(`${bundled.url}/api/echo`, { method: 'POST', body: '{}' })).status).toBe(401);
    } finally {
      await bundled.stop();
    }
  });
});
