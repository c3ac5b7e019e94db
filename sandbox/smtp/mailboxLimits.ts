/** Exchange Online's per-mailbox limits and the accounting behind them: message rate, daily recipients, concurrent sessions. */
import { lower } from './addresses';
import type { ExchangeSmtpViolation } from './observation';

/** 35 MiB: Exchange Online's default send limit (MAIL_MAX_MESSAGE_BYTES). */
const DEFAULT_MAX_MESSAGE_BYTES = 36_700_160;
const DEFAULT_MAX_CONNECTIONS_PER_MAILBOX = 3;
const DEFAULT_RATE_PER_MINUTE = 30;
const DEFAULT_RATE_WINDOW_MS = 60_000;
const DEFAULT_DAILY_RECIPIENTS = 10_000;
const DEFAULT_DAILY_WINDOW_MS = 24 * 60 * 60 * 1000;
const DEFAULT_MAX_RECIPIENTS = 500;

/** Per-mailbox limits; every field can be changed on a running server through `server.limits`. */
export interface ExchangeSmtpLimits {
  /** Advertised as SIZE in EHLO; a larger message gets 552 5.3.4. */
  maxMessageBytes: number;
  /** Concurrently authenticated sessions per mailbox; the next one gets 432 4.3.2 at MAIL FROM. */
  maxConnectionsPerMailbox: number;
  /** Messages per `rateWindowMs`; more is recorded as a violation, never rejected (Exchange delays). */
  ratePerMinute: number;
  rateWindowMs: number;
  /** Recipients per rolling `dailyWindowMs`; more gets 554 5.2.0. */
  dailyRecipients: number;
  dailyWindowMs: number;
  /** Recipients per message; the next RCPT gets 452 4.5.3. */
  maxRecipients: number;
  /** Basic SMTP AUTH (LOGIN with the app password); false = 535 5.7.139 basic authentication is disabled. */
  basicAuthEnabled: boolean;
}

/** A time source; tests pass a scaled or manual clock. */
export interface Clock {
  now(): number;
}

/** Exchange Online's defaults, overridden by `limits`. */
export function fullLimits(limits: Partial<ExchangeSmtpLimits> | undefined): ExchangeSmtpLimits {
  return {
    maxMessageBytes: DEFAULT_MAX_MESSAGE_BYTES,
    maxConnectionsPerMailbox: DEFAULT_MAX_CONNECTIONS_PER_MAILBOX,
    ratePerMinute: DEFAULT_RATE_PER_MINUTE,
    rateWindowMs: DEFAULT_RATE_WINDOW_MS,
    dailyRecipients: DEFAULT_DAILY_RECIPIENTS,
    dailyWindowMs: DEFAULT_DAILY_WINDOW_MS,
    maxRecipients: DEFAULT_MAX_RECIPIENTS,
    basicAuthEnabled: true,
    ...limits,
  };
}

/**
 * What each mailbox has used, against `limits` (read at every use, so changes on a running server apply at once).
 * Mailboxes are keyed by their lower-case address; the violations name them as the session authenticated.
 */
export class MailboxAccounting {
  /** Accepted messages per mailbox: their times for the rate rule, their recipients for the daily quota. */
  private readonly accepted = new Map<string, AcceptedLog>();
  private readonly peakSessions = new Map<string, number>();

  constructor(
    private readonly limits: ExchangeSmtpLimits,
    private readonly clock: Clock,
  ) {}

  /** Forgets everything counted. */
  clear(): void {
    this.accepted.clear();
    this.peakSessions.clear();
  }

  /** Notes that `mailbox` has `open` authenticated sessions now, for {@link maxConcurrentSessions}. */
  sessionsOpen(mailbox: string, open: number): void {
    this.peakSessions.set(mailbox, Math.max(open, this.peakSessions.get(mailbox) ?? 0));
  }

  /**
   * The concurrency rule at MAIL FROM: the session `rank`-th (from 0) in authentication order among the `open` ones
   * of `mailbox` may send only within the first `maxConnectionsPerMailbox`; past them, the violation (answered 432).
   */
  overConnectionLimit(mailbox: string, rank: number, open: number): ExchangeSmtpViolation | undefined {
    if (rank < this.limits.maxConnectionsPerMailbox) return undefined;
    return {
      kind: 'connections',
      mailbox,
      at: this.clock.now(),
      count: open,
      limit: this.limits.maxConnectionsPerMailbox,
    };
  }

