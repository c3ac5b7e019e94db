/** The outbox against Azurite and the sandbox's Exchange: accept, idempotency, scheduling, delivery, leases, retries and poison. */
import { readFileSync } from 'node:fs';
import { CredentialUnavailableError } from '@azure/identity';
import { TableClient } from '@azure/data-tables';
import { RestError, type PipelinePolicy } from '@azure/core-rest-pipeline';
import path from 'node:path';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import type { AzuriteInstance } from '../../dev/azurite';
import type { DeliverOutcome } from '../../src/outbox/delivery';
import { MailError } from '../../src/errors';
import { IdempotencyStore } from '../../src/outbox/idempotencyStore';
import { Outbox, payloadHash } from '../../src/outbox/outbox';
import { recordKeys, uuidv7 } from '../../src/outbox/messageIds';
import { INLINE_CONTENT_MAX_CHARS } from '../../src/outbox/messageContent';
import { StatusStore, statusView } from '../../src/outbox/statusStore';
import { enqueueOutbox, parseOutboxMessage } from '../../src/outbox/outboxQueue';
import { MessageStore } from '../../src/outbox/messageStore';
import { createAppServices, type AppServices } from '../../src/appServices';
import { parseSendRequest } from '../../src/outbox/sendRequest';
import {
  asStorageUnavailable,
  isStorageError,
  STATUS_TABLE,
  storageTargetFromSettings,
} from '../../src/storage/storageClients';
import { ConfigError } from '../../src/config';
import { SMTP_SEND_AS_APP_ROLE } from '../../sandbox/tenant';
import type { Sandbox, TestMailer } from '../support/sandboxMailer';
import { startStack, type Stack } from '../support/stack';

let stack: Stack;
let sandbox: Sandbox;
let azurite: AzuriteInstance;
let mailer: TestMailer;
let rt: AppServices;
let billing: string;

const TEST_BACKOFF_SECONDS = 2;
const TEST_MAX_ATTEMPTS = 3;

beforeAll(async () => {
  stack = await startStack(
    ({ sandbox }) => {
      billing = `billing@${sandbox.tenant.domain}`;
      return {
        MAIL_ALLOWED_FROM: billing,
        // Pacing stays on (test/pacing*.test.ts is about it), at a rate that does not slow these tests down.
        MAIL_RATE_PER_MINUTE: '6000',
      };
    },
    {
      delivery: {
        backoffSeconds: () => TEST_BACKOFF_SECONDS,
        concurrencyBackoffMs: () => TEST_BACKOFF_SECONDS * 1000,
        maxAttempts: TEST_MAX_ATTEMPTS,
      },
    },
  );
  ({ sandbox, azurite, mailer, app: rt } = stack);
});

afterAll(async () => {
  await stack?.close();
});

beforeEach(async () => {
  await rt.storage.outboxQueue.clearMessages();
  sandbox.smtp.reset();
  const mailbox = sandbox.tenant.exchange.mailboxes.get(rt.config.sender);
  if (mailbox) {
    mailbox.smtpAuthEnabled = true;
    mailbox.sendAs.clear();
  }
  sandbox.tenant.app.roles.splice(0, sandbox.tenant.app.roles.length, SMTP_SEND_AS_APP_ROLE);
});

const body = (extra: Record<string, unknown> = {}) => ({
  to: 'someone@example.com',
  subject: 'Outbox test',
  text: 'Hello from the outbox',
  ...extra,
});

/** The ids of the messages visible on the outbox queue now (peek: nothing is dequeued). */
async function visibleIds(): Promise<string[]> {
  const peeked = await rt.storage.outboxQueue.peekMessages({ numberOfMessages: 32 });
  return peeked.peekedMessageItems.map((m) => parseOutboxMessage(m.messageText)?.id ?? '?');
}

