/**
 * One half of the digest benchmark in a fresh process (so that its peak RSS is its own): `intake <items> <recipients>`
 * stores items over HTTP-equivalent bulk requests, `run` runs the digest once. Prints one JSON line.
 */
import { performance } from 'node:perf_hooks';
import { Progress } from '../dev/progress';
import { createAppServices } from '../src/appServices';
import { createLogger } from '../src/logger';

const RSS_SAMPLE_MS = 50;
const MiB = 1024 * 1024;
/** Bulk requests in flight at once, as several producers would send them. */
const INTAKE_CONCURRENCY = 4;
const PER_REQUEST = 1_000;

async function intake(items: number, recipients: number): Promise<Record<string, number>> {
  const rt = createAppServices(process.env, { logger: createLogger({ level: 'warn' }) });
  await rt.storage.ensureResources();
  const started = performance.now();
  let next = 0;
  let accepted = 0;
  // On stderr, which the parent relays: stdout carries the result.
  const progress = new Progress({ label: 'digest: intake', total: items, unit: 'items' });
  await Promise.all(
    Array.from({ length: INTAKE_CONCURRENCY }, async () => {
      while (next < items) {
        const from = next;
        next += PER_REQUEST;
        const body = {
          items: Array.from({ length: Math.min(PER_REQUEST, items - from) }, (_, k) => {
            const i = from + k;
            return {
              recipient: `bench${i % recipients}@example.com`,
              item: { title: `Event ${i}`, detail: `Something happened to order ${i}.`, at: '08:00' },
            };
          }),
        };
        // Awaited before the sum is read: `accepted += await …` would add to a stale total.
        const result = await rt.digests.submit('activity', body);
        accepted += result.accepted;
        progress.update(accepted);
      }
    }),
  );
  const wallMs = performance.now() - started;
  progress.done();
  await rt.close();
  return { items, accepted, wallMs };
}

/** Every 2 s: how many digests the run has accepted so far, read as the outbox queue's approximate length. */
const RUN_PROGRESS_MS = 2_000;

async function run(recipients: number): Promise<Record<string, number | string>> {
  const rt = createAppServices(process.env, { logger: createLogger({ level: 'warn' }) });
  await rt.storage.ensureResources();
  global.gc?.();
  const baselineRss = process.memoryUsage().rss;
  let peakRss = baselineRss;
  const sampler = setInterval(() => {
    peakRss = Math.max(peakRss, process.memoryUsage().rss);
  }, RSS_SAMPLE_MS);
  const queued = async () => (await rt.storage.outboxQueue.getProperties()).approximateMessagesCount ?? 0;
  const before = await queued();
  const progress = new Progress({ label: 'digest: run, digests accepted', total: recipients, unit: 'digests' });
  const watcher = setInterval(() => {
    queued().then(
      (n) => progress.update(n - before),
      () => undefined,
    );
  }, RUN_PROGRESS_MS);
  const started = performance.now();
  const report = await rt.digests.run('activity');
  const wallMs = performance.now() - started;
  clearInterval(watcher);
  progress.update(report.run?.recipients ?? 0);
  progress.done();
  clearInterval(sampler);
  peakRss = Math.max(peakRss, process.memoryUsage().rss);
  let pending = 0;
  for await (const page of rt.digests.store.pendingRecipients('activity')) pending += page.length;
  await rt.close();
  return {
    outcome: report.outcome,
    recipients: report.run?.recipients ?? 0,
    items: report.run?.items ?? 0,
    omitted: report.run?.omitted ?? 0,
    pending,
    wallMs,
    baselineRssMiB: baselineRss / MiB,
    peakRssMiB: peakRss / MiB,
  };
}

async function main(): Promise<void> {
  const [mode, a, b] = process.argv.slice(2);
  const result = mode === 'intake' ? await intake(Number(a), Number(b)) : await run(Number(a ?? 0));
  process.stdout.write(`${JSON.stringify(result)}\n`);
  process.exit(0);
}

main().catch((error: unknown) => {
  process.stderr.write(`${error instanceof Error ? (error.stack ?? error.message) : String(error)}\n`);
  process.exit(1);
});
