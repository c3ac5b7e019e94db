/** The one logger: structured lines on stderr, every line passed through the Redactor. */
import { defaultRedactor, type Redactor } from './redact';

export type LogLevel = 'debug' | 'info' | 'warn' | 'error';
const LEVELS: Record<LogLevel, number> = { debug: 10, info: 20, warn: 30, error: 40 };

export interface Logger {
  debug(message: string, fields?: Record<string, unknown>): void;
  info(message: string, fields?: Record<string, unknown>): void;
  warn(message: string, fields?: Record<string, unknown>): void;
  error(message: string, fields?: Record<string, unknown>): void;
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
 * A logger writing one line per entry to `write` (stderr by default) or to a `sink`, redacted.
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
    if (sink) sink[level](redactor.redact(text));
    else write(redactor.redact(`${new Date().toISOString()} ${level.toUpperCase()} ${text}`));
  };
  return { debug: log('debug'), info: log('info'), warn: log('warn'), error: log('error') };
}

/** A logger that drops everything (library default when the caller passes none). */
export const silentLogger: Logger = { debug() {}, info() {}, warn() {}, error() {} };