/** Waits until at least `count` messages are visible. */
async function waitVisible(count: number, timeoutMs = 15_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while ((await visibleIds()).length < count) {
    if (Date.now() > deadline) throw new Error(`fewer than ${count} queue messages became visible`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

/** Plays the Functions host once: receives the visible messages, runs deliver on each, deletes them on success. */
async function drainOnce(): Promise<DeliverOutcome[]> {
  const received = await rt.storage.outboxQueue.receiveMessages({ numberOfMessages: 32, visibilityTimeout: 30 });
  const outcomes: DeliverOutcome[] = [];
  for (const m of received.receivedMessageItems) {
    const parsed = parseOutboxMessage(m.messageText);
    expect(parsed, 'queue message is { id }').toBeDefined();
    outcomes.push(await rt.delivery.deliver(parsed!.id, { dequeueCount: m.dequeueCount }));
    await rt.storage.outboxQueue.deleteMessage(m.messageId, m.popReceipt);
  }
  return outcomes;
}

async function record(id: string) {
  const r = await rt.status.get(id);
  if (!r) throw new Error(`no record ${id}`);
  return r;
}

async function acceptError(input: unknown, key?: string): Promise<MailError> {
  try {
    await rt.outbox.accept(input, { source: 'http', ...(key ? { idempotencyKeyHeader: key } : {}) });
  } catch (error) {
    expect(error).toBeInstanceOf(MailError);
    return error as MailError;
  }
  throw new Error('expected accept to fail');
}

describe('accept → deliver → sent', () => {
  it('a small message is two writes: its record (content inline) and { id } on the queue; no blob', async () => {
    const accepted = await rt.outbox.accept(body({ html: '<p>Hello 😀 inline</p>' }), { source: 'http' });
    const { partitionKey, rowKey } = recordKeys(accepted.id);
    const entity = await rt.storage.statusTable.getEntity<Record<string, unknown>>(partitionKey, rowKey);
    expect(typeof entity.content0).toBe('string');
    expect(entity.content1).toBeUndefined();
    expect(await rt.storage.payloads.getBlobClient(MessageStore.blobName(accepted.id)).exists()).toBe(false);
    expect(await visibleIds()).toEqual([accepted.id]);
    // The public view shows no content.
    expect(Object.keys(statusView(accepted.record))).not.toContain('content');

    const [outcome] = await drainOnce();
    expect(outcome?.outcome).toBe('sent');
    expect(sandbox.smtp.messages).toHaveLength(1);
    expect(sandbox.smtp.messages[0]!.parsed.html).toContain('Hello 😀 inline');
    expect(sandbox.smtp.messages[0]!.parsed.messageId).toMatch(new RegExp(`^<${accepted.id}@`));
    // The record keeps its content through the lease and `sent` writes, until retention deletes the record.
    expect((await record(accepted.id)).content).toBe(accepted.record.content);
  });

  it('content longer than a Table property is split over content0…n, never inside a surrogate pair', async () => {
    // An emoji (two UTF-16 units) straddling each 30,000-character boundary: a cut inside it would corrupt it.
    const text = `${'a'.repeat(29_900)}${'😀'.repeat(60)}${'b'.repeat(200)}`;
    const accepted = await rt.outbox.accept(body({ text }), { source: 'http' });
    const { partitionKey, rowKey } = recordKeys(accepted.id);
    const entity = await rt.storage.statusTable.getEntity<Record<string, unknown>>(partitionKey, rowKey);
    expect(typeof entity.content1).toBe('string');
    expect(await rt.storage.payloads.getBlobClient(MessageStore.blobName(accepted.id)).exists()).toBe(false);
    await drainOnce();
    expect(sandbox.smtp.messages[0]!.parsed.text?.trim()).toBe(text);
  });

  it('a message stored as before records held content (a payload blob, a record without it) is still delivered', async () => {
    // The layout an earlier version wrote: blob, queue message, record with no content properties.
    const id = uuidv7();
    const request = parseSendRequest(body({ subject: 'from before the upgrade' }), { now: Date.now() });
    const { message } = rt.outbox.render(request);
    await new MessageStore(rt.storage.payloads).put(id, { message: { ...message, messageId: `<${id}@example.com>` } });
    await enqueueOutbox(rt.storage.outboxQueue, id, 0);
    const now = new Date().toISOString();
    await rt.status.create({
      id,
      status: 'queued',
      source: 'http',
      attempts: 0,
      createdAt: now,
      dueAt: now,
      payloadHash: payloadHash(request),
    });
    const [outcome] = await drainOnce();
    expect(outcome?.outcome).toBe('sent');
    expect(sandbox.smtp.messages.map((m) => m.parsed.subject)).toEqual(['from before the upgrade']);
  });

  it('stores the payload in a blob, enqueues only { id }, and delivery sends the MIME asked for', async () => {
    const pdf = Buffer.alloc(200_000, 7); // far over the 64 KB queue message cap: must travel by blob
    const accepted = await rt.outbox.accept(
      body({
        to: ['a@example.com', { address: 'b@example.com', name: 'Bee' }],
        cc: 'c@example.com',
        html: '<p>Hello <b>HTML</b></p>',
        attachments: [
          { filename: 'big.bin', contentType: 'application/octet-stream', contentBase64: pdf.toString('base64') },
        ],
        headers: { 'X-Order': 'A-1' },
      }),
      { source: 'http' },
    );
    expect(accepted.replayed).toBe(false);
    expect(accepted.record).toMatchObject({ id: accepted.id, status: 'queued', source: 'http', attempts: 0 });

    const peeked = await rt.storage.outboxQueue.peekMessages({ numberOfMessages: 32 });
    expect(peeked.peekedMessageItems).toHaveLength(1);
    const text = peeked.peekedMessageItems[0]!.messageText;
    expect(JSON.parse(Buffer.from(text, 'base64').toString('utf8'))).toEqual({ id: accepted.id });
    expect(text.length).toBeLessThan(100);
    expect(await rt.storage.payloads.getBlobClient(MessageStore.blobName(accepted.id)).exists()).toBe(true);

    const [outcome] = await drainOnce();
    expect(outcome?.outcome).toBe('sent');
    const sent = await record(accepted.id);
    expect(sent).toMatchObject({ status: 'sent', attempts: 1 });
    expect(sent.messageId).toMatch(/^<.+>$/);
    expect(sent.smtp?.code).toBe(250);
    expect(sent.leaseUntil).toBeUndefined();

    expect(sandbox.smtp.messages).toHaveLength(1);
    const mime = sandbox.smtp.messages[0]!;
    expect(mime.envelope.from).toBe(rt.config.sender);
    expect(mime.envelope.to).toEqual(['a@example.com', 'b@example.com', 'c@example.com']);
    expect(mime.parsed.subject).toBe('Outbox test');
    expect(mime.parsed.text?.trim()).toBe('Hello from the outbox');
    expect(mime.parsed.html).toContain('<b>HTML</b>');
    expect(mime.parsed.messageId).toBe(sent.messageId);
    expect(mime.parsed.headers.find((h) => h.key === 'x-order')?.value).toBe('A-1');
    expect(mime.parsed.attachments).toHaveLength(1);
    expect(Buffer.from(mime.parsed.attachments[0]!.content as ArrayBuffer).equals(pdf)).toBe(true);
  });

  it('renders a template at accept time and emits MailSent with id, source and attempt to the ingestion endpoint', async () => {
    const sample = JSON.parse(
      readFileSync(path.join(__dirname, '../../templates/order-shipped/sample.json'), 'utf8'),
    ) as Record<string, unknown>;
    sandbox.ingestion.reset();
    const accepted = await rt.outbox.accept(
      { to: 'ada@example.com', template: 'order-shipped', data: sample },
      { source: 'http' },
    );
    expect(accepted.record.status).toBe('queued');
    await drainOnce();
    expect(sandbox.smtp.messages[0]?.parsed.subject).toBe('Your order A-10492 has shipped');
    expect(sandbox.smtp.messages[0]?.parsed.html).toContain('HP-4420-BK');
    await mailer.telemetry.flush();
    const event = sandbox.ingestion.events('MailSent').find((e) => e.properties.id === accepted.id);
    expect(event?.properties).toMatchObject({
      id: accepted.id,
      source: 'http',
      attempt: '1',
      template: 'order-shipped',
    });
  });

  it('refuses at accept time, naming the field: a missing template variable, an unknown template, a From not allowed', async () => {
    const missing = await acceptError({ to: 'a@example.com', template: 'order-shipped', data: { order: { id: 'A' } } });
    expect(missing.code).toBe('INVALID_MESSAGE');
    expect(missing.details?.[0]?.path).toMatch(/^data\./);
    const unknown = await acceptError({ to: 'a@example.com', template: 'no-such-template', data: {} });
    expect(unknown.code).toBe('TEMPLATE_NOT_FOUND');
    expect(unknown.details?.[0]?.path).toBe('template');
    const from = await acceptError(body({ from: 'ceo@elsewhere.example' }));
    expect(from.code).toBe('SENDER_NOT_ALLOWED');
    expect(from.details?.[0]?.path).toBe('from');
    expect(await visibleIds()).toEqual([]);
  });
});

describe('idempotency', () => {
  it('a replay with the same key and payload returns the original id and status and enqueues nothing', async () => {
    const first = await rt.outbox.accept(body({ idempotencyKey: 'order-A-1-shipped' }), { source: 'http' });
    // The same key in the header, the same payload with its keys in another order.
    const second = await rt.outbox.accept(
      { text: 'Hello from the outbox', subject: 'Outbox test', to: 'someone@example.com' },
      { source: 'http', idempotencyKeyHeader: 'order-A-1-shipped' },
    );
    expect(second).toMatchObject({ id: first.id, replayed: true });
    expect(await visibleIds()).toEqual([first.id]);
    await drainOnce();
    const third = await rt.outbox.accept(body({ idempotencyKey: 'order-A-1-shipped' }), { source: 'http' });
    expect(third).toMatchObject({ id: first.id, replayed: true });
    expect(third.record.status).toBe('sent');
    expect(await visibleIds()).toEqual([]);
    expect(sandbox.smtp.messages).toHaveLength(1);
  });

  it('the same key with a different payload is IDEMPOTENCY_CONFLICT naming idempotencyKey', async () => {
    await rt.outbox.accept(body({ idempotencyKey: 'conflict-1' }), { source: 'http' });
    const error = await acceptError(body({ idempotencyKey: 'conflict-1', text: 'Something else' }));
    expect(error.code).toBe('IDEMPOTENCY_CONFLICT');
    expect(error.transient).toBe(false);
    expect(error.details).toEqual([{ path: 'idempotencyKey', message: 'already used for a different message' }]);
  });

  it('twenty concurrent first requests with one key produce one id and one sent message', async () => {
    const results = await Promise.all(
      Array.from({ length: 20 }, () => rt.outbox.accept(body({ idempotencyKey: 'race-1' }), { source: 'http' })),
    );
    const ids = new Set(results.map((r) => r.id));
    expect(ids.size).toBe(1);
    expect(results.filter((r) => !r.replayed)).toHaveLength(1);
    for (let round = 0; round < 3; round++) await drainOnce();
    expect(sandbox.smtp.messages).toHaveLength(1);
    expect((await record([...ids][0]!)).status).toBe('sent');
  });

  it('a first request that died after claiming the key is completed by the retry (regression: claim without record)', async () => {
    // Simulate the crash: claim the key as the first accept would, then write nothing else.
    const input = body({ idempotencyKey: 'crashed-1' });
    const orphanId = '00000000-0000-4000-8000-000000000001';
    await new IdempotencyStore(rt.storage.idempotencyTable).claim(rt.config.sender, 'crashed-1', {
      id: orphanId,
      payloadHash: payloadHash(parseSendRequest(input)),
      createdAt: new Date().toISOString(),
    });
    const retry = await rt.outbox.accept(input, { source: 'http' });
    expect(retry.id).toBe(orphanId);
    expect(retry.record.status).toBe('queued');
    await drainOnce();
    expect((await record(orphanId)).status).toBe('sent');
  });
});

describe('scheduling', () => {
  it('sendAt makes the record scheduled and the queue message invisible until then', async () => {
    const sendAt = new Date(Date.now() + 4_000);
    const accepted = await rt.outbox.accept(body({ sendAt: sendAt.toISOString() }), { source: 'http' });
    expect(accepted.record).toMatchObject({ status: 'scheduled', scheduledFor: sendAt.toISOString() });
    expect(await visibleIds()).toEqual([]);
    const received = await rt.storage.outboxQueue.receiveMessages({ numberOfMessages: 32 });
    expect(received.receivedMessageItems).toHaveLength(0);
    await waitVisible(1);
    expect(Date.now()).toBeGreaterThanOrEqual(sendAt.getTime() - 1_000);
    const [outcome] = await drainOnce();
    expect(outcome?.outcome).toBe('sent');
  });

  it('schedules up to 7 days ahead; a copy arriving early (a duplicate) is dropped without sending', async () => {
    const sendAt = new Date(Date.now() + 6.9 * 24 * 3600 * 1000);
    const accepted = await rt.outbox.accept(body({ sendAt: sendAt.toISOString() }), { source: 'http' });
    expect(accepted.record.status).toBe('scheduled');
    expect(await visibleIds()).toEqual([]);
    await enqueueOutbox(rt.storage.outboxQueue, accepted.id);
    const [outcome] = await drainOnce();
    expect(outcome).toMatchObject({ outcome: 'waiting', reason: 'not-due' });
    expect(sandbox.smtp.messages).toHaveLength(0);
    expect((await record(accepted.id)).status).toBe('scheduled');
  });
});

describe('delivery failures', () => {
  it('Exchange refuses one of three recipients: sent, with that one listed as refused; telemetry counts, never names', async () => {
    sandbox.ingestion.reset();
    sandbox.smtp.faults.refuseRecipients = ['nobody@example.com'];
    const { id } = await rt.outbox.accept(
      body({ to: ['one@example.com', 'nobody@example.com'], cc: 'three@example.com' }),
      { source: 'http' },
    );
    const [outcome] = await drainOnce();
    expect(outcome?.outcome).toBe('sent');
    const sent = await record(id);
    expect(sent).toMatchObject({ status: 'sent', refusedCount: 1 });
    expect(sent.refused).toEqual([
      {
        address: 'nobody@example.com',
        smtp: expect.objectContaining({ code: 550, enhanced: '5.1.10' }) as unknown,
      },
    ]);
    expect(statusView(sent)).toMatchObject({ status: 'sent', refusedCount: 1, refused: sent.refused });
    // Exchange delivered to the other two.
    expect(sandbox.smtp.messages).toHaveLength(1);
    expect(sandbox.smtp.messages[0]?.envelope.to.sort()).toEqual(['one@example.com', 'three@example.com']);
    await mailer.telemetry.flush();
    const event = sandbox.ingestion.events('MailSent').find((e) => e.properties.id === id);
    expect(event?.properties).toMatchObject({ refusedCount: '1', recipientCount: '3' });
    expect(JSON.stringify(sandbox.ingestion.events())).not.toContain('nobody@example.com');
  });

  it('Exchange refuses every recipient: failed with the classified reason, nothing delivered', async () => {
    sandbox.smtp.faults.refuseRecipients = ['nobody@example.com', 'noone@example.com'];
    const { id } = await rt.outbox.accept(body({ to: ['nobody@example.com', 'noone@example.com'] }), {
      source: 'http',
    });
    const [outcome] = await drainOnce();
    expect(outcome?.outcome).toBe('failed');
    const failed = await record(id);
    expect(failed).toMatchObject({ status: 'failed', attempts: 1 });
    expect(failed.error).toMatchObject({
      code: 'RECIPIENT_REJECTED',
      transient: false,
      smtp: { code: 550, enhanced: '5.1.10' },
    });
    expect(failed.error?.hint).toMatch(/address/);
    expect(sandbox.smtp.messages).toHaveLength(0);
    expect(await visibleIds()).toEqual([]);
  });

  it('a transient failure (421 4.3.2) goes back to queued with the error, re-enqueued with back-off, then is sent', async () => {
    sandbox.ingestion.reset();
    Object.assign(sandbox.smtp.faults, { reply421OnCommand: 1, reply421Command: 'MAIL' });
    const { id } = await rt.outbox.accept(body(), { source: 'http' });
    const [first] = await drainOnce();
    expect(first).toMatchObject({ outcome: 'deferred', retryInSeconds: TEST_BACKOFF_SECONDS });
    const deferred = await record(id);
    expect(deferred).toMatchObject({ status: 'queued', attempts: 1, waitReason: 'retry' });
    expect(deferred.error).toMatchObject({ code: 'SMTP_UNAVAILABLE', transient: true, smtp: { code: 421 } });
    expect(await visibleIds()).toEqual([]);
    await waitVisible(1);
    const [second] = await drainOnce();
    expect(second?.outcome).toBe('sent');
    const sent = await record(id);
    expect(sent).toMatchObject({ status: 'sent', attempts: 2 });
    expect(sent.error).toBeUndefined();
    expect(sent.completedAt).toBe(sent.sentAt);
    expect(sandbox.smtp.messages).toHaveLength(1);
    await mailer.telemetry.flush();
    const deferredEvent = sandbox.ingestion.events('MailDeferred').find((e) => e.properties.id === id);
    expect(deferredEvent?.properties).toMatchObject({
      source: 'http',
      attempt: '1',
      errorCode: 'SMTP_UNAVAILABLE',
      reason: 'retry',
    });
  });

  it(`fails with "retries exhausted" after ${TEST_MAX_ATTEMPTS} transient failures`, async () => {
    Object.assign(sandbox.smtp.faults, { reply421OnCommand: 10, reply421Command: 'MAIL' });
    const { id } = await rt.outbox.accept(body(), { source: 'http' });
    for (let attempt = 1; attempt <= TEST_MAX_ATTEMPTS; attempt++) {
      if (attempt > 1) await waitVisible(1);
      await drainOnce();
    }
    const failed = await record(id);
    expect(failed).toMatchObject({ status: 'failed', attempts: TEST_MAX_ATTEMPTS });
    expect(failed.error?.code).toBe('SMTP_UNAVAILABLE');
    expect(failed.error?.message).toMatch(/^retries exhausted: /);
    expect(failed.error?.transient).toBe(false);
    expect(Date.parse(failed.completedAt!)).toBeGreaterThan(Date.parse(failed.createdAt));
    expect(await visibleIds()).toEqual([]);
  });

  it('432 4.3.2 (another sender holds the mailbox sessions) is waited out without spending attempts, then sent', async () => {
    sandbox.ingestion.reset();
    sandbox.smtp.faults.force432 = TEST_MAX_ATTEMPTS + 1; // more throttles than attempts: none of them may count
    const { id } = await rt.outbox.accept(body(), { source: 'http' });
    for (let throttle = 1; throttle <= TEST_MAX_ATTEMPTS + 1; throttle++) {
      if (throttle > 1) await waitVisible(1);
      const [outcome] = await drainOnce();
      expect(outcome).toMatchObject({ outcome: 'paced', reason: 'exchange-concurrency' });
      const waiting = await record(id);
      expect(waiting).toMatchObject({ status: 'queued', attempts: 0, throttles: throttle });
      expect(waiting.error).toMatchObject({ code: 'CONCURRENCY_LIMIT', smtp: { code: 432, enhanced: '4.3.2' } });
      expect(statusView(waiting).waiting).toEqual({ reason: 'exchange-concurrency', until: waiting.dueAt });
    }
    await waitVisible(1);
    const [sent] = await drainOnce();
    expect(sent?.outcome).toBe('sent');
    expect(await record(id)).toMatchObject({ status: 'sent', attempts: 1 });
    expect((await record(id)).throttles).toBeUndefined();
    expect(sandbox.smtp.messages).toHaveLength(1);
    await mailer.telemetry.flush();
    const deferrals = sandbox.ingestion.events('MailDeferred').filter((e) => e.properties.id === id);
    expect(deferrals).toHaveLength(TEST_MAX_ATTEMPTS + 1);
    for (const event of deferrals) {
      expect(event.properties).toMatchObject({
        reason: 'exchange-concurrency',
        errorCode: 'CONCURRENCY_LIMIT',
        smtpCode: '432',
        attempt: '0',
      });
    }
    expect(sandbox.ingestion.events('MailThrottled').filter((e) => e.properties.id === id)).toHaveLength(
      TEST_MAX_ATTEMPTS + 1,
    );
  });

  it('SendAs denied by Exchange is permanent: failed with the classified error and its hint', async () => {
    const { id } = await rt.outbox.accept(body({ from: billing }), { source: 'http' });
    const [outcome] = await drainOnce();
    expect(outcome?.outcome).toBe('failed');
    const failed = await record(id);
    expect(failed.status).toBe('failed');
    expect(failed.error).toMatchObject({ code: 'SEND_AS_DENIED', transient: false, smtp: { enhanced: '5.2.252' } });
    expect(failed.error?.hint).toContain('Add-RecipientPermission');
    expect(await visibleIds()).toEqual([]);
  });

  it('SMTP AUTH disabled for the mailbox is permanent: failed with SMTP_AUTH_DISABLED', async () => {
    await mailer.sender.close(); // an authenticated pooled connection would outlive the switch
    sandbox.tenant.exchange.mailboxes.get(rt.config.sender)!.smtpAuthEnabled = false;
    const { id } = await rt.outbox.accept(body(), { source: 'http' });
    await drainOnce();
    const failed = await record(id);
    expect(failed.status).toBe('failed');
    expect(failed.error).toMatchObject({ code: 'SMTP_AUTH_DISABLED', transient: false });
    expect(failed.error?.hint).toContain('Set-CASMailbox');
    await mailer.sender.close();
  });

  it('a deleted payload blob fails the message with PAYLOAD_MISSING instead of retrying forever, and says so in MailFailed', async () => {
    sandbox.ingestion.reset();
    // Over INLINE_CONTENT_MAX_CHARS: its content is in a blob.
    const { id } = await rt.outbox.accept(body({ text: 'x'.repeat(INLINE_CONTENT_MAX_CHARS) }), { source: 'http' });
    await rt.storage.payloads.deleteBlob(MessageStore.blobName(id));
    const [outcome] = await drainOnce();
    expect(outcome).toMatchObject({ outcome: 'failed' });
    const failed = await record(id);
    expect(failed).toMatchObject({
      status: 'failed',
      attempts: 1,
      error: { code: 'PAYLOAD_MISSING', transient: false },
    });
    expect(failed.leaseUntil).toBeUndefined();
    // No retry was scheduled, nothing was sent, and a late copy of the queue message changes nothing.
    expect(await visibleIds()).toEqual([]);
    expect((await rt.storage.outboxQueue.getProperties()).approximateMessagesCount).toBe(0);
    expect(await rt.delivery.deliver(id, { dequeueCount: 1 })).toMatchObject({ outcome: 'completed' });
    expect((await record(id)).attempts).toBe(1);
    expect(sandbox.smtp.messages).toHaveLength(0);
    // No SMTP attempt reported it, so the delivery does: once.
    await mailer.telemetry.flush();
    const failures = sandbox.ingestion.events('MailFailed').filter((e) => e.properties.id === id);
    expect(failures.map((e) => e.properties)).toEqual([
      { id, source: 'http', attempt: '1', errorCode: 'PAYLOAD_MISSING', transient: 'false' },
    ]);
  });

  it('poison: the host gave up on the message, so the record turns failed with reason "poison: …"', async () => {
    sandbox.smtp.faults.force432 = 1;
    const { id } = await rt.outbox.accept(body(), { source: 'http' });
    await drainOnce(); // one transient failure is on record
    const poisoned = await rt.delivery.markPoisoned(id, { dequeueCount: 5 });
    expect(poisoned).toMatchObject({ status: 'failed' });
    expect(poisoned?.error?.code).toBe('POISON_MESSAGE');
    expect(poisoned?.error?.message).toMatch(/^poison: .*last error: CONCURRENCY_LIMIT/);
    // Its retry copy then finds a failed record and sends nothing.
    await waitVisible(1);
    const [late] = await drainOnce();
    expect(late?.outcome).toBe('completed');
    expect(sandbox.smtp.messages).toHaveLength(0);
  });

  it('poison never overrides an outcome: a sent record stays sent', async () => {
    const { id } = await rt.outbox.accept(body(), { source: 'http' });
    await drainOnce();
    expect((await rt.delivery.markPoisoned(id, { dequeueCount: 5 }))?.status).toBe('sent');
  });
});

describe('at-least-once queue, exactly-once send', () => {
  it('a record already sent is never sent again when its message is redelivered', async () => {
    const { id } = await rt.outbox.accept(body(), { source: 'http' });
    await drainOnce();
    await enqueueOutbox(rt.storage.outboxQueue, id);
    await enqueueOutbox(rt.storage.outboxQueue, id);
    const outcomes = await drainOnce();
    expect(outcomes.map((o) => o.outcome)).toEqual(['completed', 'completed']);
    expect(sandbox.smtp.messages).toHaveLength(1);
  });

  it('a sending record under a live lease is not sent by a second worker, which re-enqueues for when the lease ends', async () => {
    const { id } = await rt.outbox.accept(body(), { source: 'http' });
    const leaseUntil = new Date(Date.now() + 60_000).toISOString();
    await rt.status.transition(await record(id), { status: 'sending', attempts: 1, leaseUntil });
    const [outcome] = await drainOnce();
    expect(outcome).toMatchObject({ outcome: 'waiting', reason: 'lease' });
    expect((outcome as { retryInSeconds: number }).retryInSeconds).toBeGreaterThan(55);
    expect(sandbox.smtp.messages).toHaveLength(0);
    expect(await visibleIds()).toEqual([]); // the re-enqueued copy is invisible until the lease ends
    const approx = await rt.storage.outboxQueue.getProperties();
    expect(approx.approximateMessagesCount).toBe(1);
  });

  it('a worker that took the lease and died: once the lease has expired the next delivery sends it', async () => {
    const { id } = await rt.outbox.accept(body(), { source: 'http' });
    const expired = new Date(Date.now() - 1_000).toISOString();
    await rt.status.transition(await record(id), { status: 'sending', attempts: 1, leaseUntil: expired });
    const [outcome] = await drainOnce();
    expect(outcome?.outcome).toBe('sent');
    expect(await record(id)).toMatchObject({ status: 'sent', attempts: 2 });
    expect(sandbox.smtp.messages).toHaveLength(1);
  });

  it('two workers delivering the same id at once send it once (the ETag-guarded lease)', async () => {
    const { id } = await rt.outbox.accept(body(), { source: 'http' });
    const outcomes = await Promise.all(Array.from({ length: 5 }, () => rt.delivery.deliver(id, { dequeueCount: 1 })));
    expect(outcomes.filter((o) => o.outcome === 'sent')).toHaveLength(1);
    expect(sandbox.smtp.messages).toHaveLength(1);
  });

  it('a record written a moment after its queue message (the accept writes the queue message first) is waited for and sent', async () => {
    const { id } = await rt.outbox.accept(body(), { source: 'http' });
    const written = await record(id);
    expect(await rt.status.delete(written)).toBe(true);
    // The record appears 500 ms into the delivery, as it does when a worker dequeues faster than the accept writes.
    const late = new Promise<void>((resolve) =>
      setTimeout(() => {
        const { etag: _etag, ...rest } = written;
        void rt.status.create(rest).then(() => resolve());
      }, 500),
    );
    const outcome = await rt.delivery.deliver(id, { dequeueCount: 1 });
    await late;
    expect(outcome.outcome).toBe('sent');
    expect(sandbox.smtp.messages).toHaveLength(1);
  });

  it('a queue message whose accept died before the record: left to the host while retries remain, dropped at the last, nothing sent', async () => {
    const id = uuidv7();
    await enqueueOutbox(rt.storage.outboxQueue, id, 0);
    await expect(rt.delivery.deliver(id, { dequeueCount: 1 })).rejects.toThrow(/no status record yet/);
    expect(await rt.delivery.deliver(id, { dequeueCount: 5 })).toEqual({ outcome: 'missing' });
    expect(await rt.delivery.markPoisoned(id, { dequeueCount: 6 })).toBeUndefined();
    expect(await rt.status.get(id)).toBeUndefined();
    expect(sandbox.smtp.messages).toHaveLength(0);
  });

  it('accept writes the queue message before the record: a record write that fails leaves no record without its queue message, and the retry completes', async () => {
    // Storage fails every status insert, as a crash right after the enqueue would leave it.
    let failInserts = true;
    const failing: PipelinePolicy = {
      name: 'failStatusInserts',
      sendRequest: (request, next) => {
        if (failInserts && request.method === 'POST' && /\/MailStatus\b/.test(request.url)) {
          return Promise.reject(new RestError('injected: storage failed on the status insert', { statusCode: 503 }));
        }
        return next(request);
      },
    };
    const table = TableClient.fromConnectionString(azurite.connectionString, STATUS_TABLE, {
      allowInsecureConnection: true,
      additionalPolicies: [{ policy: failing, position: 'perCall' }],
      retryOptions: { maxRetries: 0 },
    });
    const outbox = new Outbox({
      config: rt.config,
      renderer: rt.renderer,
      storage: rt.storage,
      status: new StatusStore(table),
      payloads: rt.payloads,
      idempotency: new IdempotencyStore(rt.storage.idempotencyTable),
    });
    const key = `crash-${Date.now()}`;
    await expect(outbox.accept(body(), { source: 'http', idempotencyKeyHeader: key })).rejects.toThrow(/injected/);
    const [queued] = await visibleIds();
    expect(queued).toBeDefined();
    expect(await rt.status.get(queued!)).toBeUndefined(); // a queue message without a record, never the reverse
    failInserts = false;
    const retried = await outbox.accept(body(), { source: 'http', idempotencyKeyHeader: key });
    expect(retried).toMatchObject({ id: queued, replayed: false });
    const outcomes = await drainOnce();
    expect(outcomes.filter((o) => o.outcome === 'sent')).toHaveLength(1);
    expect(sandbox.smtp.messages).toHaveLength(1);
  });
});

describe('storage settings (the Functions AzureWebJobsStorage convention)', () => {
  it('an identity that cannot get a storage token is STORAGE_UNAVAILABLE naming the identity settings', () => {
    const error = asStorageUnavailable(
      new CredentialUnavailableError('ManagedIdentityCredential: Unable to load the proper Managed Identity.'),
    );
    expect(error).toMatchObject({ code: 'STORAGE_UNAVAILABLE', transient: true });
    expect(error?.message).toContain('AzureWebJobsStorage__clientId');
    expect(isStorageError(new CredentialUnavailableError('x'))).toBe(true);
    expect(asStorageUnavailable(new Error('something else'))).toBeUndefined();
  });

  it('a connection string wins; identity-based settings need all three service URIs; neither names AzureWebJobsStorage', () => {
    expect(storageTargetFromSettings({ AzureWebJobsStorage: azurite.connectionString }).kind).toBe('connectionString');
    const identity = storageTargetFromSettings({
      AzureWebJobsStorage__queueServiceUri: 'https://acct.queue.core.windows.net',
      AzureWebJobsStorage__tableServiceUri: 'https://acct.table.core.windows.net',
      AzureWebJobsStorage__blobServiceUri: 'https://acct.blob.core.windows.net',
      AzureWebJobsStorage__credential: 'managedidentity',
      AzureWebJobsStorage__clientId: '00000000-0000-0000-0000-000000000001',
    });
    expect(identity).toMatchObject({ kind: 'identity', tableServiceUri: 'https://acct.table.core.windows.net' });
    expect(storageTargetFromSettings({ AzureWebJobsStorage__accountName: 'acct' })).toMatchObject({
      kind: 'identity',
      blobServiceUri: 'https://acct.blob.core.windows.net',
    });
    expect(() => storageTargetFromSettings({})).toThrow(/AzureWebJobsStorage is required/);
    expect(() =>
      storageTargetFromSettings({ AzureWebJobsStorage__queueServiceUri: 'https://acct.queue.core.windows.net' }),
    ).toThrow(/AzureWebJobsStorage__tableServiceUri is required/);
    expect(() => createAppServices({ ...sandbox.settings() })).toThrow(ConfigError);
  });
});
