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
 * A logger writing one line per entry to `write` (stderr by default), redacted.
 * `fields` must hold ids and codes only; the redactor is the safety net, not the plan.
 */
export function createLogger(
  options: { level?: LogLevel; redactor?: Redactor; write?: (line: string) => void; component?: string } = {},
): Logger {
  const min = LEVELS[options.level ?? (process.env.MAIL_LOG_LEVEL as LogLevel | undefined) ?? 'info'] ?? LEVELS.info;
  const redactor = options.redactor ?? defaultRedactor;
  const write = options.write ?? ((line: string) => process.stderr.write(`${line}\n`));
  const log = (level: LogLevel) => (message: string, fields?: Record<string, unknown>) => {
    if (LEVELS[level] < min) return;
    const extra = fields && Object.keys(fields).length > 0 ? ` ${JSON.stringify(fields)}` : '';
    write(
      redactor.redact(
        `${new Date().toISOString()} ${level.toUpperCase()} ${options.component ?? 'm365-mailer'}: ${message}${extra}`,
      ),
    );
  };
  return { debug: log('debug'), info: log('info'), warn: log('warn'), error: log('error') };
}

/** A logger that drops everything (library default when the caller passes none). */
export const silentLogger: Logger = { debug() {}, info() {}, warn() {}, error() {} };
