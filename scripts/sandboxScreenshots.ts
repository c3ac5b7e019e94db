/**
 * `npm run screenshots`: regenerates the inbox screenshots in docs/images/ (or `--out <dir>`). Starts a sandbox whose
 * clock it moves back and forth, sends a morning's mail through the app's own sender (XOAUTH2 over STARTTLS, the
 * order-shipped template, telemetry on), a little over the rate limit once and one refused with 432, then photographs
 * the inbox in headless Chromium.
 */
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { chromium, type BrowserContext, type Page } from 'playwright-core';
import { startSandbox } from '../sandbox';
import { loadConfig } from '../src/config';
import { parseMessage, type MailMessage, type MessageInput } from '../src/message';
import { createMailer, type Mailer } from '../src/sender/senderServices';
import { templateBundle } from '../src/templates/templateBundle';
import { TemplateRenderer } from '../src/templates/templateRenderer';

const ROOT = path.resolve(__dirname, '..');
/** Debian's Chromium; CHROMIUM_PATH points elsewhere. */
const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';
const VIEWPORT = { width: 1280, height: 820 };
const MINUTE_MS = 60_000;
/** Messages sent in each of the last minutes, oldest first: one minute goes over the limit of 6. */
const SENDS_PER_MINUTE = [2, 4, 3, 5, 6, 8, 3, 2, 4, 1, 0, 3];
const RATE_PER_MINUTE = 6;

const out = (line: string) => process.stdout.write(`${line}\n`);

function outDir(): string {
  const i = process.argv.indexOf('--out');
  return path.resolve(i >= 0 && process.argv[i + 1] ? (process.argv[i + 1] as string) : path.join(ROOT, 'docs/images'));
}

function outboxId(n: number): string {
  return `0190a1b2-c3d4-7e5f-8a9b-${String(n).padStart(12, '0')}`;
}

async function send(mailer: Mailer, input: Partial<MessageInput>, n: number, template?: string): Promise<void> {
  const id = outboxId(n);
  const message: MailMessage = {
    ...parseMessage(
      { to: 'customer@example.com', subject: 'Hello', text: 'Hello', ...input },
      {
        defaultFrom: mailer.config.sender,
        maxRecipients: mailer.config.limits.maxRecipients,
        maxMessageBytes: mailer.config.limits.maxMessageBytes,
      },
    ),
    messageId: `<${id}@contoso.test>`,
  };
  await mailer.sender.send(message, { id, source: 'http', ...(template ? { template } : {}) });
}

async function shoot(page: Page, url: string, file: string, prepare?: () => Promise<void>): Promise<void> {
  await page.goto(url);
  await page.waitForSelector('body[data-ready="true"]');
  await prepare?.();
  await page.waitForTimeout(300);
  await page.screenshot({ path: file });
  out(`  ${path.relative(ROOT, file)}`);
}

async function main(): Promise<void> {
  const dir = outDir();
  mkdirSync(dir, { recursive: true });
  const start = Date.now() - SENDS_PER_MINUTE.length * MINUTE_MS;
  let now = start;
  const sandbox = await startSandbox({
    smtpLimits: { ratePerMinute: RATE_PER_MINUTE },
    clock: { now: () => (now > 0 ? now : Date.now()) },
  });
  let browser: BrowserContext | undefined;
  let profile: string | undefined;
  let mailer: Mailer | undefined;
  try {
    for (const key of ['AZURE_CLIENT_SECRET', 'AZURE_TENANT_ID', 'AZURE_CLIENT_CERTIFICATE_PATH']) {
      delete process.env[key];
    }
    const settings = sandbox.settings();
    for (const key of ['AZURE_CLIENT_ID', 'IDENTITY_ENDPOINT', 'IDENTITY_HEADER'] as const) {
      process.env[key] = settings[key];
    }
    mailer = createMailer(loadConfig(settings));
    const renderer = new TemplateRenderer(templateBundle());
    const order = renderer.render('order-shipped', renderer.sample('order-shipped'));

    let n = 0;
    for (const [minute, count] of SENDS_PER_MINUTE.entries()) {
      for (let i = 0; i < count; i++) {
        now = start + minute * MINUTE_MS + 2_000 + i * 3_000;
        await send(mailer, { subject: `Your order A-${10400 + n} is on its way`, text: `Order A-${10400 + n}` }, ++n);
      }
    }
    // One refused with 432 (sender thread limit), as the pacing view lists it.
    sandbox.smtp.faults.force432 = 1;
    await send(mailer, { subject: 'Refused with 432' }, ++n).catch(() => undefined);
    now = 0;
    await send(
      mailer,
      {
        to: 'reporting@example.com',
        subject: 'Weekly report',
        text: 'The report is attached.',
        attachments: [
          {
            filename: 'report-week-48.csv',
            contentType: 'text/csv',
            contentBase64: Buffer.from('day,sent\nMon,412\n').toString('base64'),
          },
        ],
      },
      ++n,
    );
    const featured = ++n;
    await send(
      mailer,
      {
        to: { address: 'ada@example.com', name: 'Ada Lovelace' },
        subject: order.subject,
        html: order.html,
        text: order.text,
        attachments: [
          {
            filename: 'invoice-A-10492.pdf',
            contentType: 'application/pdf',
            contentBase64: Buffer.from('%PDF-1.4\n% sandbox sample\n').toString('base64'),
          },
        ],
      },
      featured,
      'order-shipped',
    );
    await mailer.telemetry.flush();
    const id = sandbox.smtp.messages.at(-1)?.id ?? '';

    profile = mkdtempSync(path.join(tmpdir(), 'm365-chromium-'));
    browser = await chromium.launchPersistentContext(profile, {
      executablePath: CHROMIUM,
      headless: true,
      viewport: VIEWPORT,
      args: [
        '--headless',
        '--no-sandbox',
        '--disable-gpu',
        '--disable-background-networking',
        '--disable-component-update',
        '--disable-sync',
        '--no-first-run',
      ],
    });
    const page = await browser.newPage();
    out('Screenshots:');
    await shoot(page, `${sandbox.inbox.url}#/m/${id}`, path.join(dir, 'sandbox-inbox.png'), async () => {
      await page.waitForSelector('iframe.html');
    });
    await shoot(page, `${sandbox.inbox.url}#/m/${id}`, path.join(dir, 'sandbox-inbox-transcript.png'), async () => {
      await page.waitForSelector('#tab-transcript');
      await page.click('#tab-transcript');
      // Down to the AUTH exchange, where the token would be.
      await page.evaluate("document.getElementById('detail').scrollTop = 320");
    });
    await shoot(page, `${sandbox.inbox.url}#/pacing`, path.join(dir, 'sandbox-inbox-pacing.png'), async () => {
      await page.waitForSelector('svg.chart');
    });
  } finally {
    await browser?.close();
    if (profile) rmSync(profile, { recursive: true, force: true });
    await mailer?.close();
    await sandbox.close();
  }
}

main().catch((error: unknown) => {
  process.stderr.write(
    `screenshots failed: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}\n`,
  );
  process.exit(1);
});
