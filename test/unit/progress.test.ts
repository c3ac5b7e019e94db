import { describe, expect, it } from 'vitest';
import { formatDuration, LOG_INTERVAL_MS, Progress, TTY_REDRAW_MS, type ProgressStream } from '../../dev/progress';

/** A stream that keeps what was written, as a terminal or a log file would receive it. */
function fakeStream(isTTY: boolean, columns?: number): ProgressStream & { chunks: string[]; text(): string } {
  const chunks: string[] = [];
  return {
    isTTY,
    ...(columns !== undefined ? { columns } : {}),
    chunks,
    write(chunk: string) {
      chunks.push(chunk);
      return true;
    },
    text: () => chunks.join(''),
  };
}

/** A clock the test moves by hand. */
function fakeClock(start = 1_000_000) {
  let now = start;
  return { now: () => now, advance: (ms: number) => (now += ms) };
}

/** What a terminal shows after the writes: each \r\x1b[2K clears the line being drawn. */
function screen(text: string): string[] {
  const lines: string[] = [];
  let current = '';
  for (let i = 0; i < text.length; i++) {
    if (text.startsWith('\r\x1b[2K', i)) {
      current = '';
      i += 4;
    } else if (text[i] === '\n') {
      lines.push(current);
      current = '';
    } else current += text[i];
  }
  if (current) lines.push(current);
  return lines;
}

describe('Progress on a terminal', () => {
  it('redraws one line in place with count/total, percent, rate and ETA, and ends it with a newline', () => {
    const stream = fakeStream(true);
    const clock = fakeClock();
    const progress = new Progress({ label: 'sending', total: 1_000, unit: 'messages', stream, now: clock.now });
    clock.advance(2_000);
    progress.update(250);
    expect(stream.chunks.at(-1)).toBe('\r\x1b[2Ksending: 250/1,000 messages, 25 %, 125/s, ETA 6.0 s');
    expect(stream.text()).not.toContain('\n');
    clock.advance(6_000);
    progress.update(1_000);
    progress.done('0 failed');
    expect(stream.text().endsWith('\n')).toBe(true);
    expect(screen(stream.text())).toEqual(['sending: 1,000/1,000 messages, in 8.0 s, 125 messages/s, 0 failed']);
  });

  it('redraws at most 10 times a second however often it is updated', () => {
    const stream = fakeStream(true);
    const clock = fakeClock();
    const progress = new Progress({ label: 'x', total: 10_000, stream, now: clock.now });
    const before = stream.chunks.length;
    // 1,000 updates over one second: one every millisecond.
    for (let i = 1; i <= 1_000; i++) {
      clock.advance(1);
      progress.update(i);
    }
    const draws = stream.chunks.length - before;
    expect(draws).toBeLessThanOrEqual(1_000 / TTY_REDRAW_MS);
    expect(draws).toBeGreaterThanOrEqual(9);
    // The final line is printed even when the last update fell inside the throttle window.
    clock.advance(1);
    progress.update(10_000);
    progress.done();
    expect(screen(stream.text()).at(-1)).toMatch(/^x: 10,000\/10,000 items, in 1\.0 s/);
  });

  it('keeps its line narrower than the terminal, so that the carriage return redraws all of it', () => {
    const stream = fakeStream(true, 40);
    const clock = fakeClock();
    const progress = new Progress({ label: 'a long label for a narrow terminal', total: 100, stream, now: clock.now });
    clock.advance(1_000);
    progress.update(50, 'a note that makes it longer still');
    for (const line of screen(stream.text())) expect(line.length).toBeLessThan(40);
  });

  it('prints a line of its own above the progress line and redraws the progress line after it', () => {
    const stream = fakeStream(true);
    const clock = fakeClock();
    const progress = new Progress({ label: 'start', total: 4, unit: 'steps', stream, now: clock.now, rate: false });
    clock.advance(500);
    progress.tick(1, 'Azurite');
    progress.log('Azurite: blob :10000');
    const shown = screen(stream.text());
    expect(shown[0]).toBe('Azurite: blob :10000');
    expect(shown[1]).toBe('start: 1/4 steps, 25 % (Azurite)');
    clock.advance(500);
    progress.update(4);
    progress.done();
    expect(screen(stream.text()).at(-1)).toBe('start: 4/4 steps, in 1.0 s');
  });
});

