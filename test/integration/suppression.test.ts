/**
 * Unsubscribe and suppression against Azurite and the sandbox: the List-Unsubscribe headers of bulk mail as the
 * sandbox's Exchange received them, suppressed recipients at accept and at delivery, /api/suppressions, and
 * /api/unsubscribe with valid, altered, malformed and expired tokens.
 */
import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import type { ApiRequest, ApiResponse } from '../../src/api/apiTypes';
import { getMessage } from '../../src/api/messagesGet';
import { getNotifications } from '../../src/api/notificationsGet';
import { postNotifications } from '../../src/api/notificationsPost';
import { runApi, type ApiHandler } from '../../src/api/runApi';
import { addSuppression, deleteSuppression, listSuppressions } from '../../src/api/suppressions';
import { unsubscribe } from '../../src/api/unsubscribe';
import type { AppServices } from '../../src/appServices';
import { recipientIdempotencyKey } from '../../src/notifications/batchRequest';
import type { BatchView } from '../../src/notifications/notifications';
import { batchMessageId } from '../../src/outbox/messageIds';
import { parseOutboxMessage } from '../../src/outbox/outboxQueue';
import { UNSUBSCRIBE_CSP } from '../../src/suppression/unsubscribePage';
import { signUnsubscribeToken, verifyUnsubscribeToken } from '../../src/suppression/unsubscribeToken';
import { secretScanner } from '../support/secretScan';
import { startApp, startStack, type Stack, type StackApp } from '../support/stack';

const BASE = 'http://127.0.0.1:7071/api';
let stack: Stack;
let rt: AppServices;

beforeAll(async () => {
  stack = await startStack({ MAIL_PACING: 'off' }, { delivery: { backoffSeconds: () => 1 } });
  rt = stack.app;
}, 60_000);

afterAll(async () => {
  await stack?.close();
});

beforeEach(async () => {
  await Promise.all([rt.storage.outboxQueue.clearMessages(), rt.storage.notificationsQueue.clearMessages()]);
  stack.sandbox.smtp.reset();
});

interface Spec {
  method?: string;
  path: string;
  body?: string;
  headers?: Record<string, string>;
  params?: Record<string, string>;
}

function request(spec: Spec): ApiRequest {
  const url = `${BASE}/${spec.path}`;
  return {
    method: spec.method ?? 'GET',
    url,
    headers: new Headers(spec.headers ?? {}),
    query: new URL(url).searchParams,
    params: spec.params ?? {},
    body: spec.body !== undefined ? new Response(spec.body).body : null,
  };
}
const call = (handler: ApiHandler, spec: Spec, app: AppServices = rt): Promise<ApiResponse> =>
  runApi(handler, request(spec), () => app);
const json = (spec: Omit<Spec, 'headers'> & { json: unknown }): Spec => ({
  ...spec,
  method: spec.method ?? 'POST',
  body: JSON.stringify(spec.json),
  headers: { 'content-type': 'application/json' },
});
type ErrorJson = { error: { code: string; details: Array<{ path: string; message: string }> } };
const fields = (r: ApiResponse) => (r.jsonBody as ErrorJson).error.details.map((d) => d.path);

let n = 0;
/** Fresh addresses and lists per test: suppressions never leak across tests. */
const fresh = (name: string) => `${name}-${Date.now()}-${++n}@example.com`;
const freshList = () => `list-${Date.now()}-${++n}`;

/** Fans out whatever mail-notifications holds, then delivers whatever mail-outbox holds that is visible. */
async function pump(app: AppServices = rt): Promise<void> {
  for (;;) {
    const got = await app.storage.notificationsQueue.receiveMessages({ numberOfMessages: 32, visibilityTimeout: 60 });
    if (got.receivedMessageItems.length === 0) break;
    for (const m of got.receivedMessageItems) {
      await app.notifications.handleMessage(m.messageText, { dequeueCount: m.dequeueCount });
      await app.storage.notificationsQueue.deleteMessage(m.messageId, m.popReceipt);
    }
  }
  await drain(app);
}

async function drain(app: AppServices = rt): Promise<void> {
  for (;;) {
    const got = await app.storage.outboxQueue.receiveMessages({ numberOfMessages: 32, visibilityTimeout: 60 });
    if (got.receivedMessageItems.length === 0) return;
    for (const m of got.receivedMessageItems) {
      await app.delivery.deliver(parseOutboxMessage(m.messageText)!.id, { dequeueCount: m.dequeueCount });
      await app.storage.outboxQueue.deleteMessage(m.messageId, m.popReceipt);
    }
  }
}

