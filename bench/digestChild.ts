/**
 * One part of the digest benchmark in a fresh process (so that its peak RSS is its own): `intake <items> <recipients>`
 * posts bulk requests to the app's handler of POST /api/digests/{digest}/items, `run` runs the digest once, and
 * `raw <entities> <partitions>` is the reference: the same number of single-entity inserts straight through the SDK
 * into a fresh table, to tell the emulator's cost per operation at that table size from the app's. Prints one JSON
 * line.
 */
import { TableClient } from '@azure/data-tables';
import { performance } from 'node:perf_hooks';
import { Progress } from '../dev/progress';
import { postDigestItems } from '../src/api/digests';
import { runApi } from '../src/api/runApi';
import { createAppServices } from '../src/appServices';
import { createLogger } from '../src/logger';

const RSS_SAMPLE_MS = 50;
const MiB = 1024 * 1024;
/** Bulk requests in flight at once, as several producers would send them. */
const INTAKE_CONCURRENCY = 4;
const PER_REQUEST = 1_000;
/** Requests in flight in the raw reference, as a run has recipients in flight. */
const RAW_CONCURRENCY = 16;

async function intake(items: number, recipients: number): Promise<Record<string, number>> {
  const rt = createAppServices(process.env, { logger: createLogger({ level: 'warn' }) });
  await rt.storage.ensureResources();
  const started = performance.now();
  let next = 0;
  let accepted = 0;
  // On stderr, which the parent relays: stdout carries the result.
  const progress = new Progress({ label: 'digest: intake', total: items, unit: 'items' });
  let duplicates = 0;
  await Promise.all(
    Array.from({ length: INTAKE_CONCURRENCY }, async () => {
      while (next < items) {
        const from = next;
        next += PER_REQUEST;
        const body = {
          items: Array.from({ length: Math.min(PER_REQUEST, items - from) }, (_, k) => {
            const i = from + k;
            return {
              // A producer posting each recipient's items together: at 100,000 items a request holds 100 recipients'
              // 10 items each (one transaction per recipient), at 10,000 one item each of 1,000 recipients.
              recipient: `bench${Math.floor((i * Math.min(items, recipients)) / items)}@example.com`,
              // Each size its own items: the tombstones of the size before would make them duplicates.
              item: { title: `Event ${i} of ${items}`, detail: `Something happened to order ${i}.`, at: '08:00' },
            };
          }),
        };
        const text = JSON.stringify(body);
        const url = 'http://127.0.0.1/api/digests/activity/items';
        const response = await runApi(
          postDigestItems,
          {
            method: 'POST',
            url,
            headers: new Headers({ 'content-type': 'application/json' }),
            query: new URL(url).searchParams,
            params: { digest: 'activity' },
            body: new Response(text).body,
          },
          () => rt,
        );
        if (response.status !== 202) throw new Error(`intake answered ${response.status}`);
        // Awaited before the sum is read: `accepted += await …` would add to a stale total.
        const answer = response.jsonBody as { accepted: number; duplicates: number };
        accepted += answer.accepted;
        duplicates += answer.duplicates;
        progress.update(accepted + duplicates);
      }
    }),
  );
  const wallMs = performance.now() - started;
  progress.done();
  await rt.close();
  return { items, accepted, duplicates, wallMs };
}

/**
 * The emulator's own cost for the same volume, without the app: `entities` small entities spread over `partitions`
 * partitions, written in one transaction per partition (as intake writes a recipient's items), then each partition
 * read once (as a run reads a recipient's items), 16 in flight, in a fresh table of the same Azurite.
 */
async function raw(entities: number, partitions: number): Promise<Record<string, number>> {
  const connection = process.env.AzureWebJobsStorage as string;
  const table = TableClient.fromConnectionString(connection, `Raw${entities}x${Date.now()}`, {
    allowInsecureConnection: true,
  });
  await table.createTable();
  const perPartition = Math.ceil(entities / partitions);
  const inFlight = async (count: number, work: (i: number) => Promise<unknown>) => {
    let next = 0;
    await Promise.all(
      Array.from({ length: RAW_CONCURRENCY }, async () => {
        while (next < count) await work(next++);
      }),
    );
  };
  const started = performance.now();
  await inFlight(partitions, (p) =>
    table.submitTransaction(
      Array.from({ length: Math.min(perPartition, entities - p * perPartition) }, (_, k) => [
        'create',
        { partitionKey: `p${p}`, rowKey: `r${k}`, item: `{"title":"Event ${p * perPartition + k}"}` },
      ]),
    ),
  );
  const writtenMs = performance.now() - started;
  let read = 0;
  await inFlight(partitions, async (p) => {
    for await (const page of table.listEntities({ queryOptions: { filter: `PartitionKey eq 'p${p}'` } }).byPage()) {
      read += page.length;
    }
  });
  const wallMs = performance.now() - started;
  await table.deleteTable();
  if (read !== entities) throw new Error(`raw reference read ${read} of ${entities}`);
  return { entities, writeMs: writtenMs, readMs: wallMs - writtenMs, wallMs };
}

/** Every 2 s: how many digests the run has accepted so far, read as the outbox queue's approximate length. */
const RUN_PROGRESS_MS = 2_000;

async function run(recipients: number): Promise<Record<string, number | string>> {
  const rt = createAppServices(process.env, { logger: createLogger({ level: 'warn' }) });
  await rt.storage.ensureResources();
  global.gc?.();
  const baselineRss = process.memoryUsage().rss;
  // RSS with heap and external buffers at the highest sample: where the memory was.
  let peak = process.memoryUsage();
  const sample = () => {
    const m = process.memoryUsage();
    if (m.rss >= peak.rss) peak = m;
  };
  const sampler = setInterval(sample, RSS_SAMPLE_MS);
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
  sample();
  let pending = 0;
  // Rows kept for their tombstones only (items: 0) are not pending.
  for await (const page of rt.digests.store.pendingRecipients('activity'))
    pending += page.filter((r) => r.items !== 0).length;
  await rt.close();
  return {
    outcome: report.outcome,
    recipients: report.run?.recipients ?? 0,
    items: report.run?.items ?? 0,
    omitted: report.run?.omitted ?? 0,
    pending,
    wallMs,
    baselineRssMiB: baselineRss / MiB,
    peakRssMiB: peak.rss / MiB,
    peakHeapUsedMiB: peak.heapUsed / MiB,
    peakHeapTotalMiB: peak.heapTotal / MiB,
    peakExternalMiB: peak.external / MiB,
  };
}

async function main(): Promise<void> {
  const [mode, a, b] = process.argv.slice(2);
  const result =
    mode === 'intake'
      ? await intake(Number(a), Number(b))
      : mode === 'raw'
        ? await raw(Number(a), Number(b))
        : await run(Number(a ?? 0));
  process.stdout.write(`${JSON.stringify(result)}\n`);
  process.exit(0);
}

main().catch((error: unknown) => {
  process.stderr.write(`${error instanceof Error ? (error.stack ?? error.message) : String(error)}\n`);
  process.exit(1);
});
