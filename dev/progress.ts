/** A progress reporter for long local runs (benchmarks, `npm run dev`): one updating line on a terminal, plain lines in a log. */

/** Where progress goes: process.stderr, or anything with its `write` and, for a terminal, `isTTY` and `columns`. */
export interface ProgressStream {
  write(chunk: string): unknown;
  isTTY?: boolean;
  columns?: number;
}

export interface ProgressOptions {
  /** What is being done, e.g. "pacing: draining the outbox"; it starts every line. */
  label: string;
  /** How many units make the whole; without it the line shows the count and rate only. */
  total?: number;
  /** What is counted, e.g. "messages"; default "items". */
  unit?: string;
  /** Default process.stderr. */
  stream?: ProgressStream;
  /**
   * Redraw one line in place (true) or print plain lines (false). Default: the stream's `isTTY`, unless the
   * environment says otherwise with PROGRESS_TTY=1 or 0 (a child process whose stderr the parent relays to a terminal).
   */
  tty?: boolean;
  /** The clock, in milliseconds; default Date.now. */
  now?: () => number;
  /** Show the rate and ETA (default true); a few uneven steps have neither. */
  rate?: boolean;
}

/** On a terminal, the line is redrawn at most this often (10 updates a second). */
export const TTY_REDRAW_MS = 100;
/** In a log, a line is printed at each step of this many percent of the total… */
export const LOG_PERCENT_STEP = 10;
/** …or when this long has passed since the last line (milliseconds), whichever comes first. */
export const LOG_INTERVAL_MS = 5_000;

/** The rate and ETA are over this recent span (milliseconds), so that they follow a run whose pace changes. */
export const RATE_WINDOW_MS = 10_000;
/** Samples for the recent rate are kept at most this often. */
const RATE_SAMPLE_MS = 250;

/** Carriage return, then clear the whole line (ANSI EL2). */
const REDRAW = '\r\x1b[2K';

const integer = new Intl.NumberFormat('en-US', { maximumFractionDigits: 0 });

/** 1234567 → "1,234,567". */
export function formatCount(n: number): string {
  return integer.format(n);
}

/** A duration for a person: "850 ms", "12.3 s", "4m 05s", "1h 02m". */
export function formatDuration(ms: number): string {
  if (!Number.isFinite(ms) || ms < 0) return '?';
  if (ms < 1_000) return `${Math.round(ms)} ms`;
  if (ms < 60_000) return `${(ms / 1_000).toFixed(1)} s`;
  const seconds = Math.round(ms / 1_000);
  if (seconds < 3_600) return `${Math.floor(seconds / 60)}m ${String(seconds % 60).padStart(2, '0')}s`;
  const minutes = Math.round(seconds / 60);
  return `${Math.floor(minutes / 60)}h ${String(minutes % 60).padStart(2, '0')}m`;
}

function formatRate(perSecond: number): string {
  if (!Number.isFinite(perSecond)) return '?';
  return perSecond >= 100 ? formatCount(perSecond) : perSecond.toFixed(1);
}

function ttyFromEnvironment(stream: ProgressStream): boolean {
  const forced = process.env.PROGRESS_TTY;
  if (forced === '1') return true;
  if (forced === '0') return false;
  return stream.isTTY === true;
}

/**
 * Reports how far a long run is: count/total, percent, rate and ETA. On a terminal it redraws one line in place (at
 * most every TTY_REDRAW_MS); otherwise it prints a line at each LOG_PERCENT_STEP % or LOG_INTERVAL_MS, so that a CI
 * log stays readable. `done()` always prints the final line. Lines carry counts and labels only: never put an
 * address, subject or token in a label or note.
 */
export class Progress {
  readonly #label: string;
  readonly #total: number | undefined;
  readonly #unit: string;
  readonly #stream: ProgressStream;
  readonly #tty: boolean;
  readonly #now: () => number;
  readonly #rate: boolean;
  readonly #startedAt: number;
  #count = 0;
  #note = '';
  #lastDrawAt = Number.NEGATIVE_INFINITY;
  #lastLineAt: number;
  #lastLineCount = -1;
  #lastStep = -1;
  #drawn = false;
  #finished = false;
  /** (time, count) samples over the last RATE_WINDOW_MS and one before it. */
  #samples: Array<{ at: number; count: number }> = [];

  constructor(options: ProgressOptions) {
    this.#label = options.label;
    this.#total = options.total !== undefined && options.total > 0 ? options.total : undefined;
    this.#unit = options.unit ?? 'items';
    this.#stream = options.stream ?? process.stderr;
    this.#tty = options.tty ?? ttyFromEnvironment(this.#stream);
    this.#now = options.now ?? Date.now;
    this.#rate = options.rate ?? true;
    this.#startedAt = this.#now();
    this.#lastLineAt = this.#startedAt;
    this.#samples.push({ at: this.#startedAt, count: 0 });
    this.#render(true);
  }

