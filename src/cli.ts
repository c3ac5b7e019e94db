/** The m365-mailer command line: `send` one message inline with the app's own settings, or run the `doctor`. */
import { readFileSync, statSync } from 'node:fs';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { BASIC_AUTH_DEPRECATION, exportSettings, loadConfig, readSettings } from './config';
import { MailError, ensureError, type ClassifiedError } from './errors';
import { createLogger } from './logger';
import { createMailer } from './sender/senderServices';
import { MAX_ATTACHMENTS, parseMessage, type MailMessage } from './message';
import { Redactor, registerSecretSettings } from './redact';
import { DOCTOR_USAGE, DoctorUsageError, parseDoctorArgs, runDoctorCommand } from './doctor/command';

export const EXIT_OK = 0;
export const EXIT_SEND_FAILED = 1;
export const EXIT_USAGE = 2;

const USAGE = `Usage:
  m365-mailer send --to <address> [--to …] [--cc …] [--bcc …] [--from <address>] [--reply-to <address>]
                   --subject <text> (--text <text> | --html <html> | --text-file F | --html-file F) [--attach FILE …]
                   [--header "X-Name: value" …] [--json]
${DOCTOR_USAGE}

Settings come from the environment and from local.settings.json "Values" in the current directory
(never read when WEBSITE_INSTANCE_ID is set, i.e. in Azure).
Exit status: 0 sent (250) or no check failed, 1 send failed (classified error and hint printed) or a check
failed, 2 bad usage or settings.`;

/** What the CLI writes; injectable so tests capture it. */
export interface CliIo {
  stdout(text: string): void;
  stderr(text: string): void;
  env: Record<string, string | undefined>;
  cwd: string;
}

/** A command-line mistake (exit 2 with the usage). `option` names what to fix: `--to`, `--header`, or `(args)`. */
export class CliUsageError extends Error {
  constructor(
    message: string,
    readonly option: string,
  ) {
    super(message);
  }
}

/** Files named on the command line (bodies and attachments together) are bounded before any is read. */
export const MAX_CLI_FILE_BYTES = 36_700_160;

/** What `send` validates a message against: from the settings (runCli) or given (tests). */
export interface SendLimits {
  defaultFrom: string;
  maxRecipients: number;
  maxMessageBytes: number;
}

export interface SendCommand {
  message: MailMessage;
  /** --json: print a machine-readable result. */
  json: boolean;
}

const SEND_OPTIONS = {
  to: { type: 'string', multiple: true },
  cc: { type: 'string', multiple: true },
  bcc: { type: 'string', multiple: true },
  from: { type: 'string' },
  'reply-to': { type: 'string' },
  subject: { type: 'string' },
  text: { type: 'string' },
  html: { type: 'string' },
  'text-file': { type: 'string' },
  'html-file': { type: 'string' },
  attach: { type: 'string', multiple: true },
  header: { type: 'string', multiple: true },
  json: { type: 'boolean' },
} as const;

/** A file argument, resolved against `cwd`, with its size. */
function statFileArg(
  option: string,
  file: string,
  cwd: string,
): { option: string; file: string; full: string; size: number } {
  const full = path.resolve(cwd, file);
  let size: number;
  try {
    const stat = statSync(full);
    if (!stat.isFile()) throw new Error('not a file');
    size = stat.size;
  } catch {
    throw new CliUsageError(`${option}: cannot read ${file} (no such file)`, option);
  }
  if (size > MAX_CLI_FILE_BYTES) {
    throw new CliUsageError(`${option}: ${file} is ${size} bytes; the limit is ${MAX_CLI_FILE_BYTES}`, option);
  }
  return { option, file, full, size };
}

function readFileArg(arg: { option: string; file: string; full: string }): Buffer {
  try {
    return readFileSync(arg.full);
  } catch {
    throw new CliUsageError(`${arg.option}: cannot read ${arg.file}`, arg.option);
  }
}

