/** Runs timer-triggered functions on their NCRONTAB schedule (six fields, seconds first) or TimeSpan, as the Functions host does. */
import { Cron } from 'croner';
import { parseTimeSpan } from './hostJson';
import type { Invoker } from './invoker';
import type { DevFunction } from './registrations';

export type TimerFunction = Extract<DevFunction, { kind: 'timer' }>;

/** .NET's DateTime.MinValue, which the host reports as `last` before a timer has ever run. */
const NEVER = '0001-01-01T00:00:00';

export interface TimerListener {
  name: string;
  /** Invokes the function now; rejects with the handler's error. */
  run(): Promise<void>;
  /** The next scheduled run. */
  next(): Date | undefined;
  stop(): void;
}

function createSchedule(
  schedule: string,
  timezone: string,
  tick: () => Promise<void>,
): { next(): Date | undefined; stop(): void } {
  if (/^\s*(\d+\.)?\d{1,2}:\d{1,2}:\d{1,2}\s*$/.test(schedule)) {
    const periodMs = parseTimeSpan(schedule.trim(), `schedule "${schedule}"`);
    if (periodMs <= 0) throw new Error(`Timer schedule "${schedule}" must be longer than zero`);
    let nextAt = Date.now() + periodMs;
    const interval = setInterval(() => {
      nextAt = Date.now() + periodMs;
      void tick();
    }, periodMs);
    return { next: () => new Date(nextAt), stop: () => clearInterval(interval) };
  }
  if (schedule.trim().split(/\s+/).length !== 6) {
    throw new Error(`Timer schedule "${schedule}" must be an NCRONTAB expression with six fields (seconds first)`);
  }
  // NCRONTAB requires both day-of-month and day-of-week to match; a run does not start while the last one is running.
  const cron = new Cron(schedule, { mode: '6-part', domAndDow: true, timezone, protect: true }, tick);
  return { next: () => cron.nextRun() ?? undefined, stop: () => cron.stop() };
}

/** Schedules `fn`; `runOnStartup` invokes it once straight away. */
export function startTimerListener(fn: TimerFunction, invoker: Invoker, env: NodeJS.ProcessEnv): TimerListener {
  let last: string = NEVER;
  // WEBSITE_TIME_ZONE is how the host is told a time zone (an IANA name on Linux); the default is UTC.
  const timezone = env.WEBSITE_TIME_ZONE || 'UTC';
  const invoke = async (isPastDue: boolean) => {
    const now = new Date().toISOString();
    const timer = {
      Schedule: { AdjustForDST: true },
      ScheduleStatus: { Last: last, Next: schedule.next()?.toISOString() ?? now, LastUpdated: now },
      IsPastDue: isPastDue,
    };
    last = now;
    await invoker.invoke(fn, { trigger: { json: JSON.stringify(timer) } });
  };
  // A failed scheduled run is logged by the invoker and retried at the next occurrence, as on the host.
  const tick = () => invoke(false).catch(() => undefined);
  const schedule = createSchedule(fn.schedule, timezone, tick);
  if (fn.runOnStartup) void tick();

  return {
    name: fn.name,
    run: () => invoke(false),
    next: () => schedule.next(),
    stop: () => schedule.stop(),
  };
}
