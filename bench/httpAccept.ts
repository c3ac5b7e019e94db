/**
 * HTTP accept throughput and latency: POST /api/messages at 50 concurrent requests through the dev host against
 * Azurite, beside the floors measured in the same run with the Azure SDK alone at the same concurrency (one table
 * insert and one queue send per request; and blob + table + queue), with GET status as a reference.
 */
import { randomUUID } from 'node:crypto';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { TableClient } from '@azure/data-tables';
import { QueueClient } from '@azure/storage-queue';
import { BlobServiceClient } from '@azure/storage-blob';
import { startDevHost } from '../dev/host';
import { Progress } from '../dev/progress';

export interface LoadFigures {
  p50Ms: number;
  p99Ms: number;
  perSec: number;
}

export interface HttpAcceptFigures {
  requests: number;
  concurrency: number;
  /** Rounds of POST, two-write floor and three-write floor, interleaved; each figure is the median round (by req/s). */
  rounds: number;
  post: LoadFigures;
  get: LoadFigures;
  /** The Azure SDK alone: one table insert + one queue send per request (the durable minimum of an accept). */
  rawTwoWrites: LoadFigures;
  /** The Azure SDK alone: blob upload + table insert + queue send per request (the layout before). */
  rawThreeWrites: LoadFigures;
  ratioPostVsGetP50: number;
  /** POST req/s over the two-write floor's. */
  ratioPostVsTwoWrites: number;
  ratioPostVsThreeWrites: number;
  /** POST p99 over its p50. */
  ratioPostP99VsP50: number;
}

function percentile(values: number[], p: number): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)] as number;
}

async function load(
  label: string,
  count: number,
  concurrency: number,
  request: (i: number) => Promise<void>,
): Promise<LoadFigures> {
  const progress = new Progress({ label: `http: ${label}`, total: count, unit: 'requests' });
  const latencies: number[] = [];
  let next = 0;
  const started = performance.now();
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (next < count) {
        const i = next++;
        const t0 = performance.now();
        await request(i);
        latencies.push(performance.now() - t0);
        progress.tick();
      }
    }),
  );
  const seconds = (performance.now() - started) / 1000;
  progress.done();
  const r = (n: number) => Math.round(n * 10) / 10;
  return { p50Ms: r(percentile(latencies, 50)), p99Ms: r(percentile(latencies, 99)), perSec: r(count / seconds) };
}

/** The round whose req/s is the median. */
function median(runs: LoadFigures[]): LoadFigures {
  return [...runs].sort((a, b) => a.perSec - b.perSec)[Math.floor(runs.length / 2)] as LoadFigures;
}

const ratio = (a: number, b: number) => Math.round((a / b) * 100) / 100;

/** Starts a dev host on the built bundle with `env`, then measures. The outbox worker runs too, as in production. */
export async function runHttpAcceptBench(
  env: Record<string, string>,
  options: { requests?: number; concurrency?: number; rounds?: number } = {},
): Promise<HttpAcceptFigures> {
  const requests = options.requests ?? 1000;
  const concurrency = options.concurrency ?? 50;
  const rounds = options.rounds ?? 3;
  const connectionString = env.AzureWebJobsStorage as string;
  const host = await startDevHost({
    entry: path.resolve(__dirname, '../dist/functions/index.js'),
    env,
    port: 0,
    log: () => {},
  });
  // The floors write to their own table, queue and container, shaped like an accept's writes.
  const table = TableClient.fromConnectionString(connectionString, 'BenchFloor', { allowInsecureConnection: true });
  const queue = new QueueClient(connectionString, 'bench-floor');
  const container = BlobServiceClient.fromConnectionString(connectionString).getContainerClient('bench-floor');
  await Promise.all([table.createTable(), queue.createIfNotExists(), container.createIfNotExists()]);
  try {
    const url = `${host.url}/api/messages?code=${host.functionKey}`;
    const ids: string[] = [];
    const body = (i: number) => ({
      to: `load${i}@example.com`,
      subject: `Load ${i}`,
      text: 'Accept latency benchmark.',
      sendAt: new Date(Date.now() + 86_400_000).toISOString(),
    });
    const post = async (i: number) => {
      const response = await fetch(url, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify(body(i)),
      });
      if (response.status !== 202) throw new Error(`POST answered ${response.status}: ${await response.text()}`);
      ids.push(((await response.json()) as { id: string }).id);
    };
    // What an accept writes for this body: a record with the rendered message inline, and { id } on the queue.
    const content = JSON.stringify({ version: 1, message: { ...body(0), headers: {}, attachments: [] } }).repeat(2);
    const record = (id: string) => ({
      partitionKey: id,
      rowKey: 'status',
      status: 'scheduled',
      source: 'http',
      attempts: 0,
      createdAt: new Date().toISOString(),
      dueAt: new Date().toISOString(),
      scheduledFor: new Date().toISOString(),
      payloadHash: 'f'.repeat(64),
    });
    const message = (id: string) => Buffer.from(JSON.stringify({ id })).toString('base64');
    const twoWrites = async () => {
      const id = randomUUID();
      await table.createEntity({ ...record(id), content0: content });
      await queue.sendMessage(message(id), { visibilityTimeout: 86_400, messageTimeToLive: -1 });
    };
    const threeWrites = async () => {
      const id = randomUUID();
      await container.getBlockBlobClient(`${id}.json`).uploadData(Buffer.from(content), {
        conditions: { ifNoneMatch: '*' },
      });
      await queue.sendMessage(message(id), { visibilityTimeout: 86_400, messageTimeToLive: -1 });
      await table.createEntity(record(id));
    };
    // Warm-up: storage resources, JIT, connections.
    await load('warm-up POSTs', 50, 10, post);
    await load('warm-up raw table + queue', 50, 10, twoWrites);
    await load('warm-up raw blob + table + queue', 50, 10, threeWrites);
    const posts: LoadFigures[] = [];
    const twos: LoadFigures[] = [];
    const threes: LoadFigures[] = [];
    for (let round = 0; round < rounds; round++) {
      posts.push(await load(`round ${round + 1}/${rounds}: POST /api/messages`, requests, concurrency, post));
      twos.push(await load(`round ${round + 1}/${rounds}: raw table + queue`, requests, concurrency, twoWrites));
      threes.push(
        await load(`round ${round + 1}/${rounds}: raw blob + table + queue`, requests, concurrency, threeWrites),
      );
    }
    const get = async (i: number) => {
      const response = await fetch(`${host.url}/api/messages/${ids[i % ids.length]}?code=${host.functionKey}`);
      if (response.status !== 200) throw new Error(`GET answered ${response.status}`);
      await response.arrayBuffer();
    };
    const getFigures = await load(`GET /api/messages/{id}, ${concurrency} concurrent`, requests, concurrency, get);
    const postFigures = median(posts);
    const rawTwoWrites = median(twos);
    const rawThreeWrites = median(threes);
    return {
      requests,
      concurrency,
      rounds,
      post: postFigures,
      get: getFigures,
      rawTwoWrites,
      rawThreeWrites,
      ratioPostVsGetP50: ratio(postFigures.p50Ms, getFigures.p50Ms),
      ratioPostVsTwoWrites: ratio(postFigures.perSec, rawTwoWrites.perSec),
      ratioPostVsThreeWrites: ratio(postFigures.perSec, rawThreeWrites.perSec),
      ratioPostP99VsP50: ratio(postFigures.p99Ms, postFigures.p50Ms),
    };
  } finally {
    await host.stop();
    await Promise.allSettled([table.deleteTable(), queue.deleteIfExists(), container.deleteIfExists()]);
  }
}