async function submit(body: Record<string, unknown>, app: AppServices = rt): Promise<ApiResponse> {
  return call(postNotifications, json({ path: 'notifications', json: body }), app);
}

async function view(batchId: string): Promise<BatchView> {
  const r = await call(getNotifications, { path: `notifications/${batchId}`, params: { batchId } });
  expect(r.status).toBe(200);
  return r.jsonBody as BatchView;
}

const batch = (recipients: string[], extra: Record<string, unknown> = {}) => ({
  template: 'notification',
  data: { title: 'News', paragraphs: ['Shared paragraph.'] },
  recipients: recipients.map((to) => ({ to })),
  ...extra,
});

/** The received message to `address`, with its header values by lower-cased name. */
function received(address: string) {
  const message = stack.sandbox.smtp.messages.find((m) => m.envelope.to.includes(address));
  if (!message) return undefined;
  const header = (name: string) => message.parsed.headers.find((h) => h.key === name.toLowerCase())?.value;
  return { message, header };
}

async function unsubscribeKey(): Promise<Buffer> {
  return Buffer.from((await (await rt.mailer()).secrets!.get(rt.config.unsubscribe.keyName)).value, 'utf8');
}

describe('List-Unsubscribe headers', () => {
  it('a bulk recipient gets both headers with a valid token for its address and list; a transactional one neither', async () => {
    const bulkTo = fresh('bulk');
    const txTo = fresh('tx');
    const list = freshList();
    expect((await submit(batch([bulkTo], { category: 'bulk', list }))).status).toBe(202);
    expect((await submit(batch([txTo]))).status).toBe(202);
    await pump();

    const bulk = received(bulkTo);
    expect(bulk, 'the bulk message was delivered').toBeDefined();
    const listUnsubscribe = bulk!.header('List-Unsubscribe') ?? '';
    expect(bulk!.header('List-Unsubscribe-Post')).toBe('List-Unsubscribe=One-Click');
    const match =
      /^<(http:\/\/127\.0\.0\.1:7071\/api\/unsubscribe\?t=([A-Za-z0-9_.-]+))>, <mailto:([^?]+)\?subject=unsubscribe%20([A-Za-z0-9_.-]+)>$/.exec(
        listUnsubscribe.replace(/\s+/g, ' '),
      );
    expect(match, listUnsubscribe).not.toBeNull();
    const [, , httpToken, mailbox, mailtoToken] = match!;
    expect(mailtoToken).toBe(httpToken);
    expect(mailbox).toBe(rt.config.sender);
    const claim = verifyUnsubscribeToken(httpToken, await unsubscribeKey(), Date.now());
    expect(claim).toMatchObject({ address: bulkTo, list });
    expect(claim.expiresAt).toBeGreaterThan(Date.now() + 300 * 86_400_000);

    const tx = received(txTo);
    expect(tx, 'the transactional message was delivered').toBeDefined();
    expect(tx!.header('List-Unsubscribe')).toBeUndefined();
    expect(tx!.header('List-Unsubscribe-Post')).toBeUndefined();
  });

  it('the list defaults to the template name; list with a transactional batch is a 400 naming list', async () => {
    const to = fresh('default-list');
    expect((await submit(batch([to], { category: 'bulk' }))).status).toBe(202);
    await pump();
    const token = /t=([A-Za-z0-9_.-]+)>/.exec(received(to)!.header('List-Unsubscribe') ?? '')![1];
    expect(verifyUnsubscribeToken(token, await unsubscribeKey(), Date.now()).list).toBe('notification');

    const refused = await submit(batch([fresh('x')], { list: 'news' }));
    expect(refused.status).toBe(400);
    expect(fields(refused)).toEqual(['list']);
    const badList = await submit(batch([fresh('x')], { category: 'bulk', list: 'News Letter' }));
    expect(badList.status).toBe(400);
    expect(fields(badList)).toEqual(['list']);
  });

  it('without MAIL_UNSUBSCRIBE_BASE_URL a bulk batch is refused with 400 naming category; transactional still goes', async () => {
    let other: StackApp | undefined;
    try {
      other = await startApp(stack, { MAIL_PACING: 'off', MAIL_UNSUBSCRIBE_BASE_URL: '' });
      const refused = await submit(batch([fresh('nobase')], { category: 'bulk' }), other.app);
      expect(refused.status).toBe(400);
      expect((refused.jsonBody as ErrorJson).error.code).toBe('unsubscribe_not_configured');
      expect(fields(refused)).toEqual(['category']);
      expect((await submit(batch([fresh('nobase-tx')]), other.app)).status).toBe(202);
    } finally {
      await other?.close();
    }
  });
});

