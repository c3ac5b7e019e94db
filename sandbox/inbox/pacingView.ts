/** The inbox's pacing view: each mailbox's sends per rate window against its limit, the rate violations and the 432 replies. */
import { lower } from '../smtp/addresses';
import type { ExchangeSmtpLimits } from '../smtp/mailboxLimits';
import type { ExchangeSmtpMessage, ExchangeSmtpRejection, ExchangeSmtpViolation } from '../smtp/observation';

/** Rate windows the chart shows, the newest last. */
export const PACING_WINDOWS = 30;
/** Most violations and 432 replies listed per mailbox (the newest). */
const MAX_LISTED = 100;
/** Most mailboxes shown (a tenant in the sandbox has a handful). */
const MAX_MAILBOXES = 50;

export interface MailboxPacing {
  mailbox: string;
  /** Messages accepted in each of the last {@link PACING_WINDOWS} windows, oldest first; the last one is still open. */
  windows: Array<{ start: string; count: number }>;
  /** The most accepted within any window, ever. */
  maxInAnyWindow: number;
  accepted: number;
  recipientsToday: number;
  violations: Array<{ at: string; count: number; limit: number }>;
  violationCount: number;
  /** 432 4.3.2 replies (sender thread limit): too many sessions, or the forced fault. */
  throttled: Array<{ at: string; command: string; enhanced: string; text: string }>;
  throttledCount: number;
  connectionViolations: number;
  maxConcurrentSessions: number;
}

export interface PacingView {
  now: string;
  limits: {
    ratePerMinute: number;
    rateWindowMs: number;
    maxConnectionsPerMailbox: number;
    dailyRecipients: number;
  };
  mailboxes: MailboxPacing[];
}

/** What the pacing view reads from the SMTP server. */
export interface PacingSource {
  now(): number;
  limits: ExchangeSmtpLimits;
  messages: readonly ExchangeSmtpMessage[];
  rejections: readonly ExchangeSmtpRejection[];
  violations: readonly ExchangeSmtpViolation[];
  maxInAnyWindow(mailbox: string): number;
  maxConcurrentSessions(mailbox: string): number;
  recipientsInDailyWindow(mailbox: string): number;
}

/** The pacing of every mailbox that sent, was refused or went over a limit, as of the server's clock. */
export function pacingView(smtp: PacingSource): PacingView {
  const now = smtp.now();
  const { limits } = smtp;
  const windowMs = Math.max(1, limits.rateWindowMs);
  // Windows are aligned to multiples of their length, so that a bar keeps its height as time passes.
  const lastStart = Math.floor(now / windowMs) * windowMs;
  const firstStart = lastStart - (PACING_WINDOWS - 1) * windowMs;

  const names = new Map<string, string>();
  for (const m of smtp.messages) names.set(lower(m.mailbox), m.mailbox);
  for (const v of smtp.violations) names.set(lower(v.mailbox), names.get(lower(v.mailbox)) ?? v.mailbox);
  for (const r of smtp.rejections) {
    if (r.mailbox) names.set(lower(r.mailbox), names.get(lower(r.mailbox)) ?? r.mailbox);
  }

  const mailboxes = [...names.entries()].slice(0, MAX_MAILBOXES).map(([key, mailbox]): MailboxPacing => {
    const counts = new Array<number>(PACING_WINDOWS).fill(0);
    let accepted = 0;
    for (const m of smtp.messages) {
      if (lower(m.mailbox) !== key) continue;
      accepted++;
      const slot = Math.floor((m.receivedAt - firstStart) / windowMs);
      if (slot >= 0 && slot < PACING_WINDOWS) counts[slot] = (counts[slot] ?? 0) + 1;
    }
    const rate = smtp.violations.filter(
      (v): v is Extract<ExchangeSmtpViolation, { kind: 'rate' }> => v.kind === 'rate' && lower(v.mailbox) === key,
    );
    const throttled = smtp.rejections.filter((r) => r.code === 432 && r.mailbox && lower(r.mailbox) === key);
    return {
      mailbox,
      windows: counts.map((count, i) => ({ start: new Date(firstStart + i * windowMs).toISOString(), count })),
      maxInAnyWindow: smtp.maxInAnyWindow(mailbox),
      accepted,
      recipientsToday: smtp.recipientsInDailyWindow(mailbox),
      violations: rate
        .slice(-MAX_LISTED)
        .map((v) => ({ at: new Date(v.at).toISOString(), count: v.count, limit: v.limit })),
      violationCount: rate.length,
      throttled: throttled.slice(-MAX_LISTED).map((r) => ({
        at: new Date(r.at).toISOString(),
        command: r.command,
        enhanced: r.enhanced ?? '',
        text: r.text.slice(0, 500),
      })),
      throttledCount: throttled.length,
      connectionViolations: smtp.violations.filter((v) => v.kind === 'connections' && lower(v.mailbox) === key).length,
      maxConcurrentSessions: smtp.maxConcurrentSessions(mailbox),
    };
  });

  return {
    now: new Date(now).toISOString(),
    limits: {
      ratePerMinute: limits.ratePerMinute,
      rateWindowMs: limits.rateWindowMs,
      maxConnectionsPerMailbox: limits.maxConnectionsPerMailbox,
      dailyRecipients: limits.dailyRecipients,
    },
    mailboxes,
  };
}
