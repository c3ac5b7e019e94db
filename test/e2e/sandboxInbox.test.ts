/**
 * The sandbox's inbox page in headless Chromium: mail sent through the app's own sender (XOAUTH2 over STARTTLS)
 * shows in the list, newest first, and a message sent after the page loaded appears without a reload; a hostile
 * message's HTML runs no script and loads nothing remote (a loopback server of the test's own sees every attempt);
 * headers, text, attachments, the transcript (without the token) and the telemetry show; the pacing view counts the
 * rate violation and the 432 the sandbox gave.
 */
import { createServer, request as httpRequest, type Server } from 'node:http';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import nodemailer from 'nodemailer';
import { chromium, type BrowserContext, type Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { INBOX_PAGE_CSP } from '../../sandbox/inbox/page';
import { MAX_LIST_ENTRIES } from '../../sandbox/inbox/messageViews';
import { message, sandboxMailer, startSandbox, type Sandbox, type TestMailer } from '../support/sandboxMailer';

/** Debian's Chromium (.ci/run installs it); CHROMIUM_PATH points elsewhere (the GitHub runners' Google Chrome). */
const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';
const EXCHANGE_AUDIENCE = 'https://outlook.office365.com';

let sandbox: Sandbox;
let mailer: TestMailer;
let browser: BrowserContext | undefined;
let profile: string | undefined;
/** Every request that reached the test's own loopback server: what a script or a remote load would have hit. */
const beaconHits: string[] = [];
let beacon: Server;
let beaconUrl: string;
let hostileId: string;
let page: Page;
let flushed: Promise<void>;

/** The HTML part of the hostile message: every way it could run script or reach the network. */
function hostileHtml(): string {
  return [
    '<p id="body">Hostile body</p>',
    `<script>document.title = 'pwned'; fetch('${beaconUrl}/script'); parent.document.title = 'pwned';</script>`,
    `<img src="nowhere.png" onerror="document.title = 'pwned'; new Image().src = '${beaconUrl}/onerror'">`,
    `<img src="${beaconUrl}/x">`,
    `<link rel="stylesheet" href="${beaconUrl}/css">`,
    `<style>@import url(${beaconUrl}/import); .bg { background: url(${beaconUrl}/bg); }</style>`,
    '<p class="bg">background</p>',
    `<iframe src="${beaconUrl}/frame"></iframe>`,
    `<form action="${beaconUrl}/form"><button id="go">go</button></form>`,
  ].join('\n');
}

const HOSTILE_SUBJECT = `<img src=x onerror="document.title='pwned'">Hostile <script>document.title='pwned'</script>`;
/** A 1×1 PNG. */
const PIXEL_PNG = 'iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==';
const HOSTILE_HEADER = `<img src=x onerror="document.title='pwned'">`;
const HOSTILE_FILENAME = '"><img src=x onerror=alert(1)>report ü.txt';

async function send(input: Parameters<typeof message>[1], id: string): Promise<void> {
  await mailer.sender.send({ ...message(mailer, input), messageId: `<${id}@contoso.test>` }, { id, source: 'http' });
}

function uuid(n: number): string {
  return `0190a1b2-c3d4-7e5f-8a9b-${String(n).padStart(12, '0')}`;
}

async function inboxJson<T>(route: string): Promise<{ status: number; text: string; json: () => T }> {
  const response = await fetch(`${sandbox.inbox.url}${route}`);
  const text = await response.text();
  return { status: response.status, text, json: () => JSON.parse(text) as T };
}

/** The access tokens for Exchange the sandbox issued: what the mailer authenticated with. */
function exchangeTokens(): string[] {
  return sandbox
    .issuedTokens()
    .filter((t) => t.audience === EXCHANGE_AUDIENCE)
    .map((t) => t.token);
}

beforeAll(async () => {
  expect(existsSync(CHROMIUM), `${CHROMIUM} is missing: apt-get install -y chromium`).toBe(true);
  // Chromium starts while the sandbox generates its keys.
  profile = mkdtempSync(path.join(tmpdir(), 'm365-chromium-'));
  const launched = chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    acceptDownloads: true,
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
  // Closed in afterAll even when the sandbox failed to start.
  launched.then(
    (context) => (browser = context),
    () => undefined,
  );
  // Two per window, so that the third message is a rate violation; the sandbox's clock stands still in the middle of
  // a window, so that every message falls in the same bar of the chart.
  const now = Math.floor(Date.now() / 60_000) * 60_000 + 30_000;
  sandbox = await startSandbox({ smtpLimits: { ratePerMinute: 2 }, clock: { now: () => now } });
  mailer = sandboxMailer(sandbox);
  beacon = createServer((request, response) => {
    beaconHits.push(request.url ?? '');
    response.writeHead(200, { 'content-type': 'text/plain', 'access-control-allow-origin': '*' });
    response.end('x');
  });
  await new Promise<void>((resolve) => beacon.listen(0, '127.0.0.1', resolve));
  beaconUrl = `http://127.0.0.1:${(beacon.address() as { port: number }).port}`;

  hostileId = uuid(1);
  await send(
    {
      subject: HOSTILE_SUBJECT,
      text: 'Plain text part of the hostile message',
      html: hostileHtml(),
      headers: { 'X-Hostile': HOSTILE_HEADER },
      attachments: [
        {
          filename: HOSTILE_FILENAME,
          contentType: 'text/plain',
          contentBase64: Buffer.from('attachment body').toString('base64'),
        },
      ],
    },
    hostileId,
  );
  // Awaited where the telemetry is looked at.
  flushed = mailer.telemetry.flush();

  browser = await launched;
  page = await browser.newPage();
}, 60_000);

afterAll(async () => {
  await browser?.close();
  if (profile) rmSync(profile, { recursive: true, force: true });
  await mailer?.close();
  await sandbox?.close();
  if (beacon) await new Promise((resolve) => beacon.close(resolve));
});

describe('the sandbox inbox page', () => {
  it('lists the messages newest first and shows one sent after the page loaded without a reload', async () => {
    const response = await page.goto(sandbox.inbox.url);
    expect(response?.status()).toBe(200);
    expect(response?.headers()['content-security-policy']).toBe(INBOX_PAGE_CSP);
    await page.waitForSelector('body[data-ready="true"]');
    const first = page.locator('#messages li').first();
    expect(await first.locator('.subject').textContent()).toBe(HOSTILE_SUBJECT);
    expect(await first.locator('.from').textContent()).toBe('alerts@contoso.test');
    expect(await first.locator('.to').textContent()).toContain('someone@example.com');
    expect(await first.locator('.time').textContent()).not.toBe('');
    // The hostile subject is text: no element came of it, and nothing ran.
    expect(await page.locator('#messages img, #messages script').count()).toBe(0);

    await page.evaluate('window.loadedOnce = true');
    await send({ subject: 'Sent after the page loaded', text: 'Second', to: 'late@example.com' }, uuid(2));
    // Polled from here: the page's policy has no 'unsafe-eval' for a string predicate to run under.
    await expect
      .poll(() => page.locator('#messages li .subject').first().textContent(), { timeout: 5_000 })
      .toBe('Sent after the page loaded');
    expect(await page.evaluate('window.loadedOnce'), 'the page was not reloaded').toBe(true);
    expect(await page.locator('#messages li').count()).toBe(2);
    expect(await page.locator('#messages li').nth(1).locator('.subject').textContent()).toBe(HOSTILE_SUBJECT);
  });

  it('shows the HTML part in a frame that runs no script and loads nothing remote', async () => {
    // Control: the same HTML in an ordinary page does reach the test's server, so the absence below means something.
    const control = await browser!.newPage();
    await control.setContent(hostileHtml());
    await expect.poll(() => beaconHits.includes('/script') && beaconHits.includes('/x'), { timeout: 5_000 }).toBe(true);
    await control.close();
    beaconHits.length = 0;

    const detail = page.waitForResponse((r) => r.url().endsWith(`/html`));
    await page.locator('#messages li').nth(1).click();
    const html = await detail;
    const csp = html.headers()['content-security-policy'] ?? '';
    expect(csp).toContain("default-src 'none'");
    expect(csp).toMatch(/(^|; )sandbox($|;)/);
    expect(csp).not.toContain('script-src');

    const frame = page.locator('iframe.html');
    expect(await frame.getAttribute('sandbox')).toBe('');
    expect(await page.locator('#subject').textContent()).toBe(HOSTILE_SUBJECT);
    // The frame did load the message (its body is there), and had every chance to run and fetch.
    await expect
      .poll(
        () =>
          page
            .frames()
            .find((f) => f.url().endsWith('/html'))
            ?.content() ?? Promise.resolve(''),
      )
      .toContain('Hostile body');
    await page.waitForTimeout(500);
    expect(beaconHits, 'no script ran and nothing remote was requested').toEqual([]);
    expect(await page.title()).toBe('Sandbox inbox · m365-mailer');
    expect(await page.locator('#detail img, #detail script').count()).toBe(0);
  });

  it('shows the text part, the headers and the attachments, which download with a safe name', async () => {
    await page.click('#tab-text');
    expect(await page.locator('#text-part').textContent()).toContain('Plain text part of the hostile message');
    await page.click('#tab-headers');
    const headers = page.locator('#panel-headers');
    expect(await headers.locator('tr', { hasText: 'Message-ID' }).locator('td').nth(1).textContent()).toBe(
      `<${hostileId}@contoso.test>`,
    );
    // Decoded, as text; the encoded words as they arrived beside them.
    const hostile = headers.locator('tr', { hasText: 'X-Hostile' }).locator('td');
    expect(await hostile.nth(1).textContent()).toBe(HOSTILE_HEADER);
    expect(await hostile.nth(2).textContent()).toMatch(/^=\?UTF-8\?Q\?/);
    const subject = headers.locator('tr', { hasText: 'Subject' }).first().locator('td');
    expect(await subject.nth(1).textContent()).toBe(HOSTILE_SUBJECT);
    expect(await page.locator('#detail img, #detail script').count()).toBe(0);

    await page.click('#tab-attachments');
    const link = page.locator('a[data-attachment="0"]');
    expect(await link.textContent()).toBe(HOSTILE_FILENAME);
    const [download] = await Promise.all([page.waitForEvent('download'), link.click()]);
    expect(download.suggestedFilename()).toContain('report');
    const file = await download.path();
    expect(file).toBeTruthy();
    expect(readFileSync(file).toString()).toBe('attachment body');

    const id = (await page.locator('#messages li').nth(1).getAttribute('data-id'))!;
    const response = await fetch(`${sandbox.inbox.url}api/messages/${id}/attachments/0`);
    expect(response.status).toBe(200);
    expect(response.headers.get('content-type')).toBe('text/plain');
    const disposition = response.headers.get('content-disposition') ?? '';
    expect(disposition).toBe(
      `attachment; filename="_><img src=x onerror=alert(1)>report _.txt"; filename*=UTF-8''` +
        `%22%3E%3Cimg%20src%3Dx%20onerror%3Dalert%281%29%3Ereport%20%C3%BC.txt`,
    );
    expect(await response.text()).toBe('attachment body');
  });

  it('shows the SMTP transcript without the token, and the telemetry about the message', async () => {
    const tokens = exchangeTokens();
    expect(tokens.length).toBeGreaterThan(0);
    // The token did cross the wire (in the AUTH exchange), so its absence below is the redaction at work.
    const wire = sandbox.smtp.received.filter((r) => r.kind === 'auth').map((r) => r.text);
    expect(
      wire.some((line) => tokens.some((t) => Buffer.from(line.split(' ').pop() ?? '', 'base64').includes(t))),
    ).toBe(true);

    await page.click('#tab-transcript');
    const transcript = (await page.locator('#transcript').textContent()) ?? '';
    expect(transcript).toContain('C: AUTH XOAUTH2 [redacted]');
    expect(transcript).toContain('S: 235 2.7.0 Authentication successful');
    expect(transcript).toContain('C: MAIL FROM:<alerts@contoso.test>');

    const id = (await page.locator('#messages li').nth(1).getAttribute('data-id'))!;
    const api = await inboxJson<{ session: { transcript: string[] } }>(`api/messages/${id}/transcript`);
    expect(api.status).toBe(200);
    expect(api.json().session.transcript).toContain('C: AUTH XOAUTH2 [redacted]');
    const detail = await inboxJson(`api/messages/${id}`);
    const pageHtml = await page.content();
    for (const secret of sandbox.secretValues()) {
      expect(pageHtml.includes(secret), 'a secret in the page').toBe(false);
      expect(api.text.includes(secret), 'a secret in the transcript API').toBe(false);
      expect(detail.text.includes(secret), 'a secret in the message API').toBe(false);
    }
    for (const token of tokens) {
      const base64 = Buffer.from(`user=alerts@contoso.test\x01auth=Bearer ${token}\x01\x01`).toString('base64');
      expect(pageHtml).not.toContain(base64);
      expect(api.text).not.toContain(base64);
    }

    await flushed;
    await page.click('#tab-telemetry');
    await expect.poll(() => page.locator('#telemetry').textContent(), { timeout: 10_000 }).toContain('MailSent');
    expect(await page.locator('#telemetry').textContent()).toContain(`id=${hostileId}`);
  });

  it('shows sends per window against the limit, the rate violation and the 432 reply', async () => {
    // A third message in the window (limit 2): a violation, recorded, not refused.
    await send({ subject: 'Third in the window', text: 'Third' }, uuid(3));
    sandbox.smtp.faults.force432 = 1;
    await expect(send({ subject: 'Refused with 432', text: 'Fourth' }, uuid(4))).rejects.toMatchObject({
      smtp: { code: 432 },
    });

    await page.click('#nav-pacing');
    const box = page.locator('section.mailbox[data-mailbox="alerts@contoso.test"]');
    await expect.poll(() => box.locator('#throttled b').textContent(), { timeout: 5_000 }).toBe('1');
    expect(await box.locator('#rate-violations b').textContent()).toBe('1');
    expect(await box.locator('svg.chart rect.bar').count()).toBe(30);
    expect(await box.locator('svg.chart rect.bar.over').count()).toBe(1);
    expect(await box.locator('svg.chart line.limit').count()).toBe(1);
    expect(await box.textContent()).toContain('432 4.3.2');
  });

  it('shows an inline cid: image from the attachment route', async () => {
    // The app's sender has no inline parts: nodemailer itself, with the app's token, over STARTTLS.
    const login = await mailer.auth.get();
    expect(login.kind).toBe('xoauth2');
    const transport = nodemailer.createTransport({
      host: sandbox.smtp.host,
      port: sandbox.smtp.port,
      secure: false,
      requireTLS: true,
      tls: { ca: sandbox.ca.certPem, servername: 'localhost' },
      auth: { type: 'OAuth2', user: login.user, accessToken: login.kind === 'xoauth2' ? login.accessToken : '' },
    });
    try {
      await transport.sendMail({
        from: login.user,
        to: 'someone@example.com',
        subject: 'Inline image',
        html: '<p id="inline">Logo: <img id="logo" src="cid:logo@sandbox.test" alt="logo"></p>',
        attachments: [{ filename: 'logo.png', content: Buffer.from(PIXEL_PNG, 'base64'), cid: 'logo@sandbox.test' }],
      });
    } finally {
      transport.close();
    }

    await page.click('#nav-messages');
    const image = page.waitForResponse((r) => /\/attachments\/0$/.test(r.url()));
    await page.locator('#messages li', { hasText: 'Inline image' }).click();
    const response = await image;
    expect(response.status()).toBe(200);
    expect(response.headers()['content-type']).toBe('image/png');
    expect(Buffer.from(await response.body()).toString('base64')).toBe(PIXEL_PNG);
  });

  it('bounds its JSON API and answers only its own host, and only GET', async () => {
    const list = await inboxJson<unknown[]>('api/messages?limit=1000000');
    expect(list.status).toBe(200);
    expect(list.json().length).toBeLessThanOrEqual(MAX_LIST_ENTRIES);
    expect((await inboxJson<unknown[]>('api/messages?limit=1')).json()).toHaveLength(1);
    expect((await inboxJson('api/messages/not-an-id')).status).toBe(404);
    expect((await inboxJson('api/messages/0000000000000000')).status).toBe(404);
    expect((await fetch(`${sandbox.inbox.url}api/messages`, { method: 'POST' })).status).toBe(405);
    const foreign = await new Promise<number>((resolve, reject) => {
      const req = httpRequest(
        { host: '127.0.0.1', port: sandbox.inbox.port, path: '/api/messages', headers: { host: 'rebound.example' } },
        (res) => {
          res.resume();
          resolve(res.statusCode ?? 0);
        },
      );
      req.on('error', reject);
      req.end();
    });
    expect(foreign).toBe(421);
  });
});
