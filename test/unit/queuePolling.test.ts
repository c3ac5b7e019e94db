import { describe, expect, it } from 'vitest';
import { MIN_POLL_DELAY_MS, PollBackoff } from '../../dev/queueListener';

/** Math.random's middle: the ±20 % randomisation then adds nothing. */
const middle = () => 0.5;

describe("the dev host's queue polling back-off", () => {
  it('grows as the host grows it after empty polls, up to maxPollingInterval, and stays there', () => {
    const backoff = new PollBackoff(2_000, middle);
    const waits = Array.from({ length: 9 }, () => backoff.next(false));
    // 100 ms + 100 ms × 2^(n-1): 200, 300, 500, 900, 1,700, then the 2 s cap.
    expect(waits).toEqual([200, 300, 500, 900, 1_700, 2_000, 2_000, 2_000, 2_000]);
  });

  it('goes back to the minimum once a poll found a message', () => {
    const backoff = new PollBackoff(2_000, middle);
    for (let i = 0; i < 10; i++) backoff.next(false);
    expect(backoff.next(true)).toBe(MIN_POLL_DELAY_MS);
    expect(backoff.next(false)).toBe(200);
  });

  it('randomises each step by at most 20 %, and never waits past the cap', () => {
    const low = new PollBackoff(60_000, () => 0);
    const high = new PollBackoff(60_000, () => 0.999_999);
    expect(low.next(false)).toBe(180);
    expect(high.next(false)).toBe(220);
    const capped = new PollBackoff(1_000, () => 0.999_999);
    const waits = Array.from({ length: 12 }, () => capped.next(false));
    expect(Math.max(...waits)).toBe(1_000);
  });
});
