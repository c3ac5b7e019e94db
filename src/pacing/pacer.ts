/**
 * Exchange-aware pacing of one sender mailbox across every instance: send slots spaced evenly over the rate
 * window, and recipients counted over a rolling daily window. The state is one Table entity per mailbox, changed
 * only by ETag-guarded writes, so that instances agree without talking to each other.
 *
 * A send takes its slot just in time: a worker that already holds the message reserves the next free slot, and only
 * when that slot is at most `maxWaitMs` away; it then waits for the slot and sends. Because every send starts at its
 * own slot and slots are at least `intervalMs` apart, no window of the rate window's length ever holds more than
 * MAIL_RATE_PER_MINUTE sends, whatever the number of instances.
 *
 * A worker that finds the next slot further away defers its message (a queue visibility delay). So that a backlog
 * does not wake up all at once and bounce again, each deferral also takes a wake-up ticket: tickets are handed out
 * one interval apart beyond the last ticket, so deferred messages come back at about the rate they can be sent.
 * A batch schedules all its recipients in one write (`reserveSchedule`), on a line of its own so that single
 * messages deferred meanwhile are not put behind whole batches. Tickets and schedules only spread the wake-ups;
 * the slot taken at send time is what enforces the limit.
 *
 * Exchange may refuse a mailbox that this app's own count says has room (554 5.2.0: other apps or people sent from
 * it too). Delivery then blocks the mailbox here until `blockedUntil`: every instance defers its messages until then,
 * with wake-up tickets from that time on, and the first message to wake is the probe that finds out whether the
 * rolling window has freed.
 */
import type { TableClient } from '@azure/data-tables';
import type { Config } from '../config';
import { MailError } from '../errors';
import { LOST_RACE, retryLostRaces, type RaceRetry } from '../storage/etagRetry';
import { insertEntity, readEntity, replaceEntity } from '../storage/tableEntity';

/** Slots are spaced this much wider than window / rate, so that the spread of send latencies cannot push a window over. */
export const PACING_MARGIN = 0.03;
/**
 * A message in hand waits for a send slot up to this many slots ahead (at most MAX_WAIT_CAP_MS) rather than being
 * deferred: the queue is then the backlog, and only messages beyond what every instance's invocations can hold are
 * sent back to it. Deferring costs storage writes and puts the message behind the ones already waiting.
 */
const MAX_WAIT_SLOTS = 30;
/** Below MAIL_SEND_LEASE_SECONDS (300 s by default) with room for the send itself. */
export const MAX_WAIT_CAP_MS = 60_000;
/** Daily usage is counted in this many buckets per window (15 minutes for 24 hours). */
const DAILY_BUCKETS = 96;
/** A mailbox Exchange refused for its daily quota is probed again after one bucket: 15 minutes for 24 hours. */
const QUOTA_PROBE_BUCKETS = 1;
/** ... but never sooner than this, however far time is scaled down. */
const MIN_QUOTA_PROBE_MS = 1_000;
/** ETag races on the pacing entity before a reservation gives up and defers its message briefly. */
const MAX_PACING_RACES = 25;
/** The random pause after a lost race on the pacing entity, so that racing instances fall out of step. */
const RACE_JITTER_MS = 5;
const ROW_KEY = 'pacing';

export interface PacingLimits {
  ratePerWindow: number;
  rateWindowMs: number;
  dailyRecipientLimit: number;
  dailyWindowMs: number;
}

/** The pacing limits of a Config. */
export function pacingLimits(config: Config): PacingLimits {
  return {
    ratePerWindow: config.limits.ratePerMinute,
    rateWindowMs: config.limits.rateWindowMs,
    dailyRecipientLimit: config.limits.dailyRecipientLimit,
    dailyWindowMs: config.limits.dailyWindowMs,
  };
}

/** The result of asking for a send slot. */
export type Reservation =
  /** Send at `at` (epoch ms; wait until then). */
  | { kind: 'slot'; at: number }
  /** Over a limit: come back at `retryAt` (epoch ms). */
  | { kind: 'defer'; retryAt: number; reason: 'rate' | 'daily' | 'contention' | 'exchange-daily-quota' };

/** The stored state of one mailbox. */
interface PacingEntity {
  partitionKey: string;
  rowKey: string;
  /** The earliest time the next send may start. */
  nextSlotAt: number;
  /** The next wake-up ticket for a deferred message. */
  nextWakeAt: number;
  /** Where the next batch's schedule starts (after the batches already scheduled). */
  nextBatchAt: number;
  /** JSON `[bucketStart, recipients][]`, oldest first. */
  daily: string;
  /** Exchange refused the mailbox for its daily quota: nobody sends before this (epoch ms; 0 = not blocked). */
  blockedUntil?: number;
}

/** The shared state as read, with the ETag of the read. */
interface PacingState {
  etag?: string;
  nextSlotAt: number;
  nextWakeAt: number;
  nextBatchAt: number;
  blockedUntil: number;
  buckets: Buckets;
}

type Buckets = Array<[number, number]>;

