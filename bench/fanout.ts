/** Batch fan-out: a 10,000-recipient notification batch into the outbox against Azurite, in a fresh process: wall time and peak RSS. */
import { execFile } from 'node:child_process';
import { rmSync } from 'node:fs';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { TableClient, type TransactionAction } from '@azure/data-tables';
import { QueueClient } from '@azure/storage-queue';
import { Progress } from '../dev/progress';
import { runBounded } from '../src/runBounded';
import { bundleBenchChild } from './bundleChild';

export interface FanoutFigures {
  recipients: number;
  /** From POST-equivalent submit to the last chunk recorded: every outbox record exists. */
  wallMs: number;
  perRecipientMs: number;
  /** CPU time of the fan-out process (user + system) per recipient: what the app itself costs, the rest is waiting. */
  cpuPerRecipientMs: number;
  recipientsPerSec: number;
  /** The submit alone (blob + summary + queue reference): what POST /api/notifications waits for. */
  acceptMs: number;
  /** Queue invocations (chunks, plus the warm-up's none) and the slowest one, against functionTimeout (10 min). */
  invocations: number;
  maxChunkMs: number;
  /** One GET /api/notifications/{batchId}: the summary plus the counts query over MailStatus. */
  countQueryMs: number;
  /** Resident set size of the fan-out process: before the batch, and the highest sample (every 50 ms) during it. */
  baselineRssMiB: number;
  peakRssMiB: number;
  /**
   * The emulator's own cost for what a recipient is in storage, measured right after in the same Azurite: as many
   * queue messages (32 in flight, as the fan-out writes them) and entities of the same size in Table transactions of
   * 100 into one partition (a batch's records share one), written with the SDK alone into a fresh queue and table.
   * Per recipient.
   */
  rawReferencePerRecipientMs: number;
  /** perRecipientMs over rawReferencePerRecipientMs: the app's cost in units of the emulator's. */
  perRecipientOverReference: number;
}

/** The Azure SDK alone writing what `recipients` fan-out recipients are in storage; resolves to the wall time in ms. */
async function rawReference(connectionString: string, recipients: number): Promise<number> {
  const name = `benchfanoutref${Date.now()}`;
  const queue = new QueueClient(connectionString, name);
  const table = TableClient.fromConnectionString(connectionString, name, { allowInsecureConnection: true });
  await Promise.all([queue.create(), table.createTable()]);
  // About the size of a notification's record with its rendered content inline.
  const content = 'x'.repeat(2_000);
  const progress = new Progress({ label: 'fanout: raw reference', total: recipients * 2, unit: 'writes' });
  // The queue and table stay until Azurite stops (it keeps them in memory): a run that deleted them met the next
  // size's first request unanswered for 30 s while the emulator was busy.
  const started = performance.now();
  await runBounded(recipients, 32, async (i) => {
    await queue.sendMessage(Buffer.from(JSON.stringify({ id: `ref-${i}` })).toString('base64'));
    progress.tick();
  });
  const transactions = Math.ceil(recipients / 100);
  await runBounded(transactions, 4, async (t) => {
    const actions: TransactionAction[] = [];
    for (let i = t * 100; i < Math.min(recipients, (t + 1) * 100); i++) {
      // One partition, as a batch's records are (`b~<batchId>`, one row per recipient).
      actions.push(['create', { partitionKey: 'b~ref', rowKey: `r${i}`, status: 'queued', content0: content }]);
    }
    await table.submitTransaction(actions);
    progress.tick(actions.length);
  });
  const wallMs = performance.now() - started;
  progress.done();
  return wallMs;
}

const ROOT = path.resolve(__dirname, '..');
const round = (n: number, digits = 1) => Math.round(n * 10 ** digits) / 10 ** digits;

/**
 * Fans out one batch of `options.recipients` (fan-out only: the outbox messages are not delivered) in a child
 * process with `env` (the app settings: MAIL_* and AzureWebJobsStorage pointing at Azurite), and checks that every
 * recipient got its outbox record. The child is bundled like the app and runs under plain `node`, as the Functions
 * host runs the app (bench/bundleChild.ts).
 */
export async function runFanoutBench(
  env: Record<string, string | undefined>,
  options: { recipients: number },
): Promise<FanoutFigures> {
  const bundled = await bundleBenchChild('bench/fanoutChild.ts');
  const output = await new Promise<string>((resolve, reject) => {
    const child = execFile(
      process.execPath,
      ['--expose-gc', bundled.file, String(options.recipients)],
      {
        cwd: ROOT,
        env: {
          PATH: process.env.PATH ?? '',
          ...Object.fromEntries(Object.entries(env).filter((e): e is [string, string] => e[1] !== undefined)),
          // The child's progress line, relayed to this terminal as it comes.
          PROGRESS_TTY: process.stderr.isTTY ? '1' : '0',
        },
        encoding: 'utf8',
        maxBuffer: 16 * 1024 * 1024,
        timeout: 45 * 60 * 1000,
      },
      (error, stdout, stderr) =>
        error ? reject(new Error(`fan-out bench failed: ${stderr || error.message}`)) : resolve(stdout),
    );
    child.stderr?.on('data', (chunk: string) => process.stderr.write(chunk));
  }).finally(() => rmSync(bundled.dir, { recursive: true, force: true }));
  const r = JSON.parse(output.trim().split('\n').at(-1) as string) as Record<string, number | string>;
  if (r.status !== 'complete' || r.records !== options.recipients || r.accepted !== options.recipients) {
    throw new Error(`fan-out bench: the batch did not complete with every record: ${JSON.stringify(r)}`);
  }
  const wallMs = Number(r.wallMs);
  const referenceMs = await rawReference(env.AzureWebJobsStorage as string, options.recipients);
  const perRecipientMs = wallMs / options.recipients;
  const rawReferencePerRecipientMs = referenceMs / options.recipients;
  return {
    recipients: options.recipients,
    wallMs: Math.round(wallMs),
    perRecipientMs: round(wallMs / options.recipients, 2),
    cpuPerRecipientMs: round(Number(r.cpuMs) / options.recipients, 2),
    recipientsPerSec: Math.round(options.recipients / (wallMs / 1000)),
    acceptMs: Math.round(Number(r.acceptedMs)),
    invocations: Number(r.invocations),
    maxChunkMs: Math.round(Number(r.maxChunkMs)),
    countQueryMs: Math.round(Number(r.countQueryMs)),
    baselineRssMiB: round(Number(r.baselineRssMiB)),
    peakRssMiB: round(Number(r.peakRssMiB)),
    rawReferencePerRecipientMs: round(rawReferencePerRecipientMs, 2),
    perRecipientOverReference: round(perRecipientMs / rawReferencePerRecipientMs, 2),
  };
}