describe('the unsubscribe key missing from Key Vault', () => {
  it('every recipient of a bulk batch is rejected naming the secret, the batch fails, nothing is sent', async () => {
    const other = await startApp(stack, { MAIL_PACING: 'off', MAIL_UNSUBSCRIBE_KEY_NAME: 'no-such-unsubscribe-key' });
    try {
      const to = fresh('nokey');
      const accepted = await submit(batch([to], { category: 'bulk' }), other.app);
      expect(accepted.status).toBe(202);
      await pump(other.app);
      const { batchId } = accepted.jsonBody as { batchId: string };
      const v = (await other.app.notifications.view(batchId))!;
      expect(v).toMatchObject({ status: 'failed', accepted: 0, rejected: 1 });
      expect(v.rejections[0]).toMatchObject({ index: 0, field: 'recipients[0]' });
      expect(v.rejections[0]?.reason).toContain('no-such-unsubscribe-key');
      expect(received(to)).toBeUndefined();
    } finally {
      await other.close();
    }
  });
});

describe('suppressed recipients', () => {
  it('at accept: a suppressed bulk recipient ends suppressed, is never sent, and the batch counts it', async () => {
    const kept = fresh('kept');
    const gone = fresh('gone');
    const globally = fresh('global');
    const list = freshList();
    await rt.suppressions.add({ address: gone, list, source: 'api', createdAt: new Date().toISOString() });
    // A suppression from every list blocks this list too.
    await rt.suppressions.add({ address: globally, source: 'api', createdAt: new Date().toISOString() });
    const accepted = await submit(batch([kept, gone.toUpperCase(), globally], { category: 'bulk', list }));
    expect(accepted.status).toBe(202);
    await pump();
    const { batchId } = accepted.jsonBody as { batchId: string };
    const v = await view(batchId);
    expect(v).toMatchObject({ accepted: 3, rejected: 0 });
    expect(v.counts).toMatchObject({ sent: 1, suppressed: 2, queued: 0, failed: 0 });
    expect(received(kept)).toBeDefined();
    expect(received(gone)).toBeUndefined();
    expect(received(globally)).toBeUndefined();
    const status = await call(getMessage, {
      path: `messages/${batchId}`,
      params: { id: batchMessageId(batchId, recipientIdempotencyKey(batchId, gone)) },
    });
    expect(status.jsonBody).toMatchObject({ status: 'suppressed', list, source: 'notification' });
    await (await rt.mailer()).telemetry.flush();
    const events = stack.sandbox.ingestion.events('MailSuppressed').filter((e) => e.properties.batchId === batchId);
    expect(events).toHaveLength(2);
    for (const e of events) {
      expect(e.properties).toMatchObject({ stage: 'accept', list, source: 'notification' });
      expect(JSON.stringify(e)).not.toContain('@example.com');
    }
  });

  it('a transactional batch is sent to an address suppressed from every bulk list', async () => {
    const to = fresh('tx-suppressed');
    await rt.suppressions.add({ address: to, source: 'api', createdAt: new Date().toISOString() });
    expect((await submit(batch([to]))).status).toBe(202);
    await pump();
    expect(received(to)).toBeDefined();
  });

  it('at delivery: a suppression added while the message waits for its sendAt stops it before SMTP', async () => {
    const to = fresh('later');
    const list = freshList();
    const sendAt = new Date(Date.now() + 3_000).toISOString();
    const accepted = await submit(batch([to], { category: 'bulk', list, sendAt }));
    expect(accepted.status).toBe(202);
    await pump(); // fans out; the outbox message is not visible yet
    const { batchId } = accepted.jsonBody as { batchId: string };
    expect((await view(batchId)).counts).toMatchObject({ scheduled: 1, suppressed: 0 });

    await rt.suppressions.add({ address: to, list, source: 'unsubscribe', createdAt: new Date().toISOString() });
    await new Promise((resolve) => setTimeout(resolve, 3_500));
    await drain();
    const v = await view(batchId);
    expect(v.counts).toMatchObject({ suppressed: 1, sent: 0, scheduled: 0, queued: 0 });
    expect(received(to)).toBeUndefined();
    expect(stack.sandbox.smtp.messages).toHaveLength(0);
    await (await rt.mailer()).telemetry.flush();
    const events = stack.sandbox.ingestion.events('MailSuppressed').filter((e) => e.properties.batchId === batchId);
    expect(events.map((e) => e.properties.stage)).toEqual(['delivery']);
  }, 20_000);
});

