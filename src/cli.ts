/** The m365-mailer command line: `send` one message inline with the app's own settings. */
import { readFileSync, statSync } from 'node:fs';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { exportSettings, loadConfig, readSettings } from './config';
import { MailError, ensureError, type ClassifiedError } from './errors';
import { BASIC_AUTH_DEPRECATION } from './sender';
import { createLogger } from './logger';
import { createMailer } from './mailer';
import { parseMessage } from './message';
import { Redactor, registerSecretSettings } from './redact';

export const EXIT_OK = 0;
export const EXIT_SEND_FAILED = 1;
export const EXIT_USAGE = 2;

const USAGE = `Usage:
  m365-mailer send --to <address> [--to …] [--cc …] [--bcc …] [--from <address>] [--reply-to <address>]
                   --subject <text> (--text <text> | --html <html> | --text-file F | --html-file F) [--attach FILE …]
                   [--header "X-Name: value" …] [--json]

Settings come from the environment and from local.settings.json "Values" in the current directory
(never read when WEBSITE_INSTANCE_ID is set, i.e. in Azure).
Exit status: 0 sent (250), 1 send failed (classified error and hint printed), 2 bad usage or settings.`;

/** What the CLI writes; injectable so tests capture it. */
export interface CliIo {
  stdout(text: string): void;
  stderr(text: string): void;
  env: Record<string, string | undefined>;
  cwd: string;
}

class UsageError extends Error {}

/** Attachments read from disk are bounded before reading. */
const MAX_CLI_FILE_BYTES = 36_700_160;

function readFileArg(option: string, file: string, cwd: string): Buffer {
  const full = path.resolve(cwd, file);
  let size: number;
  try {
    size = statSync(full).size;
  } catch {
    throw new UsageError(`${option}: cannot read ${file} (no such file)`);
  }
  if (size > MAX_CLI_FILE_BYTES)
    throw new UsageError(`${option}: ${file} is ${size} bytes; the limit is ${MAX_CLI_FILE_BYTES}`);
  return readFileSync(full);
}

function parseSendArgs(args: string[], cwd: string): Record<string, unknown> {
  let values;
  try {
    ({ values } = parseArgs({
      args,
      strict: true,
      allowPositionals: false,
      options: {
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
      },
    }));
  } catch (error) {
    throw new UsageError((error as Error).message);
  }
  if (!values.to && !values.cc && !values.bcc) throw new UsageError('--to is required (or --cc/--bcc)');
  if (values.subject === undefined) throw new UsageError('--subject is required');
  const text =
    values.text ??
    (values['text-file'] ? readFileArg('--text-file', values['text-file'], cwd).toString('utf8') : undefined);
  const html =
    values.html ??
    (values['html-file'] ? readFileArg('--html-file', values['html-file'], cwd).toString('utf8') : undefined);
  if (text === undefined && html === undefined && !values.attach)
    throw new UsageError('one of --text, --html or --attach is required');
  const headers: Record<string, string> = {};
  for (const header of values.header ?? []) {
    const colon = header.indexOf(':');
    if (colon < 1) throw new UsageError(`--header "${header}": expected "X-Name: value"`);
    headers[header.slice(0, colon).trim()] = header.slice(colon + 1).trim();
  }
  return {
    ...(values.to ? { to: values.to } : {}),
    ...(values.cc ? { cc: values.cc } : {}),
    ...(values.bcc ? { bcc: values.bcc } : {}),
    ...(values.from ? { from: values.from } : {}),
    ...(values['reply-to'] ? { replyTo: values['reply-to'] } : {}),
    subject: values.subject,
    ...(text !== undefined ? { text } : {}),
    ...(html !== undefined ? { html } : {}),
    ...(values.attach
      ? {
          attachments: values.attach.map((file) => ({
            filename: path.basename(file),
            contentBase64: readFileArg('--attach', file, cwd).toString('base64'),
          })),
        }
      : {}),
    ...(Object.keys(headers).length ? { headers } : {}),
    json: values.json ?? false,
  };
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
  if (command !== 'send') {
    io.stderr(`Unknown command "${command}".\n${USAGE}\n`);
    return EXIT_USAGE;
  }
  const json = rest.includes('--json');
  const redactor = new Redactor();
  let input: Record<string, unknown>;
  try {
    input = parseSendArgs(rest, io.cwd);
  } catch (error) {
    if (error instanceof UsageError) {
      if (json) io.stdout(JSON.stringify({ ok: false, error: { code: 'USAGE', message: error.message } }) + '\n');
      else io.stderr(`m365-mailer send: ${error.message}\n\n${USAGE}\n`);
      return EXIT_USAGE;
    }
    throw error;
  }
  delete input.json;
  let mailer;
  try {
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
    const message = parseMessage(input, {
      defaultFrom: config.sender,
      maxRecipients: config.limits.maxRecipients,
      maxMessageBytes: config.limits.maxMessageBytes,
    });
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
    const error =
      thrown instanceof MailError ? thrown : new MailError('UNKNOWN', ensureError(thrown).message, { cause: thrown });
    printError(io, json, error.toJSON(), redactor);
    return error.code === 'CONFIG_INVALID' || error.code === 'INVALID_MESSAGE' ? EXIT_USAGE : EXIT_SEND_FAILED;
  } finally {
    await mailer?.close().catch(() => {});
  }
}
