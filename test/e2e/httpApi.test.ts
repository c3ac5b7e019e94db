/** End to end through the dev host's real HTTP port: the built bundle, Azurite, and the sandbox's Exchange. */
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startAzurite, type AzuriteInstance } from '../../dev/azurite';
import { startDevHost, type DevHost } from '../../dev/host';
import { applySandboxEnv, startSandbox, type Sandbox } from '../support/sandboxMailer';

const ROOT = path.resolve(__dirname, '../..');
let sandbox: Sandbox;
let azurite: AzuriteInstance;
let host: DevHost;

interface StatusBody {
  id: string;
  status: string;
  source: string;
  attempts: number;
  createdAt: string;
  scheduledFor?: string;
  sentAt?: string;
  messageId?: string;
  error?: { code: string; message: string; transient: boolean; hint: string };
}

function api(route: string): string {
  const separator = route.includes('?') ? '&' : '?';
  return `${host.url}/api/${route}${separator}code=${host.functionKey}`;
}

async function post(body: unknown, query = '', headers: Record<string, string> = {}) {
  const response = await fetch(api(`messages${query}`), {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...headers },
    body: JSON.stringify(body),
  });
  return {
    status: response.status,
    headers: response.headers,
    json: (await response.json()) as Record<string, unknown>,
  };
}

async function status(id: string): Promise<StatusBody> {
  const response = await fetch(api(`messages/${id}`));
  expect(response.status).toBe(200);
  return (await response.json()) as StatusBody;
}

