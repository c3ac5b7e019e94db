/** The one logger: structured lines on stderr or an invocation's context, every line redacted and without addresses. */
import { defaultRedactor, type Redactor } from './redact';

export type LogLevel = 'debug' | 'info' | 'warn' | 'error';
const LEVELS: Record<LogLevel, number> = { debug: 10, info: 20, warn: 30, error: 40 };

export interface Logger {
  debug(message: string, fields?: Record<string, unknown>): void;
  info(message: string, fields?: Record<string, unknown>): void;
  warn(message: string, fields?: Record<string, unknown>): void;
  error(message: string, fields?: Record<string, unknown>): void;
}

/** Letters, digits, `.` and `-`: a domain's characters (and most of a local part's). */
function isDomainChar(code: number): boolean {
  return (
    (code >= 48 && code <= 57) ||
    (code >= 65 && code <= 90) ||
    (code >= 97 && code <= 122) ||
    code === 46 ||
    code === 45
  );
}
/** The special characters RFC 5322 allows in a local part (`!#$%&'*+/=?^_\`{|}~`). */
const LOCAL_SPECIALS = new Set("!#$%&'*+/=?^_`{|}~".split('').map((c) => c.charCodeAt(0)));
function isLocalChar(code: number): boolean {
  return isDomainChar(code) || LOCAL_SPECIALS.has(code);
}
/** What an address in a log line becomes. */
export const ADDRESS_PLACEHOLDER = '[address]';

/**
 * `text` with every address-shaped run (`local@domain.tld`) replaced by {@link ADDRESS_PLACEHOLDER}: a server reply or
 * an error message quoted in a log line can name a recipient or the mailbox, and logs keep no addresses. Scans outward
 * from each `@` without a regex over the whole text: linear in its length.
 */
export function scrubAddresses(text: string): string {
  if (!text.includes('@')) return text;
  let out = '';
  let copied = 0;
  let at = text.indexOf('@');
  while (at !== -1) {
    let start = at;
    while (start > copied && isLocalChar(text.charCodeAt(start - 1))) start--;
    let end = at + 1;
    while (end < text.length && isDomainChar(text.charCodeAt(end))) end++;
    // A trailing dot ends the sentence, not the domain.
    while (end > at + 1 && text[end - 1] === '.') end--;
    const domain = text.slice(at + 1, end);
    if (start < at && domain.includes('.') && !domain.startsWith('.')) {
      out += text.slice(copied, start) + ADDRESS_PLACEHOLDER;
      copied = end;
    }
    at = text.indexOf('@', Math.max(end, at + 1));
  }
  return out + text.slice(copied);
}

/**
 * Log methods by level, as a Functions `InvocationContext` has them (`context.debug/info/warn/error`): the host
 * attributes every line written through them to the invocation.
 */
export type LevelSink = Record<LogLevel, (line: string) => void>;

export interface LoggerOptions {
  level?: LogLevel;
  redactor?: Redactor;
  component?: string;
  /** Where each line goes; default stderr. Lines carry their time and level. */
  write?: (line: string) => void;
  /**
   * Instead of `write`: one method per level, which stamps the time and level itself (an invocation's context).
   * Lines carry the component and message only.
   */
  sink?: LevelSink;
}

/**
 * A logger writing one line per entry to `write` (stderr by default) or to a `sink`, redacted and with addresses
 * replaced.
 * `fields` must hold ids and codes only; the redactor is the safety net, not the plan.
 */
export function createLogger(options: LoggerOptions = {}): Logger {
  const min = LEVELS[options.level ?? (process.env.MAIL_LOG_LEVEL as LogLevel | undefined) ?? 'info'] ?? LEVELS.info;
  const redactor = options.redactor ?? defaultRedactor;
  const write = options.write ?? ((line: string) => process.stderr.write(`${line}\n`));
  const { sink } = options;
  const log = (level: LogLevel) => (message: string, fields?: Record<string, unknown>) => {
    if (LEVELS[level] < min) return;
    const extra = fields && Object.keys(fields).length > 0 ? ` ${JSON.stringify(fields)}` : '';
    const text = `${options.component ?? 'm365-mailer'}: ${message}${extra}`;
    if (sink) sink[level](scrubAddresses(redactor.redact(text)));
    else write(scrubAddresses(redactor.redact(`${new Date().toISOString()} ${level.toUpperCase()} ${text}`)));
  };
  return { debug: log('debug'), info: log('info'), warn: log('warn'), error: log('error') };
}

/** A logger that drops everything (library default when the caller passes none). */
export const silentLogger: Logger = { debug() {}, info() {}, warn() {}, error() {} };
