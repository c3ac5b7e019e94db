/**
 * The unsubscribe link end to end, in headless Chromium: a bulk batch through the dev host (built bundle, real HTTP
 * port, queue triggers), the link taken from the List-Unsubscribe header the sandbox's Exchange received, the GET
 * page opened (nothing suppressed yet), the button clicked, the suppression recorded and the confirmation shown.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { chromium, type BrowserContext } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startAzurite, type AzuriteInstance } from '../../dev/azurite';
import { startDevHost, type DevHost } from '../../dev/host';
import { UNSUBSCRIBE_CSP } from '../../src/suppression/unsubscribePage';
import { applySandboxEnv, startSandbox, type Sandbox } from '../support/sandboxMailer';

const ROOT = path.resolve(__dirname, '../..');
/** Debian's Chromium (.ci/run installs it); CHROMIUM_PATH points elsewhere (the GitHub runners' Google Chrome). */
const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';
let sandbox: Sandbox;
let azurite: AzuriteInstance;
let host: DevHost;
let browser: BrowserContext | undefined;
let profile: string | undefined;

/** A free loopback port: the links must name the dev host's address before it starts. */
async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as { port: number };
  await new Promise((resolve) => server.close(resolve));
  return port;
}

const api = (route: string) =>
  `${host.url}/api/${route}${route.includes('?') ? '&' : '?'}code=${encodeURIComponent(host.functionKey)}`;

async function suppressionsOf(list: string): Promise<Array<{ address: string; list?: string; source: string }>> {
  const response = await fetch(api(`suppressions?list=${list}`));
  expect(response.status).toBe(200);
  return ((await response.json()) as { items: Array<{ address: string; list?: string; source: string }> }).items;
}

async function waitFor<T>(what: string, probe: () => T | undefined, timeoutMs = 30_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = probe();
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
}

beforeAll(async () => {
  expect(existsSync(CHROMIUM), `${CHROMIUM} is missing: apt-get install -y chromium`).toBe(true);
  execFileSync(process.execPath, [path.join(ROOT, 'scripts/build.mjs')], { cwd: ROOT });
  [sandbox, azurite] = await Promise.all([startSandbox(), startAzurite()]);
  applySandboxEnv(sandbox);
  const port = await freePort();
  host = await startDevHost({
    entry: path.join(ROOT, 'dist/functions/index.js'),
    env: {
      ...sandbox.settings(),
      AzureWebJobsStorage: azurite.connectionString,
      MAIL_RATE_PER_MINUTE: '6000',
      MAIL_UNSUBSCRIBE_BASE_URL: `http://127.0.0.1:${port}`,
    },
    port,
    pollIntervalMs: 200,
    log: () => {},
  });
  profile = mkdtempSync(path.join(tmpdir(), 'm365-chromium-'));
  browser = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
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
}, 180_000);

afterAll(async () => {
  await browser?.close();
  if (profile) rmSync(profile, { recursive: true, force: true });
  await host?.stop();
  await Promise.all([sandbox?.close(), azurite?.stop()]);
});

describe('the unsubscribe link in a browser', () => {
  it('GET shows the page and records nothing; the button records the suppression and confirms', async () => {
    const address = `reader-${Date.now()}@example.com`;
    const list = `e2e-${Date.now()}`;
    const accepted = await fetch(api('notifications'), {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({
        template: 'notification',
        category: 'bulk',
        list,
        data: { title: 'News', paragraphs: ['This week.'] },
        recipients: [{ to: address }],
      }),
    });
    expect(accepted.status).toBe(202);
    const message = await waitFor('the bulk message at the sandbox', () =>
      sandbox.smtp.messages.find((m) => m.envelope.to.includes(address)),
    );
    const header = message.parsed.headers.find((h) => h.key === 'list-unsubscribe')?.value ?? '';
    const link = /<(http:\/\/127\.0\.0\.1:\d+\/api\/unsubscribe\?t=[A-Za-z0-9_.-]+)>/.exec(header)?.[1];
    expect(link, header).toBeDefined();
    expect(link!.startsWith(`${host.url}/api/unsubscribe?t=`)).toBe(true);

    const page = await browser!.newPage();
    const consoleErrors: string[] = [];
    page.on('console', (m) => {
      if (m.type() === 'error') consoleErrors.push(m.text());
    });
    const response = await page.goto(link!);
    expect(response?.status()).toBe(200);
    expect(response?.headers()['content-security-policy']).toBe(UNSUBSCRIBE_CSP);
    expect(await page.textContent('#address')).toBe(address);
    expect(await page.textContent('#list')).toBe(list);
    // The inline style applied under the policy (a blocked one would leave the default serif font).
    const font: unknown = await page.evaluate('getComputedStyle(document.body).fontFamily');
    expect(String(font)).toContain('system-ui');
    expect(await suppressionsOf(list), 'a GET alone never unsubscribes').toEqual([]);

    await Promise.all([page.waitForURL(/\/api\/unsubscribe\?t=/), page.click('#unsubscribe')]);
    expect(await page.textContent('#done')).toBe('You are unsubscribed');
    expect(await suppressionsOf(list)).toEqual([expect.objectContaining({ address, list, source: 'unsubscribe' })]);
    expect(consoleErrors).toEqual([]);

    // Clicked again (a reload of the form post): still one suppression, still 200.
    await page.goto(link!);
    await Promise.all([page.waitForURL(/\/api\/unsubscribe\?t=/), page.click('#unsubscribe')]);
    expect(await page.textContent('#done')).toBe('You are unsubscribed');
    expect(await suppressionsOf(list)).toHaveLength(1);
    await page.close();
  }, 90_000);

  it('an altered link shows the not-valid page (400) and records nothing', async () => {
    const list = `e2e-bad-${Date.now()}`;
    const page = await browser!.newPage();
    const response = await page.goto(`${host.url}/api/unsubscribe?t=bm9wZQ.AAAAAAAAAAAAAAAAAAAAAA`);
    expect(response?.status()).toBe(400);
    expect(await page.textContent('h1')).toBe('This unsubscribe link is not valid');
    expect(await page.locator('button').count()).toBe(0);
    expect(await suppressionsOf(list)).toEqual([]);
    await page.close();
  }, 30_000);
});
