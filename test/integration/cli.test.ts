/** The m365-mailer CLI: in process for the cases, and the built bundle as a real child process once. */
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { EXIT_OK, EXIT_SEND_FAILED, EXIT_USAGE, runCli } from '../../src/cli';
import { secretScanner } from '../support/secretScan';
import { applySandboxEnv, startSandbox, type Sandbox } from '../support/sandboxMailer';

const run = promisify(execFile);
let sandbox: Sandbox;
let cwd: string;
const outputs: string[] = [];
const tempDirs: string[] = [];

function tempDir(prefix: string): string {
  const dir = mkdtempSync(path.join(tmpdir(), prefix));
  tempDirs.push(dir);
  return dir;
}

async function cli(args: string[], env: Record<string, string | undefined> = sandbox.settings()) {
  let stdout = '';
  let stderr = '';
  const code = await runCli(args, {
    stdout: (t) => (stdout += t),
    stderr: (t) => (stderr += t),
    env,
    cwd,
  });
  outputs.push(stdout, stderr);
  return { code, stdout, stderr };
}

/** Runs the CLI in `dir` with exactly `env` as its environment. */
async function runCliIn(dir: string, args: string[], env: Record<string, string | undefined>) {
  let stdout = '';
  let stderr = '';
  const code = await runCli(args, {
    stdout: (t) => (stdout += t),
    stderr: (t) => (stderr += t),
    env,
    cwd: dir,
  });
  outputs.push(stdout, stderr);
  return { code, stdout, stderr };
}

beforeAll(async () => {
  sandbox = await startSandbox();
  applySandboxEnv(sandbox);
  cwd = tempDir('cli-');
  writeFileSync(path.join(cwd, 'report.csv'), 'a,b\n1,2\n');
});

afterAll(async () => {
  await sandbox.close();
  for (const dir of tempDirs) rmSync(dir, { recursive: true, force: true });
});

