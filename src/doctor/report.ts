/** The doctor's report: one result per check (pass/warn/fail/skip), printed as lines or as JSON, and its exit status. */
import type { MailErrorCode } from '../errors';

export type CheckStatus = 'pass' | 'warn' | 'fail' | 'skip';

/** One check's outcome. `fix` is empty when there is nothing to do. Never holds a secret or a token. */
export interface CheckResult {
  name: string;
  status: CheckStatus;
  detail: string;
  fix: string;
  /**
   * On a failure of the settings, key-vault, token or smtp-auth check: the app's error code (src/errors.ts), so that
   * GET /api/health (src/health/) can report it without the detail, which names hosts, secrets' names and addresses.
   * Not printed by the doctor (its detail already ends with it).
   */
  code?: MailErrorCode;
}

const LABELS: Record<CheckStatus, string> = { pass: 'PASS', warn: 'WARN', fail: 'FAIL', skip: 'SKIP' };

/** Width of the name column: the longest check name ('smtp-starttls'). */
export const NAME_WIDTH = 13;

/**
 * `text` with every control character (C0, DEL, C1) shown as `\xNN`: details quote what servers sent (DNS TXT
 * records, SMTP replies), which must not move the cursor or recolour the terminal.
 */
export function printable(text: string): string {
  let out = '';
  for (const char of text) {
    const code = char.codePointAt(0) ?? 0;
    out += code < 0x20 || (code >= 0x7f && code <= 0x9f) ? `\\x${code.toString(16).padStart(2, '0')}` : char;
  }
  return out;
}

/** One check as text: `FAIL  name           detail`, then each line of the fix as `Fix: …` (not for a pass). */
export function formatCheck(result: CheckResult): string {
  const lines = [`${LABELS[result.status]}  ${result.name.padEnd(NAME_WIDTH)}  ${printable(result.detail)}`];
  if (result.fix && result.status !== 'pass') {
    for (const line of result.fix.split('\n')) lines.push(`${' '.repeat(NAME_WIDTH + 8)}Fix: ${printable(line)}`);
  }
  return `${lines.join('\n')}\n`;
}

/** The last line: how many checks passed, warned, failed and were skipped. */
export function formatSummary(results: readonly CheckResult[]): string {
  const count = (status: CheckStatus) => results.filter((r) => r.status === status).length;
  return `${count('pass')} passed, ${count('warn')} warned, ${count('fail')} failed, ${count('skip')} skipped\n`;
}

/** Every check, then the summary. */
export function formatText(results: readonly CheckResult[]): string {
  return results.map(formatCheck).join('') + formatSummary(results);
}

/** One JSON object per line, one line per check: `{"name","status","detail","fix"}`. */
export function formatJson(results: readonly CheckResult[]): string {
  return results
    .map((r) => `${JSON.stringify({ name: r.name, status: r.status, detail: r.detail, fix: r.fix })}\n`)
    .join('');
}

/** 1 when any check failed, else 0 (warnings and skips do not fail the run). */
export function doctorExitCode(results: readonly CheckResult[]): number {
  return results.some((r) => r.status === 'fail') ? 1 : 0;
}