describe('/api/suppressions', () => {
  it('POST adds (201, then 200), GET lists by list, DELETE removes (204, then 404)', async () => {
    const address = fresh('api');
    const list = freshList();
    const first = await call(
      addSuppression,
      json({ path: 'suppressions', json: { address: address.toUpperCase(), list } }),
    );
    expect(first.status).toBe(201);
    expect(first.jsonBody).toMatchObject({ address, list, source: 'api' });
    const again = await call(addSuppression, json({ path: 'suppressions', json: { address, list } }));
    expect(again.status).toBe(200);
    const listed = await call(listSuppressions, { path: `suppressions?list=${list}` });
    expect(listed.status).toBe(200);
    expect((listed.jsonBody as { items: unknown[] }).items).toEqual([expect.objectContaining({ address, list })]);

    const del = (path: string) =>
      call(deleteSuppression, { method: 'DELETE', path, params: { address: address.toUpperCase() } });
    expect((await del(`suppressions/${address}`)).status).toBe(404); // no global one
    expect((await del(`suppressions/${address}?list=${list}`)).status).toBe(204);
    expect((await del(`suppressions/${address}?list=${list}`)).status).toBe(404);
    expect(
      ((await call(listSuppressions, { path: `suppressions?list=${list}` })).jsonBody as { items: unknown[] }).items,
    ).toEqual([]);
  });

  it('GET pages with a continuation token', async () => {
    const list = freshList();
    await Promise.all(
      Array.from({ length: 105 }, (_, i) =>
        rt.suppressions.add({
          address: `p${i}-${list}@example.com`,
          list,
          source: 'api',
          createdAt: new Date().toISOString(),
        }),
      ),
    );
    const first = (await call(listSuppressions, { path: `suppressions?list=${list}` })).jsonBody as {
      items: unknown[];
      continuation?: string;
    };
    expect(first.items).toHaveLength(100);
    expect(first.continuation).toBeTruthy();
    const second = await call(listSuppressions, {
      path: `suppressions?list=${list}&continuation=${encodeURIComponent(first.continuation!)}`,
    });
    expect(second.status).toBe(200);
    expect((second.jsonBody as { items: unknown[]; continuation?: string }).items).toHaveLength(5);
    expect((second.jsonBody as { continuation?: string }).continuation).toBeUndefined();
  });

  it('bad input is a 400 naming the field', async () => {
    const cases: Array<[Spec, ApiHandler, string[]]> = [
      [json({ path: 'suppressions', json: { address: 'not-an-address' } }), addSuppression, ['address']],
      [json({ path: 'suppressions', json: { address: 'a@example.com', list: 'UPPER' } }), addSuppression, ['list']],
      [json({ path: 'suppressions', json: { address: 'a@example.com', extra: 1 } }), addSuppression, ['extra']],
      [
        json({ path: 'suppressions', json: { address: `${'a'.repeat(400)}@example.com` } }),
        addSuppression,
        ['address'],
      ],
      [{ path: 'suppressions?list=bad%0alist' }, listSuppressions, ['list']],
      [{ path: 'suppressions?continuation=%3Cscript%3E' }, listSuppressions, ['continuation']],
      [{ path: 'suppressions?continuation=bm90LWEtdG9rZW4' }, listSuppressions, ['continuation']],
      [{ method: 'DELETE', path: 'suppressions/x', params: { address: 'x\r\ny' } }, deleteSuppression, ['address']],
      // Accepted by the address rule alone: a control character or an unpaired surrogate in the local part.
      [json({ path: 'suppressions', json: { address: 'a\u0000b@example.com' } }), addSuppression, ['address']],
      [json({ path: 'suppressions', json: { address: 'a\ud800b@example.com' } }), addSuppression, ['address']],
    ];
    for (const [spec, handler, expected] of cases) {
      const r = await call(handler, spec);
      expect(r.status, JSON.stringify(spec).slice(0, 120)).toBe(400);
      expect(fields(r)).toEqual(expected);
    }
  });
});

