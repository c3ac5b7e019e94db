/**
 * HTTP accept throughput and latency: POST /api/messages at 50 concurrent requests through the dev host against
 * Azurite, beside the floors measured in the same run with the Azure SDK alone at the same concurrency (one table
 * insert and one queue send per request; and blob + table + queue), with GET status as a reference.
 */
import { spawn } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { once } from 'node:events';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { performance } from 'node:perf_hooks';
import { TableClient } from '@azure/data-tables';
import { QueueClient } from '@azure/storage-queue';
import { BlobServiceClient } from '@azure/storage-blob';
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
  /**
   * The same two writes behind a bare `node:http` server in a process of its own (bench/rawAcceptChild.ts): the
   * floor of any HTTP front to them on this machine, without validation, rendering or the Functions model.
   */
  httpTwoWrites: LoadFigures;
  /** The Azure SDK alone: blob upload + table insert + queue send per request (the layout before). */
  rawThreeWrites: LoadFigures;
  ratioPostVsGetP50: number;
  /** POST req/s over the two-write floor's. */
  ratioPostVsTwoWrites: number;
  ratioPostVsThreeWrites: number;
  /** POST req/s over the HTTP floor's. */
  ratioPostVsHttpTwoWrites: number;
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

interface HostProcess {
  url: string;
  functionKey: string;
  stop(): Promise<void>;
}

/**
 * A server in a child process with `env`: `script` (under bench/) prints one JSON line with its `url` (and the dev
 * host its `functionKey`) when it listens, and stops when its stdin closes. The dev host runs this way
 * (bench/devHostChild.ts) because the Functions host is a process of its own: the load generator's 50 concurrent
 * requests must not run on the app's event loop. `BENCH_HOST_NODE_ARGS` adds Node flags to the children (e.g.
 * `--cpu-prof --cpu-prof-dir=/tmp/prof`).
 */
async function startServerProcess(script: string, env: Record<string, string>): Promise<HostProcess> {
  const root = path.resolve(__dirname, '..');
  const extra = (process.env.BENCH_HOST_NODE_ARGS ?? '').split(' ').filter(Boolean);
  const child = spawn(process.execPath, [...extra, '--import', 'tsx', path.join(__dirname, script)], {
    cwd: root,
    env: { ...process.env, ...env },
    // Its stdin is the parent's lifeline: the child stops when it closes (a bench that dies takes its host along).
    stdio: ['pipe', 'pipe', 'inherit'],
  });
  const exited = once(child, 'exit');
  const lines = createInterface({ input: child.stdout });
  const ready = await Promise.race([
    (async () => {
      for await (const line of lines) return JSON.parse(line) as { url: string; functionKey?: string };
      throw new Error(`${script} closed its output before it was ready`);
    })(),
    exited.then(([code]) => {
      throw new Error(`${script} exited with ${String(code)} before it was ready`);
    }),
  ]);
  return {
    url: ready.url,
    functionKey: ready.functionKey ?? '',
    stop: async () => {
      if (child.exitCode === null) child.kill('SIGTERM');
      await exited;
    },
  };
}

/**
 * Starts a dev host on the built bundle with `env` in its own process, then measures. The outbox worker runs too, as
 * in production.
 */
export async function runHttpAcceptBench(
  env: Record<string, string>,
  options: { requests?: number; concurrency?: number; rounds?: number } = {},
): Promise<HttpAcceptFigures> {
  const requests = options.requests ?? 1000;
  const concurrency = options.concurrency ?? 50;
  const rounds = options.rounds ?? 3;
  const connectionString = env.AzureWebJobsStorage as string;
  const host = await startServerProcess('devHostChild.ts', env);
  const floor = await startServerProcess('rawAcceptChild.ts', env);
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
    const httpFloor = async (i: number) => {
      const response = await fetch(floor.url, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify(body(i)),
      });
      if (response.status !== 202) throw new Error(`the HTTP floor answered ${response.status}`);
      await response.arrayBuffer();
    };
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
    // Warm-up at full concurrency: storage resources, JIT (the first few hundred requests run slower), connections.
    const warm = Math.min(requests, 500);
    await load('warm-up POSTs', warm, concurrency, post);
    await load('warm-up HTTP + raw table + queue', warm, concurrency, httpFloor);
    await load('warm-up raw table + queue', warm, concurrency, twoWrites);
    await load('warm-up raw blob + table + queue', warm, concurrency, threeWrites);
    const posts: LoadFigures[] = [];
    const twos: LoadFigures[] = [];
    const httpTwos: LoadFigures[] = [];
    const threes: LoadFigures[] = [];
    for (let round = 0; round < rounds; round++) {
      posts.push(await load(`round ${round + 1}/${rounds}: POST /api/messages`, requests, concurrency, post));
      httpTwos.push(
        await load(`round ${round + 1}/${rounds}: HTTP + raw table + queue`, requests, concurrency, httpFloor),
      );
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
    const httpTwoWrites = median(httpTwos);
    const rawThreeWrites = median(threes);
    return {
      requests,
      concurrency,
      rounds,
      post: postFigures,
      get: getFigures,
      rawTwoWrites,
      httpTwoWrites,
      rawThreeWrites,
      ratioPostVsGetP50: ratio(postFigures.p50Ms, getFigures.p50Ms),
      ratioPostVsTwoWrites: ratio(postFigures.perSec, rawTwoWrites.perSec),
      ratioPostVsThreeWrites: ratio(postFigures.perSec, rawThreeWrites.perSec),
      ratioPostVsHttpTwoWrites: ratio(postFigures.perSec, httpTwoWrites.perSec),
      ratioPostP99VsP50: ratio(postFigures.p99Ms, postFigures.p50Ms),
    };
  } finally {
    await Promise.all([host.stop(), floor.stop()]);
    await Promise.allSettled([table.deleteTable(), queue.deleteIfExists(), container.deleteIfExists()]);
  }
}
