/**
 * Scheduled digests at scale: items over 10,000 recipients stored through intake, then one run of the digest (each
 * recipient's digest accepted into the outbox, the items deleted) against Azurite, in fresh processes. Delivery is not
 * part of it. Two sizes side by side, so that the time per item can be compared.
 */
import { execFile } from 'node:child_process';
import path from 'node:path';

export interface DigestSizeFigures {
  items: number;
  recipients: number;
  intakeMs: number;
  runMs: number;
  /** Intake and run, per item. */
  perItemMs: number;
  runBaselineRssMiB: number;
  runPeakRssMiB: number;
  /** At the run's highest RSS sample: V8's heap in use and reserved, and buffers outside it. */
  runPeakHeapUsedMiB: number;
  runPeakHeapTotalMiB: number;
  runPeakExternalMiB: number;
  /** The reference: as many single-entity SDK inserts into a fresh table of the same Azurite, per entity. */
  rawPerEntityMs: number;
  /** perItemMs over rawPerEntityMs: the app's cost in units of the emulator's own cost at this size. */
  perItemOverRaw: number;
}

export interface DigestFigures {
  sizes: DigestSizeFigures[];
  /** Time per item at the largest size over the smallest: flat or falling is the target. */
  perItemRatio: number;
  /** The same ratio of perItemOverRaw: the app's flatness with the emulator's own growth taken out. */
  perItemOverRawRatio: number;
}

const ROOT = path.resolve(__dirname, '..');
const round = (n: number, digits = 1) => Math.round(n * 10 ** digits) / 10 ** digits;

function child(env: Record<string, string | undefined>, args: string[]): Promise<Record<string, number | string>> {
  return new Promise((resolve, reject) => {
    const running = execFile(
      process.execPath,
      ['--expose-gc', '--import', 'tsx', path.join(ROOT, 'bench/digestChild.ts'), ...args],
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
        timeout: 60 * 60 * 1000,
      },
      (error, stdout, stderr) =>
        error
          ? reject(new Error(`digest bench failed: ${stderr || error.message}`))
          : resolve(JSON.parse(stdout.trim().split('\n').at(-1) as string) as Record<string, number | string>),
    );
    // The child's progress lines as they come: the largest size runs long against Azurite.
    running.stderr?.on('data', (chunk: string) => process.stderr.write(chunk));
  });
}

/** Runs each size in turn (intake, then a run that must send every recipient its digest and leave nothing). */
export async function runDigestBench(
  env: Record<string, string | undefined>,
  options: { sizes: number[]; recipients: number },
): Promise<DigestFigures> {
  const sizes: DigestSizeFigures[] = [];
  for (const items of options.sizes) {
    const stored = await child(env, ['intake', String(items), String(options.recipients)]);
    // A transaction whose answer is lost and is retried finds its own items: duplicates, yet each stored once (the
    // run below checks that every item is in a digest).
    if (Number(stored.accepted) + Number(stored.duplicates) !== items) {
      throw new Error(`digest bench: intake answered for ${stored.accepted} + ${stored.duplicates} of ${items}`);
    }
    process.stderr.write(`digest bench: ${items} items: intake ${JSON.stringify(stored)}\n`);
    // The reference in the same Azurite, before the run: what the same volume costs the emulator itself.
    const reference = await child(env, ['raw', String(items), String(Math.min(items, options.recipients))]);
    process.stderr.write(`digest bench: ${items} items: raw reference ${JSON.stringify(reference)}\n`);
    const recipients = Math.min(items, options.recipients);
    const ran = await child(env, ['run', String(recipients)]);
    process.stderr.write(
      `digest bench: ${items} items: intake ${Math.round(Number(stored.wallMs))} ms, run ${JSON.stringify(ran)}\n`,
    );
    if (ran.outcome !== 'completed' || ran.items !== items || ran.recipients !== recipients || ran.pending !== 0) {
      throw new Error(`digest bench: the run did not send every item: ${JSON.stringify(ran)}`);
    }
    const rawPerEntityMs = Number(reference.wallMs) / items;
    const intakeMs = Number(stored.wallMs);
    const runMs = Number(ran.wallMs);
    const figures: DigestSizeFigures = {
      items,
      recipients,
      intakeMs: Math.round(intakeMs),
      runMs: Math.round(runMs),
      perItemMs: round((intakeMs + runMs) / items, 3),
      runBaselineRssMiB: round(Number(ran.baselineRssMiB)),
      runPeakRssMiB: round(Number(ran.peakRssMiB)),
      runPeakHeapUsedMiB: round(Number(ran.peakHeapUsedMiB)),
      runPeakHeapTotalMiB: round(Number(ran.peakHeapTotalMiB)),
      runPeakExternalMiB: round(Number(ran.peakExternalMiB)),
      rawPerEntityMs: round(rawPerEntityMs, 3),
      perItemOverRaw: round((intakeMs + runMs) / items / rawPerEntityMs, 2),
    };
    sizes.push(figures);
    // Each size as soon as it is measured: the largest can take long against Azurite.
    process.stderr.write(`digest bench: ${JSON.stringify(figures)}\n`);
  }
  const first = sizes[0] as DigestSizeFigures;
  const last = sizes[sizes.length - 1] as DigestSizeFigures;
  return {
    sizes,
    perItemRatio: round(last.perItemMs / first.perItemMs, 2),
    perItemOverRawRatio: round(last.perItemOverRaw / first.perItemOverRaw, 2),
  };
}