/** A PartitionKey may not hold / \ # ? or control characters. */
function partitionOf(mailbox: string): string {
  return mailbox.toLowerCase().replace(/[/\\#?\u0000-\u001f\u007f]/g, '_');
}

export class Pacer {
  /** Milliseconds between two send slots. */
  readonly intervalMs: number;
  /** How far ahead a send may reserve its slot and wait for it instead of being deferred. */
  readonly maxWaitMs: number;
  /**
   * How late after its slot a send may still start. The margin between slots adds up to PACING_MARGIN × window per
   * window; half of it absorbs a late start, the other half the spread of SMTP latencies.
   */
  readonly lateToleranceMs: number;
  /** How long a mailbox Exchange refused for its daily quota stays blocked before a message probes it again. */
  readonly quotaProbeMs: number;
  private readonly bucketMs: number;
  private readonly partitionKey: string;
  private readonly now: () => number;
  /** Creates the table (once per process) before the first read. */
  private readonly ensure: (() => Promise<void>) | undefined;

  constructor(
    private readonly table: TableClient,
    mailbox: string,
    private readonly limits: PacingLimits,
    options: {
      now?: () => number;
      maxWaitMs?: number;
      /** The sending lease (MAIL_SEND_LEASE_SECONDS): a message never waits for its slot longer than half of it. */
      leaseMs?: number;
      ensure?: () => Promise<void>;
    } = {},
  ) {
    this.ensure = options.ensure;
    this.intervalMs = (limits.rateWindowMs / limits.ratePerWindow) * (1 + PACING_MARGIN);
    this.maxWaitMs =
      options.maxWaitMs ??
      Math.min(
        MAX_WAIT_CAP_MS,
        Math.max(1_000, MAX_WAIT_SLOTS * this.intervalMs),
        // Past its lease another worker may take the message over: wait at most half of it, sending included.
        (options.leaseMs ?? Number.POSITIVE_INFINITY) / 2,
      );
    this.lateToleranceMs = (PACING_MARGIN * limits.rateWindowMs) / 2;
    this.bucketMs = limits.dailyWindowMs / DAILY_BUCKETS;
    this.quotaProbeMs = Math.max(MIN_QUOTA_PROBE_MS, QUOTA_PROBE_BUCKETS * this.bucketMs);
    this.partitionKey = partitionOf(mailbox);
    this.now = options.now ?? Date.now;
  }

  /**
   * Reserves a send slot for a message to `recipients` recipients: the slot when it is at most `maxWaitMs` away
   * (or the caller's shorter `options.maxWaitMs`) and the daily window has room, otherwise when to come back (taking
   * a wake-up ticket).
   */
  async reserve(recipients: number, options: { maxWaitMs?: number } = {}): Promise<Reservation> {
    const maxWaitMs = Math.min(this.maxWaitMs, options.maxWaitMs ?? Number.POSITIVE_INFINITY);
    if (recipients > this.limits.dailyRecipientLimit) {
      throw new MailError(
        'TOO_MANY_RECIPIENTS',
        `${recipients} recipients is more than MAIL_DAILY_RECIPIENT_LIMIT (${this.limits.dailyRecipientLimit}) allows in a day`,
        { transient: false },
      );
    }
    return this.update<Reservation>({
      attempt: async () => {
        const current = await this.read();
        const now = this.now();
        if (current.blockedUntil > now) {
          const wake = await this.ticket(1, 'nextWakeAt');
          return { kind: 'defer', retryAt: wake ?? current.blockedUntil, reason: 'exchange-daily-quota' };
        }
        const buckets = this.live(current.buckets, now);
        const used = buckets.reduce((sum, [, n]) => sum + n, 0);
        if (used + recipients > this.limits.dailyRecipientLimit) {
          return { kind: 'defer', retryAt: this.dailyRoomAt(buckets, used, recipients), reason: 'daily' };
        }
        const slot = Math.max(now, current.nextSlotAt);
        if (slot - now > maxWaitMs) {
          const wake = await this.ticket(1, 'nextWakeAt');
          return { kind: 'defer', retryAt: wake ?? slot, reason: 'rate' };
        }
        const bucketStart = Math.floor(slot / this.bucketMs) * this.bucketMs;
        const last = buckets.at(-1);
        if (last && last[0] === bucketStart) last[1] += recipients;
        else buckets.push([bucketStart, recipients]);
        const written = await this.write(current.etag, { ...current, nextSlotAt: slot + this.intervalMs, buckets });
        return written ? { kind: 'slot', at: slot } : LOST_RACE;
      },
      exhausted: () => ({ kind: 'defer', retryAt: this.now() + this.intervalMs, reason: 'contention' }),
    });
  }

  /**
   * Takes `count` consecutive wake-up tickets (a batch's recipients): the first at `startAt`, then one every
   * `intervalMs`. Makes concurrent batches and deferred messages interleave instead of all waking at once.
   */
  async reserveSchedule(count: number): Promise<{ startAt: number; intervalMs: number }> {
    const startAt = await this.ticket(count, 'nextBatchAt');
    return { startAt: startAt ?? this.now(), intervalMs: this.intervalMs };
  }

  /**
   * Exchange refused the mailbox for its daily quota (554 5.2.0): nobody sends before `quotaProbeMs` from now.
   * Returns the time the block ends (epoch ms), which is when the first deferred message probes the mailbox again.
   */
  async blockForDailyQuota(): Promise<number> {
    return this.update({
      attempt: async () => {
        const current = await this.read();
        const until = Math.max(current.blockedUntil, this.now() + this.quotaProbeMs);
        return (await this.write(current.etag, { ...current, blockedUntil: until })) ? until : LOST_RACE;
      },
      exhausted: () => this.now() + this.quotaProbeMs,
    });
  }

  /** What the shared state says now (for tests and benchmarks). */
  async snapshot(): Promise<{
    nextSlotAt: number;
    nextWakeAt: number;
    nextBatchAt: number;
    blockedUntil: number;
    recipientsInDailyWindow: number;
  }> {
    const current = await this.read();
    const buckets = this.live(current.buckets, this.now());
    return {
      nextSlotAt: current.nextSlotAt,
      nextWakeAt: current.nextWakeAt,
      nextBatchAt: current.nextBatchAt,
      blockedUntil: current.blockedUntil,
      recipientsInDailyWindow: buckets.reduce((sum, [, n]) => sum + n, 0),
    };
  }

  /** Takes `count` tickets; undefined when it kept losing the race (the caller then uses its own estimate). */
  private async ticket(count: number, line: 'nextWakeAt' | 'nextBatchAt'): Promise<number | undefined> {
    return this.update<number | undefined>({
      attempt: async () => {
        const current = await this.read();
        const start = Math.max(this.now(), current.nextSlotAt, current[line], current.blockedUntil);
        const written = await this.write(current.etag, { ...current, [line]: start + count * this.intervalMs });
        return written ? start : LOST_RACE;
      },
      exhausted: () => undefined,
    });
  }

  /** Runs an ETag-guarded read-modify-write of the pacing entity: at most MAX_PACING_RACES lost races, jittered. */
  private update<T>(change: Pick<RaceRetry<T>, 'attempt' | 'exhausted'>): Promise<T> {
    return retryLostRaces({ ...change, maxRaces: MAX_PACING_RACES, jitterMs: RACE_JITTER_MS });
  }

  /** Buckets still (partly) inside the daily window: a bucket counts until its end has left the window. */
  private live(buckets: Buckets, now: number): Buckets {
    return buckets.filter(([start]) => start + this.bucketMs > now - this.limits.dailyWindowMs);
  }

  /** When enough of the oldest buckets will have left the window for `recipients` more. */
  private dailyRoomAt(buckets: Buckets, used: number, recipients: number): number {
    let freed = 0;
    for (const [start, n] of buckets) {
      freed += n;
      if (used - freed + recipients <= this.limits.dailyRecipientLimit) {
        return start + this.bucketMs + this.limits.dailyWindowMs;
      }
    }
    return this.now() + this.limits.dailyWindowMs;
  }

  private async read(): Promise<PacingState> {
    await this.ensure?.();
    const entity = await readEntity<PacingEntity>(this.table, this.partitionKey, ROW_KEY);
    if (!entity) return { nextSlotAt: 0, nextWakeAt: 0, nextBatchAt: 0, blockedUntil: 0, buckets: [] };
    return {
      etag: entity.etag,
      nextSlotAt: Number(entity.nextSlotAt) || 0,
      nextWakeAt: Number(entity.nextWakeAt) || 0,
      nextBatchAt: Number(entity.nextBatchAt) || 0,
      blockedUntil: Number(entity.blockedUntil) || 0,
      buckets: parseBuckets(entity.daily),
    };
  }

  /** Writes the state if nobody else changed it since `etag` (insert-only when there was none). False on a lost race. */
  private async write(etag: string | undefined, state: Omit<PacingState, 'etag'>): Promise<boolean> {
    // Explicitly Double: an untyped JSON integer above 2^31 is refused by Table storage.
    const double = (value: number) => ({ value, type: 'Double' as const });
    const typed = {
      partitionKey: this.partitionKey,
      rowKey: ROW_KEY,
      nextSlotAt: double(state.nextSlotAt),
      nextWakeAt: double(state.nextWakeAt),
      nextBatchAt: double(state.nextBatchAt),
      blockedUntil: double(state.blockedUntil),
      daily: JSON.stringify(state.buckets),
    };
    const written =
      etag === undefined ? await insertEntity(this.table, typed) : await replaceEntity(this.table, typed, etag);
    return written !== undefined;
  }
}

function parseBuckets(value: unknown): Buckets {
  if (typeof value !== 'string') return [];
  try {
    const parsed = JSON.parse(value) as unknown;
    return Array.isArray(parsed)
      ? parsed.filter(
          (b): b is [number, number] => Array.isArray(b) && typeof b[0] === 'number' && typeof b[1] === 'number',
        )
      : [];
  } catch {
    return [];
  }
}
