/** One fan-out run in a fresh process (so that its peak RSS is the fan-out's own): submit a batch, play the queue host, report. */
import { performance } from 'node:perf_hooks';
import { Progress } from '../dev/progress';
import { createLogger } from '../src/logger';
import { createAppServices } from '../src/appServices';

/** How often the resident set size is sampled. */
const RSS_SAMPLE_MS = 50;
const MiB = 1024 * 1024;

async function main(): Promise<void> {
  const recipients = Number(process.argv[2]);
  if (!Number.isSafeInteger(recipients) || recipients < 1) throw new Error('usage: fanoutChild <recipients>');
  const rt = createAppServices(process.env, { logger: createLogger({ level: 'warn' }) });
  await rt.storage.ensureResources();
  const batch = {
    template: 'notification',
    data: { paragraphs: ['Scheduled maintenance on Saturday from 06:00 to 08:00 UTC.', 'Nothing to do on your side.'] },
    recipients: Array.from({ length: recipients }, (_, i) => ({
      to: `bench${i}@example.com`,
      data: { title: `Maintenance notice for customer ${i}` },
    })),
  };
  const queue = rt.storage.notificationsQueue;
  // Warm-up: JIT, template compilation, connections (a 1-recipient batch, not measured).
  await rt.notifications.submit({ ...batch, recipients: batch.recipients.slice(0, 1) });
  for (const m of (await queue.receiveMessages({ numberOfMessages: 32 })).receivedMessageItems) {
    await rt.notifications.handleMessage(m.messageText);
    await queue.deleteMessage(m.messageId, m.popReceipt);
  }

  global.gc?.();
  const baselineRss = process.memoryUsage().rss;
  let peakRss = baselineRss;
  const sampler = setInterval(() => {
    peakRss = Math.max(peakRss, process.memoryUsage().rss);
  }, RSS_SAMPLE_MS);

  const started = performance.now();
  const cpuBefore = process.cpuUsage();
  const { batchId } = await rt.notifications.submit(batch);
  const acceptedMs = performance.now() - started;
  let invocations = 0;
  const chunkMs: number[] = [];
  // On stderr, which the parent relays: stdout carries the result.
  const progress = new Progress({ label: 'fanout: recipients into the outbox', total: recipients, unit: 'recipients' });
  // Plays the Functions host: one consumer, as the chunks of one batch run one after another anyway.
  for (;;) {
    const received = await queue.receiveMessages({ numberOfMessages: 4, visibilityTimeout: 600 });
    if (received.receivedMessageItems.length === 0) {
      const view = await rt.notifications.view(batchId);
      if (view?.status === 'complete' || view?.status === 'failed') break;
      continue;
    }
    for (const m of received.receivedMessageItems) {
      const t0 = performance.now();
      await rt.notifications.handleMessage(m.messageText, { onChunk: (p) => progress.update(p.processed) });
      chunkMs.push(performance.now() - t0);
      invocations += 1;
      await queue.deleteMessage(m.messageId, m.popReceipt);
    }
  }
  const wallMs = performance.now() - started;
  progress.done();
  const cpu = process.cpuUsage(cpuBefore);
  clearInterval(sampler);
  peakRss = Math.max(peakRss, process.memoryUsage().rss);

  // The proof that every outbox record exists, and what GET's counts query costs at this size.
  const countStarted = performance.now();
  const view = await rt.notifications.view(batchId);
  const countQueryMs = performance.now() - countStarted;
  const records = Object.values(view?.counts ?? {}).reduce((a, b) => a + b, 0);
  const outboxMessages = (await rt.storage.outboxQueue.getProperties()).approximateMessagesCount ?? 0;
  await rt.close();
  process.stdout.write(
    `${JSON.stringify({
      recipients,
      status: view?.status,
      accepted: view?.accepted,
      records,
      outboxMessages,
      wallMs,
      cpuMs: (cpu.user + cpu.system) / 1000,
      acceptedMs,
      invocations,
      maxChunkMs: Math.max(...chunkMs),
      countQueryMs,
      baselineRssMiB: baselineRss / MiB,
      peakRssMiB: peakRss / MiB,
      maxRssMiB: (process.resourceUsage().maxRSS * 1024) / MiB,
    })}\n`,
  );
  process.exit(0);
}

main().catch((error: unknown) => {
  process.stderr.write(`${error instanceof Error ? (error.stack ?? error.message) : String(error)}\n`);
  process.exit(1);
});