describe('/api/unsubscribe', () => {
  /** `text` with the character at `i` replaced by another. */
  const flip = (text: string, i: number) => `${text.slice(0, i)}${text[i] === 'B' ? 'C' : 'B'}${text.slice(i + 1)}`;

  async function tokenFor(address: string, list: string, expiresAt = Date.now() + 86_400_000) {
    return signUnsubscribeToken({ address, list, expiresAt }, await unsubscribeKey());
  }

  it('GET shows the confirmation page and records nothing; POST records, idempotently', async () => {
    const address = fresh('click');
    const list = freshList();
    const t = await tokenFor(address, list);
    const page = await call(unsubscribe, { path: `unsubscribe?t=${t}` });
    expect(page.status).toBe(200);
    expect(page.headers?.['Content-Security-Policy']).toBe(UNSUBSCRIBE_CSP);
    expect(page.headers?.['Content-Type']).toBe('text/html; charset=utf-8');
    expect(page.body).toContain(address);
    expect(page.body).toContain('method="post"');
    expect(await rt.suppressions.get(address, list)).toBeUndefined();

    const one = await call(unsubscribe, { method: 'POST', path: `unsubscribe?t=${t}` });
    expect(one.status).toBe(200);
    expect(await rt.suppressions.get(address, list)).toMatchObject({ address, list, source: 'unsubscribe' });
    const two = await call(unsubscribe, {
      method: 'POST',
      path: `unsubscribe?t=${t}`,
      body: 'List-Unsubscribe=One-Click',
      headers: { 'content-type': 'application/x-www-form-urlencoded' },
    });
    expect(two.status).toBe(200);
    const listed = (await call(listSuppressions, { path: `suppressions?list=${list}` })).jsonBody as {
      items: unknown[];
    };
    expect(listed.items).toHaveLength(1);
  });

  it('an altered, malformed, expired or foreign token is a 400 naming t and records nothing', async () => {
    const address = fresh('bad');
    const list = freshList();
    const good = await tokenFor(address, list);
    const [payload, mac] = good.split('.') as [string, string];
    const other = Buffer.from(`1\n${Math.floor(Date.now() / 1000) + 3600}\n${list}\nvictim@example.com`).toString(
      'base64url',
    );
    const tokens = [
      '',
      'x',
      `${payload}.${flip(mac, 5)}`,
      // The last character has bits a base64 decoder ignores: changing only those is still an altered token.
      `${payload}.${flip(mac, mac.length - 1)}`,
      `${other}.${mac}`,
      `${payload}`,
      `${payload}..${mac}`,
      'a'.repeat(5000),
      await tokenFor(address, list, Date.now() - 1000),
      signUnsubscribeToken({ address, list, expiresAt: Date.now() + 86_400_000 }, Buffer.alloc(48, 7)),
      encodeURIComponent('<script>alert(1)</script>.AAAAAAAAAAAAAAAAAAAAAA'),
    ];
    for (const t of tokens) {
      for (const method of ['GET', 'POST']) {
        const r = await call(unsubscribe, { method, path: `unsubscribe?t=${t}` });
        expect(r.status, `${method} ${t.slice(0, 40)}`).toBe(400);
        if (method === 'POST') expect(fields(r)).toEqual(['t']);
        else expect(r.body).toContain('(t)');
        expect(r.body ?? '').not.toContain('<script>');
      }
    }
    const browser = await call(unsubscribe, {
      method: 'POST',
      path: 'unsubscribe?t=x',
      headers: { accept: 'text/html' },
    });
    expect(browser.status).toBe(400);
    expect(browser.body).toContain('(t)');
    expect(await rt.suppressions.get(address, list)).toBeUndefined();
    expect(await rt.suppressions.get('victim@example.com', list)).toBeUndefined();
  });

  it('a POST body other than the one-click field is a 400 naming List-Unsubscribe', async () => {
    const address = fresh('body');
    const list = freshList();
    const t = await tokenFor(address, list);
    const r = await call(unsubscribe, { method: 'POST', path: `unsubscribe?t=${t}`, body: 'List-Unsubscribe=No' });
    expect(r.status).toBe(400);
    expect(fields(r)).toEqual(['List-Unsubscribe']);
    const big = await call(unsubscribe, { method: 'POST', path: `unsubscribe?t=${t}`, body: 'x'.repeat(5000) });
    expect(big.status).toBe(413);
    expect(await rt.suppressions.get(address, list)).toBeUndefined();
  });

  it('the unsubscribe key is read from Key Vault and never appears in the logs or telemetry', async () => {
    const key = (await unsubscribeKey()).toString('utf8');
    const to = fresh('scanned');
    expect((await submit(batch([to], { category: 'bulk' }))).status).toBe(202);
    await pump();
    await (await rt.mailer()).telemetry.flush();
    const telemetry = stack.sandbox.ingestion.items.map((item) => JSON.stringify(item));
    expect(telemetry.length).toBeGreaterThan(0);
    const needles = stack.sandbox.secrets();
    expect(needles.some((s) => s.value === key && s.label.includes(rt.config.unsubscribe.keyName))).toBe(true);
    expect(secretScanner(needles).findAll({ logs: stack.logs, telemetry })).toEqual([]);
    // Nor do the tokens of the links sent, or the addresses of bulk recipients, reach the telemetry.
    const tokens = stack.sandbox.smtp.messages.flatMap((m) =>
      [
        ...(m.parsed.headers.find((h) => h.key === 'list-unsubscribe')?.value ?? '').matchAll(/t=([A-Za-z0-9_.-]+)>/g),
      ].map((match) => match[1] as string),
    );
    expect(tokens).toHaveLength(1);
    for (const token of tokens) expect(telemetry.join('\n')).not.toContain(token);
    expect(telemetry.join('\n')).not.toContain(to);
  });
});

