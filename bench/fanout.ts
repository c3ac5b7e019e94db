/** Batch fan-out: a 10,000-recipient notification batch into the outbox against Azurite, in a fresh process: wall time and peak RSS. */
import { execFile } from 'node:child_process';
import path from 'node:path';

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
}

const ROOT = path.resolve(__dirname, '..');
const round = (n: number, digits = 1) => Math.round(n * 10 ** digits) / 10 ** digits;

/**
 * Fans out one batch of `options.recipients` (fan-out only: the outbox messages are not delivered) in a child
 * process with `env` (the app settings: MAIL_* and AzureWebJobsStorage pointing at Azurite), and checks that every
 * recipient got its outbox record.
 */
export async function runFanoutBench(
  env: Record<string, string | undefined>,
  options: { recipients: number },
): Promise<FanoutFigures> {
  const output = await new Promise<string>((resolve, reject) => {
    const child = execFile(
      process.execPath,
      ['--expose-gc', '--import', 'tsx', path.join(ROOT, 'bench/fanoutChild.ts'), String(options.recipients)],
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
  });
  const r = JSON.parse(output.trim().split('\n').at(-1) as string) as Record<string, number | string>;
  if (r.status !== 'complete' || r.records !== options.recipients || r.accepted !== options.recipients) {
    throw new Error(`fan-out bench: the batch did not complete with every record: ${JSON.stringify(r)}`);
  }
  const wallMs = Number(r.wallMs);
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
  };
}
