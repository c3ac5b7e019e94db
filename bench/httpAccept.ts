/** HTTP accept latency: POST /api/messages at 50 concurrent requests through the dev host against Azurite, with GET status as the reference. */
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { startDevHost } from '../dev/host';
import { Progress } from '../dev/progress';

export interface HttpAcceptFigures {
  requests: number;
  concurrency: number;
  post: { p50Ms: number; p99Ms: number; perSec: number };
  get: { p50Ms: number; p99Ms: number; perSec: number };
  ratioPostVsGetP50: number;
}

function percentile(values: number[], p: number): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)] as number;
}

async function load(label: string, count: number, concurrency: number, request: (i: number) => Promise<void>) {
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

/** Starts a dev host on the built bundle with `env`, then measures. The outbox worker runs too, as in production. */
export async function runHttpAcceptBench(
  env: Record<string, string>,
  options: { requests?: number; concurrency?: number } = {},
): Promise<HttpAcceptFigures> {
  const requests = options.requests ?? 1000;
  const concurrency = options.concurrency ?? 50;
  const host = await startDevHost({
    entry: path.resolve(__dirname, '../dist/functions/index.js'),
    env,
    port: 0,
    log: () => {},
  });
  try {
    const url = `${host.url}/api/messages?code=${host.functionKey}`;
    const ids: string[] = [];
    const post = async (i: number) => {
      const response = await fetch(url, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({
          to: `load${i}@example.com`,
          subject: `Load ${i}`,
          text: 'Accept latency benchmark.',
          sendAt: new Date(Date.now() + 86_400_000).toISOString(),
        }),
      });
      if (response.status !== 202) throw new Error(`POST answered ${response.status}: ${await response.text()}`);
      ids.push(((await response.json()) as { id: string }).id);
    };
    // Warm-up: storage resources, JIT.
    await load('warm-up POSTs', 50, 10, post);
    const postFigures = await load(`POST /api/messages, ${concurrency} concurrent`, requests, concurrency, post);
    const get = async (i: number) => {
      const response = await fetch(`${host.url}/api/messages/${ids[i % ids.length]}?code=${host.functionKey}`);
      if (response.status !== 200) throw new Error(`GET answered ${response.status}`);
      await response.arrayBuffer();
    };
    const getFigures = await load(`GET /api/messages/{id}, ${concurrency} concurrent`, requests, concurrency, get);
    return {
      requests,
      concurrency,
      post: postFigures,
      get: getFigures,
      ratioPostVsGetP50: Math.round((postFigures.p50Ms / getFigures.p50Ms) * 100) / 100,
    };
  } finally {
    await host.stop();
  }
}