describe('Progress in a log (no terminal)', () => {
  it('prints plain lines at each 10 % and no control characters', () => {
    const stream = fakeStream(false);
    const clock = fakeClock();
    const progress = new Progress({ label: 'fan-out', total: 1_000, unit: 'recipients', stream, now: clock.now });
    for (let i = 1; i <= 1_000; i++) {
      clock.advance(1);
      progress.update(i);
    }
    progress.done();
    const text = stream.text();
    expect(text).not.toMatch(/[\r\x1b]/);
    const lines = text.trimEnd().split('\n');
    // The start line, one per 10 % step (10 … 100 %), the final line.
    expect(lines).toHaveLength(12);
    expect(lines[0]).toBe('fan-out: 0/1,000 recipients, 0 %');
    expect(lines[1]).toMatch(/^fan-out: 100\/1,000 recipients, 10 %, 1,000\/s, ETA 900 ms$/);
    expect(lines.at(-1)).toBe('fan-out: 1,000/1,000 recipients, in 1.0 s, 1,000 recipients/s');
  });

  it('prints a line every 5 s while the count moves slowly, and none while it stands still', () => {
    const stream = fakeStream(false);
    const clock = fakeClock();
    const progress = new Progress({ label: 'drain', total: 10_000, stream, now: clock.now });
    // 20 s at one unit a second: 0.2 % in all, no 10 % step, so only the 5 s interval prints.
    for (let s = 1; s <= 20; s++) {
      clock.advance(1_000);
      progress.update(s);
    }
    expect(stream.text().trimEnd().split('\n')).toHaveLength(1 + 20_000 / LOG_INTERVAL_MS);
    const before = stream.chunks.length;
    for (let s = 0; s < 20; s++) {
      clock.advance(1_000);
      progress.update(20);
    }
    expect(stream.chunks.length).toBe(before);
  });

  it('shows the recent rate and an ETA from it when the pace changes, and the average on the final line', () => {
    const stream = fakeStream(false);
    const clock = fakeClock();
    const progress = new Progress({ label: 'drain', total: 3_000, stream, now: clock.now });
    // 20 s at 100 a second, then 20 s at 10 a second.
    for (let s = 1; s <= 20; s++) {
      clock.advance(1_000);
      progress.update(s * 100);
    }
    for (let s = 1; s <= 20; s++) {
      clock.advance(1_000);
      progress.update(2_000 + s * 10);
    }
    expect(stream.chunks.at(-1)).toBe('drain: 2,200/3,000 items, 73 %, 10.0/s, ETA 1m 20s\n');
    progress.done();
    expect(stream.chunks.at(-1)).toBe('drain: 2,200/3,000 items, in 40.0 s, 55.0 items/s\n');
  });

  it('without a total, shows the count and rate', () => {
    const stream = fakeStream(false);
    const clock = fakeClock();
    const progress = new Progress({ label: 'polling', unit: 'messages', stream, now: clock.now });
    clock.advance(LOG_INTERVAL_MS);
    progress.update(10);
    expect(stream.chunks.at(-1)).toBe('polling: 10 messages, 2.0/s\n');
  });

  it('PROGRESS_TTY=1 makes a relayed child draw as on a terminal; an explicit option wins over both', () => {
    const previous = process.env.PROGRESS_TTY;
    process.env.PROGRESS_TTY = '1';
    try {
      const relayed = fakeStream(false);
      new Progress({ label: 'child', total: 2, stream: relayed }).update(1);
      expect(relayed.text()).toContain('\r\x1b[2K');
      const forced = fakeStream(true);
      new Progress({ label: 'child', total: 2, stream: forced, tty: false }).update(1);
      expect(forced.text()).not.toContain('\r');
    } finally {
      if (previous === undefined) delete process.env.PROGRESS_TTY;
      else process.env.PROGRESS_TTY = previous;
    }
  });
});

describe('formatDuration', () => {
  it('reads as a person would say it', () => {
    expect(formatDuration(850)).toBe('850 ms');
    expect(formatDuration(12_340)).toBe('12.3 s');
    expect(formatDuration(245_000)).toBe('4m 05s');
    expect(formatDuration(3_720_000)).toBe('1h 02m');
    expect(formatDuration(Number.POSITIVE_INFINITY)).toBe('?');
  });
});