async function waitForStatus(id: string, wanted: string[], timeoutMs = 20_000): Promise<StatusBody> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const current = await status(id);
    if (wanted.includes(current.status)) return current;
    if (Date.now() > deadline) throw new Error(`message ${id} stayed ${current.status}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

beforeAll(async () => {
  execFileSync(process.execPath, [path.join(ROOT, 'scripts/build.mjs')], { cwd: ROOT });
  [sandbox, azurite] = await Promise.all([startSandbox(), startAzurite()]);
  applySandboxEnv(sandbox);
  host = await startDevHost({
    entry: path.join(ROOT, 'dist/functions/index.js'),
    env: {
      ...sandbox.settings(),
      AzureWebJobsStorage: azurite.connectionString,
      MAIL_ALLOWED_FROM: `billing@${sandbox.tenant.domain}`,
      MAIL_RATE_PER_MINUTE: '6000',
      MAIL_DIGEST_SCHEDULE: '0 30 6 * * 1-5',
    },
    port: 0,
    pollIntervalMs: 200,
    log: () => {},
  });
}, 120_000);

afterAll(async () => {
  await host?.stop();
  await Promise.all([sandbox?.close(), azurite?.stop()]);
});

describe('POST /api/messages → outbox → Exchange', () => {
  it('accepts with 202 and Location, delivers, and the status turns sent', async () => {
    const response = await post({
      to: ['a@example.com', { address: 'b@example.com', name: 'Bee' }],
      subject: 'Via HTTP',
      text: 'hello',
      html: '<p>hello</p>',
    });
    expect(response.status).toBe(202);
    const id = response.json.id as string;
    expect(response.json).toMatchObject({ id, status: 'queued' });
    expect(response.headers.get('location')).toContain(`/api/messages/${id}`);
    expect(response.json.statusUrl).toContain(`/api/messages/${id}`);
    const final = await waitForStatus(id, ['sent', 'failed']);
    expect(final).toMatchObject({ id, status: 'sent', source: 'http', attempts: 1 });
    expect(final.messageId).toMatch(/^<.+>$/);
    const received = sandbox.smtp.messages.find((m) => m.parsed.messageId === final.messageId);
    expect(received?.parsed.subject).toBe('Via HTTP');
    expect(received?.envelope.to).toEqual(['a@example.com', 'b@example.com']);
    expect(received?.parsed.html).toContain('<p>hello</p>');
  });

  it('?wait=true sends inline and answers 200 with the SMTP reply', async () => {
    const response = await post({ to: 'inline@example.com', subject: 'Inline', text: 'now' }, '?wait=true');
    expect(response.status).toBe(200);
    expect(response.json).toMatchObject({ status: 'sent', smtp: { code: 250 } });
    expect(sandbox.smtp.messages.some((m) => m.parsed.messageId === response.json.messageId)).toBe(true);
  });

  it('?wait=true answers 422 with the classified error on a permanent rejection, and the status says failed', async () => {
    // MAIL_ALLOWED_FROM lets the app try, but Exchange has no SendAs for this address.
    const response = await post(
      { from: `billing@${sandbox.tenant.domain}`, to: 'x@example.com', subject: 'No SendAs', text: 't' },
      '?wait=true',
    );
    expect(response.status).toBe(422);
    expect(response.json).toMatchObject({
      error: { code: 'SEND_AS_DENIED', transient: false, smtp: { code: 554, enhanced: '5.2.252' } },
    });
    const id = response.json.id as string;
    expect(id).toMatch(/^[0-9a-f-]{36}$/);
    expect(await status(id)).toMatchObject({ status: 'failed', attempts: 1, error: { code: 'SEND_AS_DENIED' } });
  });

  it('renders a template at accept time and sends it; a missing variable is a 400 naming it', async () => {
    const preview = await fetch(api('templates/order-shipped/preview'));
    expect(preview.status).toBe(200);
    const rendered = (await preview.json()) as { subject: string; html: string };
    const data = JSON.parse(readFileSync(path.join(ROOT, 'templates/order-shipped/sample.json'), 'utf8')) as Record<
      string,
      unknown
    >;
    const response = await post({ to: 'customer@example.com', template: 'order-shipped', data });
    expect(response.status).toBe(202);
    const final = await waitForStatus(response.json.id as string, ['sent', 'failed']);
    expect(final.status).toBe('sent');
    const received = sandbox.smtp.messages.find((m) => m.parsed.messageId === final.messageId);
    expect(received?.parsed.subject).toBe(rendered.subject);
    expect(received?.parsed.text).toBeTruthy();

    const missing = await post({ to: 'customer@example.com', template: 'order-shipped', data: {} });
    expect(missing.status).toBe(400);
    const details = (missing.json.error as { details: Array<{ path: string }> }).details;
    expect(details[0]?.path).toMatch(/^data\./);
  });

  it('sendAt schedules the message and it goes out after that time', async () => {
    const sendAt = new Date(Date.now() + 3_000).toISOString();
    const response = await post({ to: 'later@example.com', subject: 'Scheduled', text: 'later', sendAt });
    expect(response.status).toBe(202);
    expect(response.json.status).toBe('scheduled');
    const id = response.json.id as string;
    const scheduled = await status(id);
    expect(scheduled.status).toBe('scheduled');
    expect(Date.parse(scheduled.scheduledFor as string)).toBe(Date.parse(sendAt));
    const final = await waitForStatus(id, ['sent', 'failed'], 30_000);
    expect(final.status).toBe('sent');
    expect(Date.parse(final.sentAt as string)).toBeGreaterThanOrEqual(Date.parse(sendAt) - 1000);
  });

  it('an idempotency key replays the original id; a different payload is 409', async () => {
    const key = `order-${Date.now()}-shipped`;
    const first = await post({ to: 'idem@example.com', subject: 'Once', text: 'only once' }, '', {
      'Idempotency-Key': key,
    });
    const again = await post({ to: 'idem@example.com', subject: 'Once', text: 'only once' }, '', {
      'Idempotency-Key': key,
    });
    expect(first.status).toBe(202);
    expect(again.json.id).toBe(first.json.id);
    const conflict = await post({ to: 'idem@example.com', subject: 'Different', text: 'changed' }, '', {
      'Idempotency-Key': key,
    });
    expect(conflict.status).toBe(409);
    await waitForStatus(first.json.id as string, ['sent']);
    expect(sandbox.smtp.messages.filter((m) => m.parsed.subject === 'Once')).toHaveLength(1);
  });

  it('the mailRetention timer is registered hourly and runs through the host', async () => {
    expect(host.functions.find((f) => f.name === 'mailRetention')).toMatchObject({
      kind: 'timer',
      schedule: '0 17 * * * *',
    });
    expect(host.functions.find((f) => f.name === 'outboxRepair')).toBeUndefined();
    await host.runTimer('mailRetention');
  });

  it('the digest timer takes its schedule from MAIL_DIGEST_SCHEDULE and sends pending digests through the host', async () => {
    expect(host.functions.find((f) => f.name === 'digestTimer')).toMatchObject({
      kind: 'timer',
      schedule: '0 30 6 * * 1-5',
    });
    const to = `digest.${Date.now()}@example.com`;
    const items = await fetch(api('digests/activity/items'), {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ recipient: to, item: { title: 'Timer item' } }),
    });
    expect(items.status).toBe(202);
    const pending = (await (await fetch(api('digests/activity'))).json()) as Record<string, unknown>;
    expect(pending).toMatchObject({ pendingRecipients: 1, pendingItems: 1 });
    await host.runTimer('digestTimer');
    const deadline = Date.now() + 20_000;
    while (!sandbox.smtp.messages.some((m) => m.envelope.to.includes(to)) && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 200));
    }
    const digest = sandbox.smtp.messages.find((m) => m.envelope.to.includes(to));
    expect(digest?.parsed.subject).toBe('Your daily activity: 1 new');
    expect(digest?.parsed.text).toContain('- Timer item');
    const after = (await (await fetch(api('digests/activity'))).json()) as Record<string, unknown>;
    expect(after).toMatchObject({ pendingRecipients: 0, lastRun: { status: 'completed', recipients: 1, items: 1 } });
    // The preview renders the digest template with its sample.
    const preview = await fetch(api('templates/digest-activity/preview'));
    expect(preview.status).toBe(200);
    expect(await preview.text()).toContain('Invoice INV-2041 was paid');
  });

  it('GET of an unknown id is 404; preview of an unknown template is 404; no key is 401', async () => {
    expect((await fetch(api('messages/00000000-0000-4000-8000-000000000000'))).status).toBe(404);
    expect((await fetch(api('templates/no-such-template/preview'))).status).toBe(404);
    expect((await fetch(`${host.url}/api/messages`, { method: 'POST', body: '{}' })).status).toBe(401);
  });
});