/** The `send` arguments as the message schema's input (unvalidated), and --json. Reads the files it names. */
function parseSendArgs(args: string[], cwd: string): { input: Record<string, unknown>; json: boolean } {
  let values;
  try {
    ({ values } = parseArgs({ args, strict: true, allowPositionals: false, options: SEND_OPTIONS }));
  } catch (error) {
    throw new CliUsageError((error as Error).message, '(args)');
  }
  if (!values.to && !values.cc && !values.bcc) throw new CliUsageError('--to is required (or --cc/--bcc)', '--to');
  if (values.subject === undefined) throw new CliUsageError('--subject is required', '--subject');
  if ((values.attach?.length ?? 0) > MAX_ATTACHMENTS) {
    throw new CliUsageError(`--attach: at most ${MAX_ATTACHMENTS} files`, '--attach');
  }
  // Every file is sized before any is read: together they must fit in one message.
  const textFile =
    values.text === undefined && values['text-file'] ? statFileArg('--text-file', values['text-file'], cwd) : undefined;
  const htmlFile =
    values.html === undefined && values['html-file'] ? statFileArg('--html-file', values['html-file'], cwd) : undefined;
  const attachments = (values.attach ?? []).map((file) => statFileArg('--attach', file, cwd));
  const total = [textFile, htmlFile, ...attachments].reduce((sum, f) => sum + (f?.size ?? 0), 0);
  if (total > MAX_CLI_FILE_BYTES) {
    throw new CliUsageError(
      `the files given are ${total} bytes together; the limit is ${MAX_CLI_FILE_BYTES}`,
      '--attach',
    );
  }
  const text = values.text ?? (textFile ? readFileArg(textFile).toString('utf8') : undefined);
  const html = values.html ?? (htmlFile ? readFileArg(htmlFile).toString('utf8') : undefined);
  if (text === undefined && html === undefined && !values.attach)
    throw new CliUsageError('one of --text, --html or --attach is required', '--text');
  const headers = new Map<string, string>();
  for (const header of values.header ?? []) {
    const colon = header.indexOf(':');
    if (colon < 1) throw new CliUsageError(`--header "${header.slice(0, 200)}": expected "X-Name: value"`, '--header');
    const name = header.slice(0, colon).trim();
    if (headers.has(name)) throw new CliUsageError(`--header: ${name.slice(0, 200)} is given twice`, '--header');
    headers.set(name, header.slice(colon + 1).trim());
  }
  const input = {
    ...(values.to ? { to: values.to } : {}),
    ...(values.cc ? { cc: values.cc } : {}),
    ...(values.bcc ? { bcc: values.bcc } : {}),
    ...(values.from ? { from: values.from } : {}),
    ...(values['reply-to'] ? { replyTo: values['reply-to'] } : {}),
    subject: values.subject,
    ...(text !== undefined ? { text } : {}),
    ...(html !== undefined ? { html } : {}),
    ...(attachments.length
      ? {
          attachments: attachments.map((file) => ({
            filename: path.basename(file.file),
            contentBase64: readFileArg(file).toString('base64'),
          })),
        }
      : {}),
    // fromEntries, so that a name such as __proto__ is a key the schema sees (and refuses), not a prototype.
    ...(headers.size ? { headers: Object.fromEntries(headers) } : {}),
  };
  return { input, json: values.json ?? false };
}

/**
 * Parses `send` arguments into a validated message, without sending it. Throws CliUsageError for bad usage (before
 * `limits` is asked for), then MailError INVALID_MESSAGE whose details name each field (`to[0]`, `headers.X-A`).
 * `limits` may be a function: runCli loads the settings there, so that a usage error is reported before a settings
 * error, as before.
 */
export function parseSendCommand(
  args: string[],
  options: { cwd: string; limits: SendLimits | (() => SendLimits) },
): SendCommand {
  const { input, json } = parseSendArgs(args, options.cwd);
  const limits = typeof options.limits === 'function' ? options.limits() : options.limits;
  return { message: parseMessage(input, limits), json };
}

function printError(io: CliIo, json: boolean, error: ClassifiedError, redactor: Redactor): void {
  if (json) {
    io.stdout(redactor.redact(JSON.stringify({ ok: false, error })) + '\n');
    return;
  }
  const lines = [
    `Failed: ${error.code}${error.transient ? ' (transient: retrying later may succeed)' : ''}`,
    `  ${error.message}`,
  ];
  if (error.smtp) lines.push(`  SMTP: ${error.smtp.response}`);
  for (const d of error.details ?? []) lines.push(`  ${d.path}: ${d.message}`);
  lines.push(`  Fix: ${error.hint}`);
  io.stderr(redactor.redact(lines.join('\n')) + '\n');
}