describe('m365-mailer send', () => {
  it('sends and exits 0, with the attachment from disk', async () => {
    const result = await cli([
      'send',
      '--to',
      'ops@example.com',
      '--subject',
      'Nightly report',
      '--text',
      'Attached.',
      '--attach',
      'report.csv',
    ]);
    expect(result.stderr).toBe('');
    expect(result.code).toBe(EXIT_OK);
    expect(result.stdout).toMatch(/^Sent <.+> in \d+ ms: 250 /);
    const received = sandbox.smtp.messages.at(-1)!;
    expect(received.parsed.subject).toBe('Nightly report');
    expect(received.parsed.attachments[0]?.filename).toBe('report.csv');
    expect(Buffer.from(received.parsed.attachments[0]!.content as ArrayBuffer).toString()).toBe('a,b\n1,2\n');
  });

  it('--json prints a machine-readable result', async () => {
    const result = await cli(['send', '--to', 'ops@example.com', '--subject', 'J', '--html', '<p>x</p>', '--json']);
    expect(result.code).toBe(EXIT_OK);
    const json = JSON.parse(result.stdout) as { ok: boolean; messageId: string; smtp: { code: number } };
    expect(json).toMatchObject({ ok: true, smtp: { code: 250 } });
    expect(json.messageId).toBe(sandbox.smtp.messages.at(-1)?.parsed.messageId);
  });

  it('exits 1 with the classified error and its fix when Exchange refuses', async () => {
    sandbox.tenant.exchange.smtpAuthEnabled = false;
    try {
      const human = await cli(['send', '--to', 'ops@example.com', '--subject', 'x', '--text', 'y']);
      expect(human.code).toBe(EXIT_SEND_FAILED);
      expect(human.stderr).toMatch(/^Failed: SMTP_AUTH_DISABLED/);
      expect(human.stderr).toMatch(/SMTP: 535 5\.7\.139/);
      expect(human.stderr).toMatch(/Fix: .*Set-CASMailbox/);
      const json = await cli(['send', '--to', 'ops@example.com', '--subject', 'x', '--text', 'y', '--json']);
      expect(json.code).toBe(EXIT_SEND_FAILED);
      expect(JSON.parse(json.stdout)).toMatchObject({
        ok: false,
        error: { code: 'SMTP_AUTH_DISABLED', transient: false, smtp: { code: 535, enhanced: '5.7.139' } },
      });
    } finally {
      sandbox.tenant.exchange.smtpAuthEnabled = true;
    }
  });

  it.each([
    [['send', '--subject', 'x', '--text', 'y'], /--to is required/],
    [['send', '--to', 'a@example.com', '--text', 'y'], /--subject is required/],
    [['send', '--to', 'a@example.com', '--subject', 'x'], /one of --text, --html or --attach is required/],
    [['send', '--to', 'a@example.com', '--subject', 'x', '--text', 'y', '--bogus'], /Unknown option '--bogus'/],
    [
      ['send', '--to', 'a@example.com', '--subject', 'x', '--attach', 'missing.pdf'],
      /--attach: cannot read missing.pdf/,
    ],
    [['send', '--to', 'a@example.com', '--subject', 'x', '--text', 'y', '--header', 'NoColon'], /--header "NoColon"/],
  ])('usage error %j → exit 2 naming the option', async (args, pattern) => {
    const result = await cli(args);
    expect(result.code).toBe(EXIT_USAGE);
    expect(result.stderr).toMatch(pattern);
  });

  it('rejects CR/LF injection in the subject and addresses, and nothing reaches the server', async () => {
    const before = sandbox.smtp.messages.length;
    const subject = await cli([
      'send',
      '--to',
      'a@example.com',
      '--subject',
      'Hi\r\nBcc: victim@example.com',
      '--text',
      'y',
    ]);
    expect(subject.code).toBe(EXIT_USAGE);
    expect(subject.stderr).toMatch(/subject: subject must not contain CR, LF/);
    const to = await cli(['send', '--to', 'a@example.com\nBcc: victim@example.com', '--subject', 'Hi', '--text', 'y']);
    expect(to.code).toBe(EXIT_USAGE);
    expect(to.stderr).toMatch(/to\[0\]: must not contain CR, LF/);
    const header = await cli([
      'send',
      '--to',
      'a@example.com',
      '--subject',
      'Hi',
      '--text',
      'y',
      '--header',
      'X-A: b\r\nBcc: v@example.com',
    ]);
    expect(header.code).toBe(EXIT_USAGE);
    expect(header.stderr).toMatch(/headers\.X-A/);
    expect(sandbox.smtp.messages.length).toBe(before);
  });

  it('bad settings exit 2 and name the setting and the fix', async () => {
    const result = await cli(['send', '--to', 'a@example.com', '--subject', 'x', '--text', 'y'], {
      ...sandbox.settings(),
      MAIL_SENDER: undefined,
      MAIL_SMTP_PORT: 'twenty',
    });
    expect(result.code).toBe(EXIT_USAGE);
    expect(result.stderr).toMatch(/Failed: CONFIG_INVALID/);
    expect(result.stderr).toMatch(/MAIL_SMTP_PORT must be a positive whole number/);
  });

  it('the storage account key and IDENTITY_HEADER are redacted from what the CLI prints, human and --json', async () => {
    const domain = sandbox.settings().MAIL_SENDER!.split('@')[1]!;
    const accountKey = randomBytes(30).toString('hex');
    const identityHeader = process.env.IDENTITY_HEADER!;
    expect(identityHeader.length).toBeGreaterThanOrEqual(16);
    const env = {
      ...sandbox.settings(),
      AzureWebJobsStorage: `DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=${accountKey};EndpointSuffix=core.windows.net`,
      MAIL_ALLOWED_FROM: `@${domain}`,
    };
    const scan = secretScanner([
      { kind: 'storage-account-key', label: 'AccountKey of AzureWebJobsStorage', value: accountKey },
      { kind: 'identity-header', label: 'IDENTITY_HEADER', value: identityHeader },
    ]);
    for (const secret of [accountKey, identityHeader]) {
      // Exchange's SendAsDenied reply quotes the From address: here it carries the secret.
      const args = ['send', '--from', `${secret}@${domain}`, '--to', 'a@example.com', '--subject', 'x', '--text', 'y'];
      const human = await cli(args, env);
      expect(human.code).toBe(EXIT_SEND_FAILED);
      expect(human.stderr).toMatch(/SMTP: 5\d\d 5\.2\.252 SendAsDenied; .* send as \[redacted\]@/);
      const json = await cli([...args, '--json'], env);
      expect(json.code).toBe(EXIT_SEND_FAILED);
      expect(json.stdout).toContain('[redacted]@');
      expect(scan.findAll({ human: [human.stderr, human.stdout], json: [json.stdout, json.stderr] })).toEqual([]);
    }
  });

  it('with WEBSITE_INSTANCE_ID set (in Azure), local.settings.json in the directory is not read', async () => {
    const dir = tempDir('cli-azure-');
    writeFileSync(path.join(dir, 'local.settings.json'), JSON.stringify({ Values: sandbox.settings() }));
    const inAzure = await runCliIn(dir, ['send', '--to', 'a@example.com', '--subject', 'x', '--text', 'y'], {
      WEBSITE_INSTANCE_ID: 'instance-1',
    });
    expect(inAzure.code).toBe(EXIT_USAGE);
    expect(inAzure.stderr).toMatch(/MAIL_SENDER is required/);
    // A malformed file is not even parsed in Azure; locally it is, and reported.
    writeFileSync(path.join(dir, 'local.settings.json'), '{ "Values": ');
    const sent = await runCliIn(dir, ['send', '--to', 'a@example.com', '--subject', 'In Azure', '--text', 'y'], {
      ...sandbox.settings(),
      WEBSITE_INSTANCE_ID: 'instance-1',
    });
    expect(sent.code).toBe(EXIT_OK);
    const local = await runCliIn(dir, ['send', '--to', 'a@example.com', '--subject', 'x', '--text', 'y'], {
      ...sandbox.settings(),
    });
    expect(local.code).toBe(EXIT_USAGE);
    expect(local.stderr).toMatch(/local\.settings\.json is not valid JSON/);
  });

  it('the bundled CLI runs as a real process with settings from local.settings.json', async () => {
    await run(process.execPath, ['scripts/build.mjs'], { cwd: path.resolve(__dirname, '../..') });
    const dir = tempDir('cli-proc-');
    writeFileSync(
      path.join(dir, 'local.settings.json'),
      JSON.stringify({ IsEncrypted: false, Values: sandbox.settings() }),
    );
    const env: Record<string, string> = { PATH: process.env.PATH ?? '' };
    const { stdout, stderr } = await run(
      process.execPath,
      [
        path.resolve(__dirname, '../../dist/cli.js'),
        'send',
        '--to',
        'proc@example.com',
        '--subject',
        'From a process',
        '--text',
        'hi',
        '--json',
      ],
      { cwd: dir, env },
    );
    outputs.push(stdout, stderr);
    expect(JSON.parse(stdout)).toMatchObject({ ok: true, smtp: { code: 250 } });
    expect(sandbox.smtp.messages.at(-1)?.parsed.subject).toBe('From a process');

    // The same process in Azure (WEBSITE_INSTANCE_ID set) does not read the file beside it.
    const inAzure = await run(
      process.execPath,
      [path.resolve(__dirname, '../../dist/cli.js'), 'send', '--to', 'p@example.com', '--subject', 's', '--text', 't'],
      { cwd: dir, env: { ...env, WEBSITE_INSTANCE_ID: 'instance-1' } },
    ).then(
      () => ({ code: 0, stderr: '' }),
      (error: { code: number; stderr: string }) => error,
    );
    outputs.push(inAzure.stderr);
    expect(inAzure.code).toBe(EXIT_USAGE);
    expect(inAzure.stderr).toMatch(/MAIL_SENDER is required/);
  });

  it('no secret or token appears in any CLI output', () => {
    expect(outputs.join('').length).toBeGreaterThan(0);
    // Every token the CLI runs obtained (the child process's too) is among the sandbox's secrets by now.
    expect(sandbox.issuedTokens().length).toBeGreaterThan(0);
    expect(secretScanner(sandbox.secrets()).findAll({ outputs })).toEqual([]);
    expect(outputs.join('\n')).not.toMatch(/eyJ[A-Za-z0-9_-]{10,}\.eyJ/);
  });
});
