/**
 * Pacing: three app instances in separate processes drain one outbox against the sandbox's Exchange with scaled
 * limits. Figures: utilisation of the allowed rate (target ≥ 95 %), the most sends in any window (must be ≤ the
 * limit), 432s and rate violations the sandbox recorded (must be 0), and the peak of concurrent sessions; and a chart
 * of the sends per second by instance against the limit (docs/images/pacing.svg).
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { startAzurite } from '../dev/azurite';
import { Progress } from '../dev/progress';
import { startSandbox } from '../sandbox';
import { runPacingScenario } from '../test/support/pacingRun';
import { pacingChartSvg } from './pacingChart';

/** Where the full run's chart goes (docs/benchmarks.md shows it); a --quick run writes beside the results instead. */
export const PACING_CHART = path.resolve(__dirname, '../docs/images/pacing.svg');
export const QUICK_PACING_CHART = path.resolve(__dirname, 'results/pacing-quick.svg');

export interface PacingFigures {
  workers: number;
  messages: number;
  limit: { ratePerWindow: number; windowMs: number };
  utilisation: number;
  maxInAnyWindow: number;
  rateViolations: number;
  rejections432: number;
  maxConcurrentSessions: number;
  spanMs: number;
  longestGapMs: number;
  duplicates: number;
  /** Sends whose instance could not be told from its SMTP session (drawn grey in the chart). */
  sendsOfUnknownInstance: number;
  /** The chart written, relative to the repository. */
  chart: string;
}

/** 300 per 30 s: Exchange's 30 a minute, twenty times faster (the 3 % pacing margin is then 900 ms). */
export async function runPacingBench(
  options: { messages?: number; chartFile?: string; command?: string } = {},
): Promise<PacingFigures> {
  const windowMs = 30_000;
  const ratePerWindow = 300;
  const workers = 3;
  const messages = options.messages ?? 1_000;
  const chartFile = options.chartFile ?? PACING_CHART;
  const [sandbox, azurite] = await Promise.all([
    startSandbox({ smtpLimits: { ratePerMinute: ratePerWindow, rateWindowMs: windowMs } }),
    startAzurite(),
  ]);
  let starting: Progress | undefined;
  const accepting = new Progress({
    label: 'pacing: accepting the backlog into the outbox',
    total: messages,
    unit: 'messages',
  });
  let draining: Progress | undefined;
  try {
    const r = await runPacingScenario({
      sandbox,
      storage: azurite.connectionString,
      messages,
      workers,
      ratePerWindow,
      windowMs,
      recordSenders: true,
      // The drain itself takes 100 s; a machine shared with other work can take several times as long.
      timeoutMs: 900_000,
      onProgress: (phase, done, total) => {
        if (phase === 'accept') {
          accepting?.update(done);
          if (done === total) accepting?.done();
          return;
        }
        if (phase === 'start') {
          starting ??= new Progress({ label: 'pacing: starting the instances', total, unit: 'instances' });
          starting.update(done);
          if (done === total) starting.done();
          return;
        }
        if (!draining) {
          draining = new Progress({
            label: `pacing: ${workers} instances sending at ${ratePerWindow} per ${windowMs / 1000} s`,
            total,
            unit: 'messages',
          });
        }
        draining.update(done);
      },
    });
    draining?.done();
    if ((r.statuses.sent ?? 0) !== messages)
      throw new Error(`not every message was sent: ${JSON.stringify(r.statuses)}`);
    const date = new Date().toISOString().slice(0, 10);
    mkdirSync(path.dirname(chartFile), { recursive: true });
    writeFileSync(
      chartFile,
      pacingChartSvg({
        sends: r.sends.map((send) => ({ at: send.at, instance: send.worker })),
        instances: workers,
        ratePerWindow,
        windowMs,
        title: `Pacing: ${messages.toLocaleString('en-US')} messages, ${workers} instances, one mailbox`,
        subtitle: `${options.command ?? 'npm run bench -- --only=pacing'}, ${date}; the sandbox's arrival times`,
      }),
    );
    return {
      workers,
      messages,
      limit: { ratePerWindow, windowMs },
      utilisation: Math.round(r.utilisation * 1000) / 1000,
      maxInAnyWindow: r.maxInAnyWindow,
      rateViolations: r.rateViolations,
      rejections432: r.rejections432,
      maxConcurrentSessions: r.maxConcurrentSessions,
      spanMs: r.spanMs,
      longestGapMs: r.longestGaps[0]?.gapMs ?? 0,
      duplicates: r.duplicates,
      sendsOfUnknownInstance: r.sends.filter((send) => send.worker === undefined).length,
      chart: path.relative(path.resolve(__dirname, '..'), chartFile),
    };
  } finally {
    await Promise.all([sandbox.close(), azurite.stop()]);
  }
}
