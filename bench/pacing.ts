/**
 * Pacing: three app instances in separate processes drain one outbox against the sandbox's Exchange with scaled
 * limits. Figures: utilisation of the allowed rate (target ≥ 95 %), the most sends in any window (must be ≤ the
 * limit), 432s and rate violations the sandbox recorded (must be 0), and the peak of concurrent sessions.
 */
import { startAzurite } from '../dev/azurite';
import { startSandbox } from '../sandbox';
import { runPacingScenario } from '../test/support/pacingRun';

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
}

/** 300 per 30 s: Exchange's 30 a minute, twenty times faster (the 3 % pacing margin is then 900 ms). */
export async function runPacingBench(options: { messages?: number } = {}): Promise<PacingFigures> {
  const windowMs = 30_000;
  const ratePerWindow = 300;
  const messages = options.messages ?? 1_000;
  const [sandbox, azurite] = await Promise.all([
    startSandbox({ smtpLimits: { ratePerMinute: ratePerWindow, rateWindowMs: windowMs } }),
    startAzurite(),
  ]);
  try {
    const r = await runPacingScenario({
      sandbox,
      storage: azurite.connectionString,
      messages,
      workers: 3,
      ratePerWindow,
      windowMs,
    });
    if ((r.statuses.sent ?? 0) !== messages)
      throw new Error(`not every message was sent: ${JSON.stringify(r.statuses)}`);
    return {
      workers: 3,
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
    };
  } finally {
    await Promise.all([sandbox.close(), azurite.stop()]);
  }
}
