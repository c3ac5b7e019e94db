/** The sandbox's per-mailbox accounting (rate and daily quota) against a plain count over every message. */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { fullLimits, MailboxAccounting } from '../../sandbox/smtp/mailboxLimits';

describe('MailboxAccounting', () => {
  it('counts messages in the rate window and recipients in the daily window as a full pass would', () => {
    fc.assert(
      fc.property(
        // Mostly ascending times (a running clock), sometimes set back (tests move the sandbox clock).
        fc.array(fc.tuple(fc.integer({ min: -50, max: 1_000 }), fc.integer({ min: 1, max: 500 })), {
          minLength: 1,
          maxLength: 200,
        }),
        fc.integer({ min: 1, max: 5_000 }),
        fc.integer({ min: 1, max: 20_000 }),
        (steps, rateWindowMs, dailyWindowMs) => {
          let now = 0;
          const limits = fullLimits({ ratePerMinute: 0, rateWindowMs, dailyRecipients: 1, dailyWindowMs });
          const accounting = new MailboxAccounting(limits, { now: () => now });
          const seen: Array<{ at: number; count: number }> = [];
          for (const [step, recipients] of steps) {
            now += step;
            seen.push({ at: now, count: recipients });
            // ratePerMinute 0: every message is a violation that reports how many are in the window.
            const violation = accounting.countAccepted('Alerts@Contoso.test', now, recipients);
            expect(violation?.count).toBe(seen.filter((e) => e.at > now - rateWindowMs).length);
            const daily = seen.filter((e) => e.at > now - dailyWindowMs).reduce((n, e) => n + e.count, 0);
            expect(accounting.recipientsInDailyWindow('alerts@contoso.test')).toBe(daily);
            expect(accounting.overDailyQuota('alerts@contoso.test', 0)).toBe(daily > 1);
          }
        },
      ),
      { numRuns: 300 },
    );
  });

  it('forgets everything on clear', () => {
    const accounting = new MailboxAccounting(fullLimits({}), { now: () => 10 });
    accounting.countAccepted('a@contoso.test', 5, 3);
    expect(accounting.recipientsInDailyWindow('a@contoso.test')).toBe(3);
    accounting.clear();
    expect(accounting.recipientsInDailyWindow('a@contoso.test')).toBe(0);
    expect(accounting.maxInAnyWindow('a@contoso.test')).toBe(0);
  });
});