describe('rotating the unsubscribe key', () => {
  it('links signed with the key a rotation replaced stay valid while <name>-previous holds it, and only then', async () => {
    const name = rt.config.unsubscribe.keyName;
    const vault = stack.sandbox.keyVault;
    const old = (await (await rt.mailer()).secrets!.get(name)).value;
    const address = fresh('rotated');
    const list = freshList();
    const oldToken = signUnsubscribeToken(
      { address, list, expiresAt: Date.now() + 86_400_000 },
      Buffer.from(old, 'utf8'),
    );
    const fresher = randomBytes(48).toString('base64');
    vault.setSecret(`${name}-previous`, old);
    vault.setSecret(name, fresher);
    // Fresh apps: their Key Vault caches start empty.
    const apps: StackApp[] = [];
    try {
      const rotated = await startApp(stack, { MAIL_PACING: 'off' });
      apps.push(rotated);
      const post = (t: string, app: AppServices) =>
        call(unsubscribe, { method: 'POST', path: `unsubscribe?t=${t}` }, app);
      const first = await post(oldToken, rotated.app);
      expect(first.status, JSON.stringify(first.jsonBody)).toBe(200);
      expect(await rt.suppressions.get(address, list)).toMatchObject({ address, list });
      const newToken = signUnsubscribeToken(
        { address: fresh('new'), list, expiresAt: Date.now() + 86_400_000 },
        Buffer.from(fresher, 'utf8'),
      );
      expect((await post(newToken, rotated.app)).status).toBe(200);

      // The previous key removed: its links are refused.
      vault.deleteSecret(`${name}-previous`);
      const later = await startApp(stack, { MAIL_PACING: 'off' });
      apps.push(later);
      const refused = await post(oldToken, later.app);
      expect(refused.status).toBe(400);
      expect(fields(refused)).toEqual(['t']);
      expect((await post(newToken, later.app)).status).toBe(200);
    } finally {
      vault.setSecret(name, old);
      for (const app of apps) await app.close();
    }
  });
});

describe('Key Vault down', () => {
  it('an unsubscribe answers 503 with Retry-After (not a 500), and records nothing', async () => {
    const closed = await startApp(stack, { MAIL_PACING: 'off', MAIL_KEY_VAULT_URL: 'https://127.0.0.1:1' });
    try {
      const key = await unsubscribeKey();
      const address = fresh('vault-down');
      const list = freshList();
      const t = signUnsubscribeToken({ address, list, expiresAt: Date.now() + 86_400_000 }, key);
      const r = await call(unsubscribe, { method: 'POST', path: `unsubscribe?t=${t}` }, closed.app);
      expect(r.status).toBe(503);
      expect(r.headers?.['Retry-After']).toBeDefined();
      expect((r.jsonBody as ErrorJson).error.code).toBe('key_vault_unavailable');
      expect(await rt.suppressions.get(address, list)).toBeUndefined();
    } finally {
      await closed.close();
    }
  }, 60_000);
});