  /** `recipients` more would take `mailbox` over its rolling daily quota (answered 554 5.2.0). */
  overDailyQuota(mailbox: string, recipients: number): boolean {
    return this.recipientsInDailyWindow(mailbox) + recipients > this.limits.dailyRecipients;
  }

  /** Counts a message accepted at `at`; the rate violation when it goes over the rate (Exchange delays, never refuses). */
  countAccepted(mailbox: string, at: number, recipients: number): ExchangeSmtpViolation | undefined {
    const key = lower(mailbox);
    let log = this.accepted.get(key);
    if (!log) this.accepted.set(key, (log = new AcceptedLog()));
    log.add(at, recipients);
    const inWindow = log.messagesAfter(at - this.limits.rateWindowMs);
    if (inWindow <= this.limits.ratePerMinute) return undefined;
    return {
      kind: 'rate',
      mailbox,
      at,
      count: inWindow,
      limit: this.limits.ratePerMinute,
      windowMs: this.limits.rateWindowMs,
    };
  }

  /** The most messages `mailbox` had accepted within any `limits.rateWindowMs`. */
  maxInAnyWindow(mailbox: string): number {
    const times = [...(this.accepted.get(lower(mailbox))?.times ?? [])].sort((a, b) => a - b);
    let max = 0;
    let start = 0;
    for (let end = 0; end < times.length; end++) {
      while ((times[end] ?? 0) - (times[start] ?? 0) >= this.limits.rateWindowMs) start++;
      max = Math.max(max, end - start + 1);
    }
    return max;
  }

  /** The most sessions authenticated as `mailbox` that were open at the same time. */
  maxConcurrentSessions(mailbox: string): number {
    return this.peakSessions.get(lower(mailbox)) ?? 0;
  }

  /** Recipients `mailbox` has used in the current rolling daily window. */
  recipientsInDailyWindow(mailbox: string): number {
    const since = this.clock.now() - this.limits.dailyWindowMs;
    return this.accepted.get(lower(mailbox))?.recipientsAfter(since) ?? 0;
  }
}

/**
 * One mailbox's accepted messages in the order they came: times and running recipient totals, so that "how many
 * since t" is a binary search rather than a pass over every message (the benches send tens of thousands). A clock
 * set back (tests move the sandbox's clock) leaves the times unordered; the log then counts by a full pass.
 */
class AcceptedLog {
  readonly times: number[] = [];
  /** Recipients of the messages up to and including each index. */
  private readonly totals: number[] = [];
  private ordered = true;

  add(at: number, recipients: number): void {
    const last = this.times.length - 1;
    if (last >= 0 && at < (this.times[last] as number)) this.ordered = false;
    this.times.push(at);
    this.totals.push((last >= 0 ? (this.totals[last] as number) : 0) + recipients);
  }

  /** Messages accepted after `since`. */
  messagesAfter(since: number): number {
    if (!this.ordered) return this.times.filter((t) => t > since).length;
    return this.times.length - this.firstAfter(since);
  }

  /** Recipients of the messages accepted after `since`. */
  recipientsAfter(since: number): number {
    const total = this.totals.at(-1) ?? 0;
    if (!this.ordered) {
      return this.times.reduce((n, t, i) => (t > since ? n + this.recipientsAt(i) : n), 0);
    }
    const first = this.firstAfter(since);
    return first === 0 ? total : total - (this.totals[first - 1] as number);
  }

  private recipientsAt(i: number): number {
    return (this.totals[i] as number) - (i > 0 ? (this.totals[i - 1] as number) : 0);
  }

  /** The index of the first time after `since` (the length when there is none); the times are in order. */
  private firstAfter(since: number): number {
    let low = 0;
    let high = this.times.length;
    while (low < high) {
      const mid = (low + high) >>> 1;
      if ((this.times[mid] as number) > since) high = mid;
      else low = mid + 1;
    }
    return low;
  }
}