/** Runs the CLI and returns its exit status. */
export async function runCli(argv: string[], io: CliIo): Promise<number> {
  const [command, ...rest] = argv;
  if (!command || command === '--help' || command === '-h' || command === 'help') {
    io.stdout(`${USAGE}\n`);
    return command ? EXIT_OK : EXIT_USAGE;
  }
  if (command === 'doctor') return runDoctorCli(rest, io);
  if (command !== 'send') {
    io.stderr(`Unknown command "${command}".\n${USAGE}\n`);
    return EXIT_USAGE;
  }
  const json = rest.includes('--json');
  const redactor = new Redactor();
  let mailer: ReturnType<typeof createMailer> | undefined;
  try {
    const { message } = parseSendCommand(rest, {
      cwd: io.cwd,
      limits: () => {
        const settings = readSettings(io.env, path.join(io.cwd, 'local.settings.json'));
        // The account key and IDENTITY_HEADER are redacted from everything printed from here on; process.env too,
        // because the Azure SDK reads IDENTITY_HEADER there.
        registerSecretSettings(redactor, settings);
        registerSecretSettings(redactor, process.env);
        exportSettings(settings);
        const config = loadConfig(settings);
        mailer = createMailer(config, {
          redactor,
          roleName: 'm365-mailer-cli',
          // The CLI prints outcomes itself; the log carries only what it cannot say.
          logger: createLogger({ redactor, write: (line) => io.stderr(`${line}\n`), level: 'error' }),
        });
        if (config.auth.mode === 'basic' && !json) io.stderr(`Warning: ${BASIC_AUTH_DEPRECATION}\n`);
        return {
          defaultFrom: config.sender,
          maxRecipients: config.limits.maxRecipients,
          maxMessageBytes: config.limits.maxMessageBytes,
        };
      },
    });
    if (!mailer) throw new Error('the settings were not loaded');
    const result = await mailer.sender.send(message, { source: 'cli' });
    if (json)
      io.stdout(
        JSON.stringify({
          ok: true,
          messageId: result.messageId,
          smtp: result.smtp,
          accepted: result.accepted,
          rejected: result.rejected,
        }) + '\n',
      );
    else {
      io.stdout(`Sent ${result.messageId} in ${result.durationMs} ms: ${result.smtp.response}\n`);
      if (result.rejected.length)
        io.stdout(`  ${result.rejected.length} recipient(s) refused by the server: ${result.rejected.join(', ')}\n`);
    }
    return EXIT_OK;
  } catch (thrown) {
    if (thrown instanceof CliUsageError) {
      if (json) io.stdout(JSON.stringify({ ok: false, error: { code: 'USAGE', message: thrown.message } }) + '\n');
      else io.stderr(`m365-mailer send: ${thrown.message}\n\n${USAGE}\n`);
      return EXIT_USAGE;
    }
    const error =
      thrown instanceof MailError ? thrown : new MailError('UNKNOWN', ensureError(thrown).message, { cause: thrown });
    printError(io, json, error.toJSON(), redactor);
    return error.code === 'CONFIG_INVALID' || error.code === 'INVALID_MESSAGE' ? EXIT_USAGE : EXIT_SEND_FAILED;
  } finally {
    await mailer?.close().catch(() => {});
  }
}

/** `m365-mailer doctor`: every check, each printed as it completes; exit 1 when one failed, 2 for bad usage. */
async function runDoctorCli(args: string[], io: CliIo): Promise<number> {
  let command;
  try {
    command = parseDoctorArgs(args);
  } catch (error) {
    if (!(error instanceof DoctorUsageError)) throw error;
    if (args.includes('--json'))
      io.stdout(
        JSON.stringify({ ok: false, error: { code: 'USAGE', option: error.option, message: error.message } }) + '\n',
      );
    else io.stderr(`m365-mailer doctor: ${error.message}\n\n${USAGE}\n`);
    return EXIT_USAGE;
  }
  const redactor = new Redactor();
  return runDoctorCommand(command, {
    redactor,
    write: (text) => io.stdout(text),
    settings: () => {
      const settings = readSettings(io.env, path.join(io.cwd, 'local.settings.json'));
      registerSecretSettings(redactor, settings);
      registerSecretSettings(redactor, process.env);
      exportSettings(settings);
      return settings;
    },
  });
}