  /** How many units are done so far. */
  get count(): number {
    return this.#count;
  }

  /** Sets the count (it never goes back) and, optionally, a short note on what is happening now. */
  update(count: number, note?: string): void {
    if (this.#finished) return;
    this.#count = Math.max(this.#count, count);
    if (note !== undefined) this.#note = note;
    const at = this.#now();
    if (at - (this.#samples.at(-1)?.at ?? at) >= RATE_SAMPLE_MS) {
      this.#samples.push({ at, count: this.#count });
      while (this.#samples.length > 2 && at - (this.#samples[1]?.at ?? at) >= RATE_WINDOW_MS) this.#samples.shift();
    }
    this.#render(false);
  }

  /** Adds `n` (default 1) to the count. */
  tick(n = 1, note?: string): void {
    this.update(this.#count + n, note);
  }

  /** Prints a line of its own (a step's result, a warning) without breaking the progress line. */
  log(line: string): void {
    if (this.#tty && this.#drawn) this.#stream.write(REDRAW);
    this.#stream.write(`${line}\n`);
    this.#drawn = false;
    if (this.#tty && !this.#finished) this.#draw(this.#now());
  }

  /** The final line, always printed: the count, the time taken and the average rate; `summary` is appended. */
  done(summary?: string): void {
    if (this.#finished) return;
    this.#finished = true;
    const elapsed = this.#now() - this.#startedAt;
    const parts = [this.#countText()];
    parts.push(`in ${formatDuration(elapsed)}`);
    if (this.#rate && elapsed > 0 && this.#count > 0) {
      parts.push(`${formatRate((this.#count * 1000) / elapsed)} ${this.#unit}/s`);
    }
    if (summary) parts.push(summary);
    const line = `${this.#label}: ${parts.join(', ')}`;
    this.#stream.write(`${this.#tty && this.#drawn ? REDRAW : ''}${line}\n`);
    this.#drawn = false;
  }

  #countText(): string {
    if (this.#total === undefined) return `${formatCount(this.#count)} ${this.#unit}`;
    return `${formatCount(this.#count)}/${formatCount(this.#total)} ${this.#unit}`;
  }

  #line(at: number): string {
    const elapsed = at - this.#startedAt;
    const parts = [this.#countText()];
    const total = this.#total;
    if (total !== undefined) parts.push(`${((Math.min(this.#count, total) / total) * 100).toFixed(0)} %`);
    if (this.#rate && elapsed > 0 && this.#count > 0) {
      // Over the recent window once it spans a second; over the whole run before that.
      const since = this.#samples[0] ?? { at: this.#startedAt, count: 0 };
      const recent = at - since.at >= 1_000;
      const perSecond = recent
        ? ((this.#count - since.count) * 1000) / (at - since.at)
        : (this.#count * 1000) / elapsed;
      parts.push(`${formatRate(perSecond)}/s`);
      if (total !== undefined && this.#count < total && perSecond > 0) {
        parts.push(`ETA ${formatDuration(((total - this.#count) / perSecond) * 1000)}`);
      }
    }
    return `${this.#label}: ${parts.join(', ')}${this.#note ? ` (${this.#note})` : ''}`;
  }

  #draw(at: number): void {
    let line = this.#line(at);
    // A line wider than the terminal wraps, and the carriage return would then redraw only its last row.
    const columns = this.#stream.columns;
    if (columns !== undefined && columns > 1 && line.length > columns - 1) line = `${line.slice(0, columns - 2)}…`;
    this.#stream.write(`${REDRAW}${line}`);
    this.#drawn = true;
    this.#lastDrawAt = at;
  }

  #render(first: boolean): void {
    const at = this.#now();
    if (this.#tty) {
      if (first || at - this.#lastDrawAt >= TTY_REDRAW_MS) this.#draw(at);
      return;
    }
    const total = this.#total;
    const step = total !== undefined ? Math.floor(((this.#count / total) * 100) / LOG_PERCENT_STEP) : -1;
    const due =
      first ||
      (total !== undefined && step > this.#lastStep) ||
      (at - this.#lastLineAt >= LOG_INTERVAL_MS && this.#count !== this.#lastLineCount);
    if (!due) return;
    this.#stream.write(`${this.#line(at)}\n`);
    this.#lastLineAt = at;
    this.#lastLineCount = this.#count;
    this.#lastStep = Math.max(this.#lastStep, step);
  }
}
