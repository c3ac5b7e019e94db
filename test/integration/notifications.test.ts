/**
 * Batch notifications against Azurite and the sandbox's Exchange: fan-out, merged data in the MIME, bad
 * recipients, redelivery without duplicates, chunked continuations, pacing stagger, invalid and poisoned messages,
 * the malformed POST table — then end to end through the dev host (built bundle, real HTTP port, queue triggers).
 */
import { execFileSync } from 'node:child_process';
import path from 'node:path';
import { QueueClient } from '@azure/storage-queue';
import { BlobServiceClient } from '@azure/storage-blob';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { startAzurite, type AzuriteInstance } from '../../dev/azurite';
import { startDevHost, type DevHost } from '../../dev/host';
import type { ApiRequest, ApiResponse } from '../../src/api/apiTypes';
import { getNotifications } from '../../src/api/notificationsGet';
import { MAX_BATCH_BODY_BYTES, postNotifications } from '../../src/api/notificationsPost';
import { runApi, type ApiHandler } from '../../src/api/runApi';
import { BatchBlobStore } from '../../src/notifications/batchBlobStore';
import { batchPartition } from '../../src/outbox/messageIds';
import { MAX_LISTED_REJECTIONS } from '../../src/notifications/batchStore';
import { encodeNotificationMessage } from '../../src/notifications/batchQueue';
import { deriveBatchId, MAX_BATCH_RECIPIENTS, recipientIdempotencyKey } from '../../src/notifications/batchRequest';
import {
  Notifications,
  type BatchSchedule,
  type BatchView,
  type FanoutOutcome,
  type FanoutProgress,
} from '../../src/notifications/notifications';
import { parseOutboxMessage } from '../../src/outbox/outboxQueue';
import { createAppServices, type AppServices } from '../../src/appServices';
import { BATCH_CONTAINER, NOTIFICATIONS_POISON_QUEUE, NOTIFICATIONS_QUEUE } from '../../src/storage/storageClients';
import { bodyBytes, headersOf, type RequestSpec } from '../support/malformedRequests';
import { applySandboxEnv, type Sandbox, type TestMailer } from '../support/sandboxMailer';
import { startStack, type Stack } from '../support/stack';

const ROOT = path.resolve(__dirname, '../..');
const BASE = 'http://127.0.0.1:7071/api';
/** Small, so that "over the limit" costs little (a recipient whose data makes its message too large). */
const MAX_MESSAGE_BYTES = 300_000;
const HUGE = 1_000_000_000;

let stack: Stack;
let sandbox: Sandbox;
let mailer: TestMailer;
let rt: AppServices;
let billing: string;
let settings: Record<string, string>;

beforeAll(async () => {
  stack = await startStack(
    ({ sandbox }) => {
      billing = `billing@${sandbox.tenant.domain}`;
      return {
        MAIL_ALLOWED_FROM: billing,
        MAIL_MAX_MESSAGE_BYTES: String(MAX_MESSAGE_BYTES),
        // Pacing is measured on its own; here it would only spread the sends over minutes.
        MAIL_PACING: 'off',
      };
    },
    {
      sandbox: { smtpLimits: { ratePerMinute: HUGE, dailyRecipients: HUGE } },
      delivery: { backoffSeconds: () => 2 },
    },
  );
  ({ sandbox, mailer, app: rt, settings } = stack);
});

afterAll(async () => {
  await stack?.close();
});

beforeEach(async () => {
  await Promise.all([rt.storage.outboxQueue.clearMessages(), rt.storage.notificationsQueue.clearMessages()]);
  sandbox.smtp.reset();
});

/** A Notifications service over the test app's services, with its own chunk size and pacing. */
function service(options: { chunkSize?: number; schedule?: BatchSchedule } = {}): Notifications {
  return new Notifications({
    config: rt.config,
    renderer: rt.renderer,
    outbox: rt.outbox,
    status: rt.status,
    storage: rt.storage,
    telemetry: mailer.telemetry,
    logger: mailer.logger,
    concurrency: 8,
    ...options,
  });
}

let batchNo = 0;
/** A fresh batch id per test: batches (and their recipient keys) never collide across tests. */
const newBatchId = () => `t-${Date.now()}-${++batchNo}`;

/** A recipient of the `notification` template: its title is its own, the paragraphs are shared. */
const person = (name: string, extra: Record<string, unknown> = {}) => ({
  to: `${name}@example.com`,
  data: { title: `Hello ${name}`, ...extra },
});

const batchOf = (recipients: unknown[], extra: Record<string, unknown> = {}) => ({
  template: 'notification',
  data: { paragraphs: ['The shared paragraph of this batch.'] },
  recipients,
  ...extra,
});

/** Plays the Functions host for mail-notifications until the queue is empty: receive, handle, delete. */
async function pump(n: Notifications, maxRounds = 50): Promise<FanoutOutcome[]> {
  const outcomes: FanoutOutcome[] = [];
  for (let round = 0; round < maxRounds; round++) {
    const received = await rt.storage.notificationsQueue.receiveMessages({
      numberOfMessages: 32,
      visibilityTimeout: 60,
    });
    if (received.receivedMessageItems.length === 0) return outcomes;
    for (const m of received.receivedMessageItems) {
      outcomes.push(await n.handleMessage(m.messageText, { dequeueCount: m.dequeueCount }));
      await rt.storage.notificationsQueue.deleteMessage(m.messageId, m.popReceipt);
    }
  }
  throw new Error('mail-notifications did not drain');
}

/** Delivers every visible outbox message (as outboxDeliver would), until none is left. */
async function drainOutbox(): Promise<number> {
  let delivered = 0;
  for (;;) {
    const received = await rt.storage.outboxQueue.receiveMessages({ numberOfMessages: 32, visibilityTimeout: 60 });
    if (received.receivedMessageItems.length === 0) return delivered;
    await Promise.all(
      received.receivedMessageItems.map(async (m) => {
        await rt.delivery.deliver(parseOutboxMessage(m.messageText)!.id, { dequeueCount: m.dequeueCount });
        await rt.storage.outboxQueue.deleteMessage(m.messageId, m.popReceipt);
        delivered += 1;
      }),
    );
  }
}

/** The outbox status records of a batch: its partition of MailStatus. */
async function recordsOf(
  batchId: string,
): Promise<Array<{ partitionKey: string; rowKey: string; status: string; dueAt: string }>> {
  const out: Array<{ partitionKey: string; rowKey: string; status: string; dueAt: string }> = [];
  const entities = rt.storage.statusTable.listEntities<{ status: string; dueAt: string; batchId: string }>({
    queryOptions: { filter: `PartitionKey eq '${batchPartition(batchId)}'` },
  });
  for await (const e of entities) {
    expect(e.batchId).toBe(batchId);
    out.push({ partitionKey: e.partitionKey as string, rowKey: e.rowKey as string, status: e.status, dueAt: e.dueAt });
  }
  return out;
}

async function outboxMessageCount(): Promise<number> {
  return (await rt.storage.outboxQueue.getProperties()).approximateMessagesCount ?? 0;
}

async function viewOf(n: Notifications, batchId: string): Promise<BatchView> {
  const view = await n.view(batchId);
  if (!view) throw new Error(`no batch ${batchId}`);
  return view;
}

const enqueue = (value: unknown) => rt.storage.notificationsQueue.sendMessage(encodeNotificationMessage(value));

describe('fan-out from the queue', () => {
  it('a recipient is two writes: its queue message and its record with the content inline; no claim row, no blob', async () => {
    // 250 recipients: three record transactions (100, 100, 50) in one chunk.
    const n = service({ chunkSize: 500 });
    const batchId = newBatchId();
    const names = Array.from({ length: 250 }, (_, i) => `two-writes-${i}`);
    await enqueue(
      batchOf(
        names.map((name) => person(name)),
        { batchId },
      ),
    );
    const [outcome] = await pump(n);
    expect(outcome).toMatchObject({ outcome: 'fanned-out', status: 'complete', next: 250 });
    const records = await recordsOf(batchId);
    expect(records).toHaveLength(250);
    for (const r of records.slice(0, 5)) {
      const entity = await rt.storage.statusTable.getEntity<{ content0?: string }>(r.partitionKey, r.rowKey);
      expect(entity.content0).toContain('@example.com');
    }
    expect(await outboxMessageCount()).toBe(250);
    let claims = 0;
    const keys = new Set(names.map((name) => recipientIdempotencyKey(batchId, `${name}@example.com`)));
    for await (const claim of rt.storage.idempotencyTable.listEntities<{ messageId: string }>()) {
      if (claim.messageId.startsWith(`${batchId}~`)) claims++;
    }
    expect(claims).toBe(0);
    let blobs = 0;
    for await (const blob of rt.storage.payloads.listBlobsFlat({ prefix: `${batchId}~` })) if (blob) blobs++;
    expect(blobs).toBe(0);
    const keyed = await Promise.all(
      records.map(async (r) => (await rt.status.get(`${batchId}~${r.rowKey}`))?.idempotencyKey),
    );
    expect(new Set(keyed)).toEqual(keys);
  });

  it('one outbox message per recipient; each mail carries its own data merged over the shared data', async () => {
    const n = service();
    const batchId = newBatchId();
    const names = ['ada', 'grace', 'alan', 'edsger'];
    await enqueue(
      batchOf(
        names.map((name) => person(name)),
        { batchId },
      ),
    );
    const outcomes = await pump(n);
    expect(outcomes).toEqual([{ outcome: 'fanned-out', batchId, offset: 0, next: 4, status: 'complete' }]);
    const view = await viewOf(n, batchId);
    expect(view).toMatchObject({ status: 'complete', total: 4, processed: 4, accepted: 4, rejected: 0 });
    expect(view.counts).toEqual({ queued: 4, scheduled: 0, sending: 0, sent: 0, failed: 0, suppressed: 0 });
    expect(view.completedAt).toBeDefined();
    expect(await outboxMessageCount()).toBe(4);

    expect(await drainOutbox()).toBe(4);
    expect(sandbox.smtp.messages).toHaveLength(4);
    for (const name of names) {
      const mail = sandbox.smtp.messages.find((m) => m.envelope.to[0] === `${name}@example.com`);
      expect(mail, name).toBeDefined();
      expect(mail!.parsed.subject).toBe(`Hello ${name}`);
      expect(mail!.parsed.html).toContain(`Hello ${name}`);
      expect(mail!.parsed.html).toContain('The shared paragraph of this batch.');
      expect(mail!.parsed.text).toContain('The shared paragraph of this batch.');
      expect(mail!.envelope.to).toEqual([`${name}@example.com`]);
    }
    expect((await viewOf(n, batchId)).counts.sent).toBe(4);
    const records = await recordsOf(batchId);
    expect(records.every((r) => r.status === 'sent')).toBe(true);
  });

  it('subject overrides the template subject; recipient data replaces shared top-level keys; from is used', async () => {
    const n = service();
    const batchId = newBatchId();
    await enqueue({
      batchId,
      template: 'notification',
      from: billing,
      subject: 'Maintenance tonight',
      data: { title: 'Shared title', paragraphs: ['Shared.'] },
      recipients: [{ to: 'one@example.com' }, { to: 'two@example.com', data: { paragraphs: ['Only for two.'] } }],
    });
    const mailbox = sandbox.tenant.exchange.mailboxes.get(rt.config.sender)!;
    mailbox.sendAs.add(billing);
    try {
      await pump(n);
      await drainOutbox();
    } finally {
      mailbox.sendAs.delete(billing);
    }
    const one = sandbox.smtp.messages.find((m) => m.envelope.to[0] === 'one@example.com')!;
    const two = sandbox.smtp.messages.find((m) => m.envelope.to[0] === 'two@example.com')!;
    expect(one.parsed.subject).toBe('Maintenance tonight');
    expect(two.parsed.subject).toBe('Maintenance tonight');
    expect(one.parsed.html).toContain('Shared title');
    expect(one.parsed.html).toContain('Shared.');
    expect(two.parsed.html).toContain('Only for two.');
    expect(two.parsed.html).not.toContain('Shared.');
    expect(one.envelope.from).toBe(billing);
    expect(two.parsed.from?.address).toBe(billing);
  });

  it('reads plain JSON as well as base64, and derives a stable batchId from the content when none is given', async () => {
    const n = service();
    const content = batchOf([person('plain')]);
    await rt.storage.notificationsQueue.sendMessage(JSON.stringify(content));
    const [outcome] = await pump(n);
    const derived = deriveBatchId(content);
    expect(derived).toMatch(/^q-[0-9a-f]{32}$/);
    expect(outcome).toMatchObject({ outcome: 'fanned-out', batchId: derived, status: 'complete' });
    // The same content with its keys in another order, base64-encoded: the same batch, nothing new.
    await enqueue({ recipients: content.recipients, data: content.data, template: content.template });
    const [again] = await pump(n);
    expect(again).toEqual({ outcome: 'skipped', batchId: derived, reason: 'finished' });
    expect(await recordsOf(derived)).toHaveLength(1);
  });
});

describe('redelivery and duplicates', () => {
  it('the same queue message delivered twice, then twice at once, creates each outbox message once', async () => {
    const n = service();
    const batchId = newBatchId();
    const message = encodeNotificationMessage(
      batchOf(
        ['a', 'b', 'c', 'd', 'e'].map((x) => person(x)),
        { batchId },
      ),
    );
    const first = await n.handleMessage(message);
    expect(first).toMatchObject({ outcome: 'fanned-out', status: 'complete' });
    expect(await n.handleMessage(message)).toEqual({ outcome: 'skipped', batchId, reason: 'finished' });

    // Without any batch id: the derived one makes concurrent copies the same batch too.
    const anonymous = encodeNotificationMessage(batchOf(['f', 'g', 'h'].map((x) => person(x))));
    const outcomes = await Promise.all([n.handleMessage(anonymous), n.handleMessage(anonymous)]);
    expect(outcomes.filter((o) => o.outcome === 'fanned-out')).toHaveLength(1);
    const derived = outcomes[0].batchId;

    expect(await recordsOf(batchId)).toHaveLength(5);
    expect(await recordsOf(derived)).toHaveLength(3);
    expect((await viewOf(n, batchId)).accepted).toBe(5);
    expect((await viewOf(n, derived)).accepted).toBe(3);
    expect(await outboxMessageCount()).toBe(8);
    expect(await drainOutbox()).toBe(8);
    expect(sandbox.smtp.messages).toHaveLength(8);
    expect(new Set(sandbox.smtp.messages.map((m) => m.envelope.to[0])).size).toBe(8);
  });

  it('recipient keys: its own idempotencyKey, else nb- + hash(batchId, lower-cased address)', async () => {
    const n = service();
    const batchId = newBatchId();
    await n.handleMessage(
      encodeNotificationMessage(
        batchOf([person('Key.Owner'), { ...person('explicit'), idempotencyKey: `order-${batchId}` }], { batchId }),
      ),
    );
    const keys = new Set<string>();
    for (const r of await recordsOf(batchId)) {
      const entity = await rt.storage.statusTable.getEntity<{ idempotencyKey: string }>(r.partitionKey, r.rowKey);
      keys.add(entity.idempotencyKey);
    }
    expect(keys).toEqual(new Set([recipientIdempotencyKey(batchId, 'key.owner@example.com'), `order-${batchId}`]));
    expect(recipientIdempotencyKey(batchId, 'Key.Owner@Example.com')).toMatch(/^nb-[0-9a-f]{40}$/);
  });
});

describe('bad recipients', () => {
  it('each is rejected on its own (index, field, reason) and in telemetry without addresses; the rest are sent', async () => {
    const n = service();
    const batchId = newBatchId();
    sandbox.ingestion.reset();
    const recipients = [
      person('good1'),
      { to: 'not-an-email', data: { title: 'x' } },
      { to: 'crlf@example.com\r\nBcc: victim@example.com', data: { title: 'x' } },
      { to: 'notitle@example.com' }, // the template needs data.title
      person('good2'),
      { to: 'GOOD1@example.com', data: { title: 'again' } }, // the same address as recipients[0]
      person('huge', { paragraphs: ['x'.repeat(MAX_MESSAGE_BYTES)] }), // over MAIL_MAX_MESSAGE_BYTES
      { to: { address: 'named@example.com', name: 'Named Person' }, data: { title: 'Named' } },
    ];
    // Over 64 KB with the huge one: submitted as POST does (stored in mail-batches, a reference on the queue).
    const submitted = await n.submit(batchOf(recipients, { batchId }));
    expect(submitted).toMatchObject({ batchId, replayed: false, summary: { status: 'accepted', total: 8 } });
    const [outcome] = await pump(n);
    expect(outcome).toMatchObject({ outcome: 'fanned-out', status: 'complete' });
    const view = await viewOf(n, batchId);
    expect(view).toMatchObject({ total: 8, accepted: 3, rejected: 5 });
    expect(view.rejections.map((r) => [r.index, r.field])).toEqual([
      [1, 'recipients[1].to'],
      [2, 'recipients[2].to'],
      [3, 'recipients[3].data.title'],
      [5, 'recipients[5].to'],
      [6, 'recipients[6].data'],
    ]);
    expect(view.rejections[1]!.reason).toMatch(/CR, LF/);
    expect(view.rejections[2]!.reason).toMatch(/title/);
    expect(view.rejections[3]!.reason).toMatch(/duplicate of recipients\[0\]/);
    expect(view.rejections[4]!.reason).toMatch(/exceed/);

    await drainOutbox();
    expect(sandbox.smtp.messages.map((m) => m.envelope.to[0]).sort()).toEqual([
      'good1@example.com',
      'good2@example.com',
      'named@example.com',
    ]);
    expect(sandbox.smtp.messages.find((m) => m.envelope.to[0] === 'named@example.com')?.parsed.to?.[0]?.name).toBe(
      'Named Person',
    );

    await mailer.telemetry.flush();
    const events = sandbox.ingestion
      .events('NotificationRecipientRejected')
      .filter((e) => e.properties.batchId === batchId);
    expect(events.map((e) => e.properties.index).sort()).toEqual(['1', '2', '3', '5', '6']);
    for (const e of events) {
      expect(e.properties.errorCode).toBe('INVALID_MESSAGE');
      expect(JSON.stringify(e)).not.toContain('@');
      expect(JSON.stringify(e)).not.toContain('example.com');
    }
    const accepted = sandbox.ingestion.events('BatchAccepted').find((e) => e.properties.batchId === batchId);
    expect(accepted?.measurements.recipientCount).toBe(8);
  });

  it(`lists the first ${MAX_LISTED_REJECTIONS} rejections and counts the rest; every recipient rejected = failed`, async () => {
    const n = service();
    const batchId = newBatchId();
    const bad = Array.from({ length: 130 }, (_, i) => ({ to: `bad-${i}`, data: { title: 't' } }));
    await enqueue(batchOf([...bad, person('survivor')], { batchId }));
    await pump(n);
    const view = await viewOf(n, batchId);
    expect(view).toMatchObject({ status: 'complete', accepted: 1, rejected: 130, rejectionsOmitted: 30 });
    expect(view.rejections).toHaveLength(MAX_LISTED_REJECTIONS);
    expect(view.rejections[99]).toMatchObject({ index: 99, field: 'recipients[99].to' });

    const allBad = newBatchId();
    await enqueue(batchOf(bad.slice(0, 3), { batchId: allBad }));
    await pump(n);
    const failed = await viewOf(n, allBad);
    expect(failed).toMatchObject({ status: 'failed', accepted: 0, rejected: 3 });
    expect(failed.error?.message).toMatch(/Every recipient/);
  });
});

describe('chunks and continuations', () => {
  const names = Array.from({ length: 10 }, (_, i) => `chunk${i}`);

  it('reports the progress of each chunk to the invocation (counts and the batch id only), once per recorded chunk', async () => {
    const n = service({ chunkSize: 3 });
    const batchId = newBatchId();
    await enqueue(batchOf([...names.slice(0, 6).map((x) => person(x)), { to: 'not-an-address' }], { batchId }));
    const reported: FanoutProgress[] = [];
    for (let round = 0; round < 10; round++) {
      const received = await rt.storage.notificationsQueue.receiveMessages({ numberOfMessages: 32 });
      if (received.receivedMessageItems.length === 0) break;
      for (const m of received.receivedMessageItems) {
        await n.handleMessage(m.messageText, { onChunk: (p) => reported.push(p) });
        // The same message again, as a redelivery would bring it: its chunk is already recorded, so no report.
        await n.handleMessage(m.messageText, { onChunk: (p) => reported.push(p) });
        await rt.storage.notificationsQueue.deleteMessage(m.messageId, m.popReceipt);
      }
    }
    expect(reported).toEqual([
      { batchId, processed: 3, total: 7, accepted: 3, rejected: 0 },
      { batchId, processed: 6, total: 7, accepted: 6, rejected: 0 },
      { batchId, processed: 7, total: 7, accepted: 6, rejected: 1 },
    ]);
    expect(JSON.stringify(reported)).not.toContain('@');
  });

  it('a batch larger than the chunk goes on in { batchId, offset } messages over the stored batch, and completes', async () => {
    const n = service({ chunkSize: 3 });
    const batchId = newBatchId();
    await enqueue(
      batchOf(
        names.map((x) => person(x)),
        { batchId },
      ),
    );
    const first = await n.handleMessage(
      (await rt.storage.notificationsQueue.receiveMessages()).receivedMessageItems[0]!.messageText,
    );
    expect(first).toEqual({ outcome: 'fanned-out', batchId, offset: 0, next: 3, status: 'fanning-out' });
    // The inline batch was written to mail-batches (its fields and its chunks) before its continuation was enqueued.
    expect(await rt.storage.batches.getBlobClient(BatchBlobStore.headerBlobName(batchId)).exists()).toBe(true);
    const peeked = await rt.storage.notificationsQueue.peekMessages({ numberOfMessages: 32 });
    const texts = peeked.peekedMessageItems.map(
      (m) => JSON.parse(Buffer.from(m.messageText, 'base64').toString()) as unknown,
    );
    expect(texts).toContainEqual({ batchId, offset: 3 });
    expect((await viewOf(n, batchId)).status).toBe('fanning-out');

    const rest = await pump(n);
    expect(rest.filter((o) => o.outcome === 'fanned-out').map((o) => (o as { offset: number }).offset)).toEqual([
      3, 6, 9,
    ]);
    const view = await viewOf(n, batchId);
    expect(view).toMatchObject({ status: 'complete', total: 10, processed: 10, accepted: 10, rejected: 0 });
    expect(await recordsOf(batchId)).toHaveLength(10);
    expect(await outboxMessageCount()).toBe(10);
  });

  it('duplicate and concurrent continuation messages create nothing twice and count each recipient once', async () => {
    const n = service({ chunkSize: 3 });
    const batchId = newBatchId();
    const message = encodeNotificationMessage(
      batchOf(
        names.map((x) => person(x)),
        { batchId },
      ),
    );
    await n.handleMessage(message);
    await rt.storage.notificationsQueue.clearMessages();
    // Two copies of the continuation at once, and a third later; a redelivered first message on top.
    const both = await Promise.all([
      n.handleMessage(encodeNotificationMessage({ batchId, offset: 3 })),
      n.handleMessage(encodeNotificationMessage({ batchId, offset: 3 })),
    ]);
    expect(both.filter((o) => o.outcome === 'fanned-out')).toHaveLength(1);
    expect(both.map((o) => o.outcome).sort()).toEqual(['fanned-out', 'skipped']);
    await enqueue({ batchId, offset: 3 });
    await rt.storage.notificationsQueue.sendMessage(message);
    const rest = await pump(n);
    expect(rest.filter((o) => o.outcome === 'skipped').length).toBeGreaterThanOrEqual(2);
    const view = await viewOf(n, batchId);
    expect(view).toMatchObject({ status: 'complete', accepted: 10, rejected: 0 });
    expect(await recordsOf(batchId)).toHaveLength(10);
    expect(await outboxMessageCount()).toBe(10);
    expect(await drainOutbox()).toBe(10);
    expect(sandbox.smtp.messages).toHaveLength(10);
  });

  it('a worker that died after recording progress but before enqueueing the continuation: redelivery resumes', async () => {
    const n = service({ chunkSize: 4 });
    const batchId = newBatchId();
    const message = encodeNotificationMessage(
      batchOf(
        names.map((x) => person(x)),
        { batchId },
      ),
    );
    await n.handleMessage(message);
    // The continuation "was never enqueued", and nothing says it was.
    await rt.storage.notificationsQueue.clearMessages();
    const entity = await rt.storage.batchTable.getEntity<Record<string, unknown>>(batchId, 'batch');
    delete entity.continuation;
    await rt.storage.batchTable.updateEntity(entity as { partitionKey: string; rowKey: string }, 'Replace');

    expect(await n.handleMessage(message)).toEqual({ outcome: 'resumed', batchId, offset: 4 });
    await pump(n);
    expect(await viewOf(n, batchId)).toMatchObject({ status: 'complete', accepted: 10 });
    expect(await recordsOf(batchId)).toHaveLength(10);
  });
});

describe('pacing for the batch as a whole', () => {
  it('asks the schedule once per chunk for the recipients it accepts, and staggers their due times', async () => {
    const calls: number[] = [];
    const startAt = Date.now() + 60_000;
    const intervalMs = 2_000;
    const schedule: BatchSchedule = (count) => {
      calls.push(count);
      return Promise.resolve({ startAt: startAt + (calls.length - 1) * 10_000, intervalMs });
    };
    const n = service({ chunkSize: 3, schedule });
    const batchId = newBatchId();
    await enqueue(batchOf([person('p0'), { to: 'bad' }, person('p2'), person('p3'), person('p4')], { batchId }));
    await pump(n);
    expect(calls).toEqual([2, 2]);
    const due = new Map((await recordsOf(batchId)).map((r) => [r.rowKey, Date.parse(r.dueAt)]));
    const dueTimes = [...due.values()].sort((a, b) => a - b);
    const expected = [startAt, startAt + intervalMs, startAt + 10_000, startAt + 10_000 + intervalMs];
    dueTimes.forEach((t, i) => expect(Math.abs(t - expected[i]!)).toBeLessThan(1_500));
    // Held back on the queue until their slot.
    expect((await rt.storage.outboxQueue.peekMessages({ numberOfMessages: 32 })).peekedMessageItems).toHaveLength(0);
    expect(await outboxMessageCount()).toBe(4);
  });

  it('with pacing on, the real pacer spaces a batch: its messages come due one send interval apart', async () => {
    // Six a minute: a send interval of 10.3 s, wide enough that the milliseconds an accept takes do not matter.
    const paced = createAppServices(
      { ...settings, MAIL_PACING: 'on', MAIL_RATE_PER_MINUTE: '6' },
      { logger: mailer.logger },
    );
    const interval = paced.pacer!.intervalMs;
    expect(interval).toBeCloseTo(10_300, 0);
    const batchId = newBatchId();
    await enqueue(
      batchOf(
        ['q0', 'q1', 'q2', 'q3'].map((x) => person(x)),
        { batchId },
      ),
    );
    const outcomes = await pump(paced.notifications);
    expect(outcomes).toEqual([{ outcome: 'fanned-out', batchId, offset: 0, next: 4, status: 'complete' }]);
    const due = (await recordsOf(batchId)).map((r) => Date.parse(r.dueAt)).sort((a, b) => a - b);
    expect(due).toHaveLength(4);
    for (let i = 1; i < due.length; i++) {
      const gap = due[i]! - due[i - 1]!;
      expect(gap).toBeGreaterThan(interval - 2_000);
      expect(gap).toBeLessThan(interval + 2_000);
    }
    // Each waits on the queue for its own time; the pacer's batch line moved past the whole batch.
    expect(
      (await rt.storage.outboxQueue.peekMessages({ numberOfMessages: 32 })).peekedMessageItems.length,
    ).toBeLessThanOrEqual(1);
    expect((await paced.pacer!.snapshot()).nextBatchAt).toBeGreaterThanOrEqual(due[3]! + interval - 2_000);
    await paced.close();
  });

  it('a batch sendAt later than the slots wins: every message is scheduled for sendAt', async () => {
    const sendAt = new Date(Date.now() + 5 * 60_000);
    const n = service({ schedule: () => Promise.resolve({ startAt: Date.now(), intervalMs: 1_000 }) });
    const batchId = newBatchId();
    await enqueue(batchOf([person('s0'), person('s1')], { batchId, sendAt: sendAt.toISOString() }));
    await pump(n);
    const records = await recordsOf(batchId);
    expect(records.map((r) => r.status)).toEqual(['scheduled', 'scheduled']);
    for (const r of records) expect(Date.parse(r.dueAt)).toBe(sendAt.getTime());
    expect((await viewOf(n, batchId)).counts.scheduled).toBe(2);
  });
});

describe('invalid queue messages: recorded as failed batches with the reason, acknowledged, never retried', () => {
  const cases: Array<[string, unknown, string, string?]> = [
    ['no template', { recipients: [{ to: 'a@example.com' }] }, 'template'],
    ['template is a number', { template: 42, recipients: [{ to: 'a@example.com' }] }, 'template'],
    ['unknown template', { template: 'no-such-template', recipients: [{ to: 'a@example.com' }] }, 'template'],
    ['no recipients', { template: 'notification' }, 'recipients'],
    ['recipients empty', { template: 'notification', recipients: [] }, 'recipients'],
    [
      'recipients[1].to is a number',
      { template: 'notification', recipients: [{ to: 'a@x.com' }, { to: 5 }] },
      'recipients[1].to',
    ],
    ['category unknown', batchOf([person('c')], { category: 'marketing' }), 'category'],
    ['sendAt without a time zone', batchOf([person('c')], { sendAt: '2030-01-01T08:00:00' }), 'sendAt'],
    ['from not allowed', batchOf([person('c')], { from: 'ceo@elsewhere.example' }), 'from'],
    ['subject with CR/LF', batchOf([person('c')], { subject: 'x\r\nBcc: v@example.com' }), 'subject'],
    ['an unknown field', batchOf([person('c')], { to: 'a@example.com' }), 'to'],
    ['a malformed batchId', batchOf([person('c')], { batchId: 'has spaces' }), 'batchId'],
  ];

  it.each(cases)('%s', async (_name, content, field) => {
    const n = service();
    const given = (content as { batchId?: unknown }).batchId;
    const batchId = typeof given === 'string' && /^[A-Za-z0-9._-]{1,100}$/.test(given) ? given : deriveBatchId(content);
    const message = encodeNotificationMessage(content);
    const outcome = await n.handleMessage(message, { dequeueCount: 1 });
    expect(outcome.outcome).toBe('failed');
    expect(outcome.batchId).toBe(batchId);
    const view = await viewOf(n, batchId);
    expect(view.status).toBe('failed');
    expect(view.error?.details?.map((d) => d.path)).toContain(field);
    // Redelivery changes nothing and does not throw either.
    await expect(n.handleMessage(message, { dequeueCount: 2 })).resolves.toMatchObject({ outcome: 'failed' });
    expect(await outboxMessageCount()).toBe(0);
  });

  it('a message that is not JSON at all, and a reference to a batch that does not exist', async () => {
    const n = service();
    const garbage = await n.handleMessage('this is not a batch');
    expect(garbage).toMatchObject({ outcome: 'failed', batchId: deriveBatchId('this is not a batch') });
    expect((await viewOf(n, garbage.batchId)).error?.details?.[0]?.path).toBe('(message)');
    const orphan = await n.handleMessage(encodeNotificationMessage({ batchId: 'no-such-batch-here', offset: 0 }));
    expect(orphan).toMatchObject({ outcome: 'failed', batchId: 'no-such-batch-here' });
    expect((await viewOf(n, 'no-such-batch-here')).error?.details?.[0]?.path).toBe('batchId');
  });

  it('a queue batch reusing the batchId of a different batch: rejected visibly, as the 409 of POST, the first untouched', async () => {
    sandbox.ingestion.reset();
    await rt.storage.notificationsPoisonQueue.clearMessages();
    // One recipient per chunk: the first batch is still fanning out when the other message arrives.
    const n = service({ chunkSize: 1 });
    const batchId = newBatchId();
    await n.handleMessage(encodeNotificationMessage(batchOf([person('own1'), person('own2')], { batchId })));
    expect(await viewOf(n, batchId)).toMatchObject({ status: 'fanning-out', accepted: 1 });

    const other = batchOf([person('intruder')], { batchId, subject: 'Another batch' });
    const outcome = await n.handleMessage(encodeNotificationMessage(other), { dequeueCount: 1 });
    expect(outcome).toMatchObject({ outcome: 'failed', batchId, rejectedAs: deriveBatchId(other) });
    if (outcome.outcome !== 'failed') throw new Error('unreachable');
    expect(outcome.error).toMatchObject({ code: 'IDEMPOTENCY_CONFLICT', details: [{ path: 'batchId' }] });
    // Recorded as a failed batch of its own, which GET shows with the classified reason.
    const rejected = await viewOf(n, deriveBatchId(other));
    expect(rejected).toMatchObject({ status: 'failed', error: { code: 'IDEMPOTENCY_CONFLICT' } });
    expect(rejected.error?.message).toContain(batchId);
    // Moved to the poison queue as it was sent, and counted in telemetry.
    const poisoned = await rt.storage.notificationsPoisonQueue.receiveMessages({ numberOfMessages: 32 });
    expect(poisoned.receivedMessageItems).toHaveLength(1);
    const copy = poisoned.receivedMessageItems[0]!.messageText;
    expect(JSON.parse(Buffer.from(copy, 'base64').toString())).toEqual(other);
    await mailer.telemetry.flush();
    expect(sandbox.ingestion.events('BatchRejected').map((e) => e.properties)).toContainEqual(
      expect.objectContaining({ batchId, errorCode: 'IDEMPOTENCY_CONFLICT' }),
    );
    // The poison handler, given that copy, leaves the first batch alone: it is not that batch's poison.
    await n.markPoisoned(copy, { dequeueCount: 5 });
    const untouched = await viewOf(n, batchId);
    expect(untouched).toMatchObject({ status: 'fanning-out', accepted: 1 });
    expect(untouched.error).toBeUndefined();
    // The first batch goes on to complete; nothing of the intruder was fanned out.
    await pump(n);
    expect(await viewOf(n, batchId)).toMatchObject({ status: 'complete', accepted: 2 });
    expect(await recordsOf(batchId)).toHaveLength(2);
    expect(await outboxMessageCount()).toBe(2);
  });

  it('poison: the batch becomes failed with reason "poison: …"; a complete batch stays complete', async () => {
    const n = service({ chunkSize: 2 });
    const batchId = newBatchId();
    await n.handleMessage(encodeNotificationMessage(batchOf([person('x1'), person('x2'), person('x3')], { batchId })));
    const poisoned = await n.markPoisoned(encodeNotificationMessage({ batchId, offset: 2 }), { dequeueCount: 5 });
    expect(poisoned?.status).toBe('failed');
    expect(poisoned?.error).toMatchObject({ code: 'POISON_MESSAGE' });
    expect(poisoned?.error?.message).toMatch(/^poison: .* 5 times at recipient 2/);
    // The continuation that was still on the queue finds a failed batch and stops.
    expect(await pump(n)).toEqual([{ outcome: 'skipped', batchId, reason: 'finished' }]);

    const done = newBatchId();
    await n.handleMessage(encodeNotificationMessage(batchOf([person('y1')], { batchId: done })));
    expect((await n.markPoisoned(encodeNotificationMessage(batchOf([person('y1')], { batchId: done }))))?.status).toBe(
      'complete',
    );
  });
});

// ---------------------------------------------------------------------------------------------------------------
// The HTTP handlers in process: POST, GET, and the malformed-request table.

function request(spec: RequestSpec): ApiRequest {
  const url = `${BASE}/${spec.path ?? 'notifications'}`;
  const bytes = bodyBytes(spec);
  return {
    method: spec.method ?? 'POST',
    url,
    headers: new Headers(headersOf(spec)),
    query: new URL(url).searchParams,
    params: spec.params ?? {},
    body: bytes ? new Response(new Uint8Array(bytes)).body : null,
  };
}
const call = (handler: ApiHandler, spec: RequestSpec): Promise<ApiResponse> => runApi(handler, request(spec), () => rt);
interface ErrorJson {
  error: { code: string; message: string; details: Array<{ path: string; message: string }> };
}

const inDays = (days: number) => new Date(Date.now() + days * 86_400_000).toISOString();
const valid = () => batchOf([person('v1'), person('v2')]);
const with_ = (extra: Record<string, unknown>) => ({ ...valid(), ...extra });
const recipientsWith = (index: number, recipient: unknown) => {
  const recipients: unknown[] = [person('r0'), person('r1'), person('r2'), person('r3')];
  recipients[index] = recipient;
  return with_({ recipients });
};

/** [name, request, status, the detail path the error must name]. */
const malformedBatches: Array<[string, RequestSpec, number, string]> = [
  ['not JSON (text/plain)', { body: 'hello', headers: { 'content-type': 'text/plain' } }, 415, 'Content-Type'],
  [
    'declared Content-Length over 16 MiB',
    { body: '{}', headers: { 'content-type': 'application/json', 'content-length': String(MAX_BATCH_BODY_BYTES + 1) } },
    413,
    '(body)',
  ],
  ['empty body', { body: '' }, 400, '(body)'],
  ['invalid JSON', { body: '{"template":' }, 400, '(body)'],
  ['a JSON array', { body: [valid()] }, 400, '(body)'],
  ['template missing', { body: { recipients: [person('a')] } }, 400, 'template'],
  ['template is a number', { body: with_({ template: 42 }) }, 400, 'template'],
  ['template name with spaces', { body: with_({ template: 'Order Shipped' }) }, 400, 'template'],
  ['unknown template', { body: with_({ template: 'no-such-template' }) }, 400, 'template'],
  ['recipients missing', { body: { template: 'notification' } }, 400, 'recipients'],
  ['recipients is a string', { body: with_({ recipients: 'a@example.com' }) }, 400, 'recipients'],
  ['recipients empty', { body: with_({ recipients: [] }) }, 400, 'recipients'],
  ['recipients[3].to is a number', { body: recipientsWith(3, { to: 42 }) }, 400, 'recipients[3].to'],
  ['recipients[2].to missing', { body: recipientsWith(2, { data: { title: 'x' } }) }, 400, 'recipients[2].to'],
  ['recipients[1] is a string', { body: recipientsWith(1, 'a@example.com') }, 400, 'recipients[1]'],
  [
    'recipients[0] has an unknown field',
    { body: recipientsWith(0, { to: 'a@example.com', cc: 'b@example.com' }) },
    400,
    'recipients[0].cc',
  ],
  [
    'recipients[0].data is an array',
    { body: recipientsWith(0, { to: 'a@example.com', data: [1] }) },
    400,
    'recipients[0].data',
  ],
  [
    'recipients[3].idempotencyKey with a space',
    { body: recipientsWith(3, { to: 'a@example.com', idempotencyKey: 'has space' }) },
    400,
    'recipients[3].idempotencyKey',
  ],
  [
    'recipients[0].to object with an unknown field',
    { body: recipientsWith(0, { to: { address: 'a@example.com', phone: '1' } }) },
    400,
    'recipients[0].to.phone',
  ],
  [
    `more than ${MAX_BATCH_RECIPIENTS} recipients`,
    { body: with_({ recipients: Array.from({ length: MAX_BATCH_RECIPIENTS + 1 }, () => ({ to: 'a@b.co' })) }) },
    400,
    'recipients',
  ],
  ['batchId with a space', { body: with_({ batchId: 'has space' }) }, 400, 'batchId'],
  ['batchId with a slash', { body: with_({ batchId: 'a/b' }) }, 400, 'batchId'],
  ['batchId of 101 characters', { body: with_({ batchId: 'x'.repeat(101) }) }, 400, 'batchId'],
  ['batchId is a number', { body: with_({ batchId: 7 }) }, 400, 'batchId'],
  ['from is not an address', { body: with_({ from: 'not-an-address' }) }, 400, 'from'],
  ['from is not an allowed sender', { body: with_({ from: 'ceo@elsewhere.example' }) }, 400, 'from'],
  ['subject with CR/LF', { body: with_({ subject: 'Hi\r\nBcc: v@example.com' }) }, 400, 'subject'],
  ['subject empty', { body: with_({ subject: '' }) }, 400, 'subject'],
  ['subject is a number', { body: with_({ subject: 5 }) }, 400, 'subject'],
  ['subject over 998 characters', { body: with_({ subject: 's'.repeat(999) }) }, 400, 'subject'],
  ['data is an array', { body: with_({ data: ['x'] }) }, 400, 'data'],
  ['data is a string', { body: with_({ data: 'x' }) }, 400, 'data'],
  ['sendAt not a date', { body: with_({ sendAt: 'tomorrow' }) }, 400, 'sendAt'],
  ['sendAt without a time zone', { body: with_({ sendAt: '2030-01-01T08:00:00' }) }, 400, 'sendAt'],
  ['sendAt in the past', { body: with_({ sendAt: inDays(-1) }) }, 400, 'sendAt'],
  ['sendAt more than 7 days ahead', { body: with_({ sendAt: inDays(8) }) }, 400, 'sendAt'],
  ['category unknown', { body: with_({ category: 'marketing' }) }, 400, 'category'],
  ['an unknown top-level field', { body: with_({ to: 'a@example.com' }) }, 400, 'to'],
];

describe(`POST /api/notifications: ${malformedBatches.length} malformed requests, each a 4xx naming the field`, () => {
  it.each(malformedBatches)('%s', async (_name, spec, status, field) => {
    const response = await call(postNotifications, spec);
    expect(response.status, JSON.stringify(response.jsonBody)).toBe(status);
    const { error } = response.jsonBody as ErrorJson;
    expect(error.details.map((d) => d.path)).toContain(field);
    for (const d of error.details) expect(d.message.length).toBeGreaterThan(0);
  });

  it(`none of the ${malformedBatches.length} malformed requests stored or enqueued anything`, async () => {
    const counted = async () => {
      let summaries = 0;
      for await (const _ of rt.storage.batchTable.listEntities({ queryOptions: { select: ['PartitionKey'] } })) {
        summaries++;
      }
      let blobs = 0;
      for await (const _ of rt.storage.batches.listBlobsFlat()) blobs++;
      let records = 0;
      for await (const _ of rt.storage.statusTable.listEntities({ queryOptions: { select: ['PartitionKey'] } })) {
        records++;
      }
      return {
        summaries,
        blobs,
        records,
        notifications: (await rt.storage.notificationsQueue.getProperties()).approximateMessagesCount ?? 0,
        outbox: (await rt.storage.outboxQueue.getProperties()).approximateMessagesCount ?? 0,
      };
    };
    const before = await counted();
    for (const [, spec] of malformedBatches) {
      if ((spec.method ?? 'POST') !== 'POST') continue;
      const response = await call(postNotifications, spec);
      expect(response.status).toBeGreaterThanOrEqual(400);
    }
    expect(await counted()).toEqual(before);
  });
});

describe('POST and GET /api/notifications in process', () => {
  it('202 with Location; the same batchId and content is a replay; other content is 409 naming batchId', async () => {
    const batchId = newBatchId();
    const body = with_({ batchId });
    const first = await call(postNotifications, { body });
    expect(first.status).toBe(202);
    expect(first.jsonBody).toEqual({
      batchId,
      status: 'accepted',
      recipients: 2,
      statusUrl: `${BASE}/notifications/${batchId}`,
    });
    expect(first.headers?.Location).toBe(`${BASE}/notifications/${batchId}`);
    const replay = await call(postNotifications, { body: { ...body } });
    expect(replay.status).toBe(202);
    expect(replay.headers?.['Idempotent-Replayed']).toBe('true');
    const conflict = await call(postNotifications, { body: { ...body, subject: 'Another batch' } });
    expect(conflict.status).toBe(409);
    expect((conflict.jsonBody as ErrorJson).error.details[0]?.path).toBe('batchId');

    // Fan-out happens from the queue: the replay re-enqueued the reference, which the stale copy then skips.
    const outcomes = await pump(service());
    expect(outcomes.map((o) => o.outcome).sort()).toEqual(['fanned-out', 'skipped']);
    const get = await call(getNotifications, { method: 'GET', path: `notifications/${batchId}`, params: { batchId } });
    expect(get.status).toBe(200);
    expect(get.jsonBody).toMatchObject({ batchId, status: 'complete', total: 2, accepted: 2, counts: { queued: 2 } });
  });

  it('GET: 404 for an unknown batch and 400 for a malformed id, each naming batchId', async () => {
    const missing = await call(getNotifications, { method: 'GET', params: { batchId: 'never-created' } });
    expect(missing.status).toBe(404);
    expect((missing.jsonBody as ErrorJson).error).toMatchObject({ code: 'not_found', details: [{ path: 'batchId' }] });
    const bad = await call(getNotifications, { method: 'GET', params: { batchId: 'bad id!' } });
    expect(bad.status).toBe(400);
    expect((bad.jsonBody as ErrorJson).error.details[0]?.path).toBe('batchId');
  });
});

// ---------------------------------------------------------------------------------------------------------------
// End to end: the built bundle in the dev host, over its own Azurite; the sandbox is shared.

describe('end to end through the dev host', () => {
  let hostAzurite: AzuriteInstance;
  let host: DevHost;
  const hostLog: string[] = [];
  const url = (route: string) => `${host.url}/api/${route}?code=${encodeURIComponent(host.functionKey)}`;

  beforeAll(async () => {
    execFileSync(process.execPath, [path.join(ROOT, 'scripts/build.mjs')], { cwd: ROOT });
    // This process's pooled sessions from the tests above would count against the mailbox's 3 with the host's own
    // (pacing is off here, so nothing shares the cap): close them first, as another instance would have.
    await mailer.sender.close();
    await sandbox.smtp.waitForIdle();
    hostAzurite = await startAzurite();
    applySandboxEnv(sandbox);
    host = await startDevHost({
      entry: path.join(ROOT, 'dist/functions/index.js'),
      env: { ...settings, AzureWebJobsStorage: hostAzurite.connectionString },
      port: 0,
      pollIntervalMs: 200,
      log: (line) => hostLog.push(line),
    });
  }, 120_000);

  afterAll(async () => {
    await host?.stop();
    await hostAzurite?.stop();
  });

  async function getBatch(batchId: string): Promise<{ status: number; body: BatchView }> {
    const response = await fetch(url(`notifications/${batchId}`));
    return { status: response.status, body: (await response.json()) as BatchView };
  }

  async function waitForSent(batchId: string, count: number, timeoutMs = 30_000): Promise<BatchView> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const { body } = await getBatch(batchId);
      if (body.counts?.sent === count && body.status === 'complete') return body;
      if (Date.now() > deadline) throw new Error(`batch ${batchId}: ${JSON.stringify(body)}`);
      await new Promise((r) => setTimeout(r, 250));
    }
  }

  it('registers the four notification functions', () => {
    const names = host.functions.map((f) => `${f.name}:${f.kind}`);
    for (const name of [
      'notificationsPost:http',
      'notificationsGet:http',
      'notificationsFanout:queue',
      'notificationsPoison:queue',
    ]) {
      expect(names).toContain(name);
    }
  });

  it('a batch written to mail-notifications reaches every recipient with its data; GET counts reach sent', async () => {
    const batchId = newBatchId();
    const queue = new QueueClient(hostAzurite.connectionString, NOTIFICATIONS_QUEUE);
    await queue.createIfNotExists();
    const names = ['e2e-ann', 'e2e-bob', 'e2e-cyd'];
    await queue.sendMessage(
      encodeNotificationMessage(batchOf([...names.map((x) => person(x)), { to: 'broken' }], { batchId })),
    );
    host.wakeQueues();
    const mails = await sandbox.smtp.waitForMessages(3, 30_000);
    for (const name of names) {
      const mail = mails.find((m) => m.envelope.to[0] === `${name}@example.com`);
      expect(mail?.parsed.html).toContain(`Hello ${name}`);
      expect(mail?.parsed.html).toContain('The shared paragraph of this batch.');
    }
    const view = await waitForSent(batchId, 3);
    expect(view).toMatchObject({
      total: 4,
      accepted: 3,
      rejected: 1,
      rejections: [{ index: 3, field: 'recipients[3].to' }],
    });
    // The host's log says how far the fan-out got, with counts only: no address of the batch in any line.
    expect(hostLog.filter((line) => line.includes(`batch ${batchId}:`))).toEqual([
      expect.stringMatching(
        new RegExp(
          `\\[notificationsFanout\\] batch ${batchId}: 4/4 recipients processed \\(3 accepted, 1 rejected\\)$`,
        ),
      ),
    ]);
    for (const name of names) expect(hostLog.join('\n')).not.toContain(name);
  });

  it('POST /api/notifications with a batch over 64 KB goes through mail-batches; GET reaches sent for all', async () => {
    const count = 120;
    const recipients = Array.from({ length: count }, (_, i) => ({
      to: `bulk${i}@example.com`,
      data: { title: `Hello bulk${i}`, paragraphs: [`Personal note ${i}: ${'·'.repeat(300)}`] },
    }));
    const body = JSON.stringify({ template: 'notification', category: 'bulk', data: {}, recipients });
    expect(Buffer.byteLength(body)).toBeGreaterThan(64 * 1024);
    const response = await fetch(url('notifications'), {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body,
    });
    expect(response.status).toBe(202);
    const accepted = (await response.json()) as {
      batchId: string;
      status: string;
      recipients: number;
      statusUrl: string;
    };
    expect(accepted).toMatchObject({ status: 'accepted', recipients: count });
    expect(response.headers.get('location')).toBe(accepted.statusUrl);
    expect(accepted.statusUrl).toBe(`${host.url}/api/notifications/${accepted.batchId}`);
    const blobs = BlobServiceClient.fromConnectionString(hostAzurite.connectionString).getContainerClient(
      BATCH_CONTAINER,
    );
    expect(await blobs.getBlobClient(BatchBlobStore.headerBlobName(accepted.batchId)).exists()).toBe(true);

    const view = await waitForSent(accepted.batchId, count, 60_000);
    expect(view).toMatchObject({ total: count, accepted: count, rejected: 0, category: 'bulk' });
    const mine = sandbox.smtp.messages.filter((m) => m.envelope.to[0]?.startsWith('bulk'));
    expect(new Set(mine.map((m) => m.envelope.to[0])).size).toBe(count);
    expect(mine.find((m) => m.envelope.to[0] === 'bulk7@example.com')?.parsed.html).toContain('Personal note 7:');
  });

  it('malformed requests over HTTP: 415, 413, 400 naming recipients[3].to, and 404 / 400 for GET', async () => {
    const post = (body: string | Uint8Array, type = 'application/json') =>
      fetch(url('notifications'), { method: 'POST', headers: { 'content-type': type }, body });
    expect((await post('{}', 'text/plain')).status).toBe(415);
    const big = await post(new Uint8Array(MAX_BATCH_BODY_BYTES + 1).fill(0x20));
    expect(big.status).toBe(413);
    expect(((await big.json()) as ErrorJson).error.details[0]?.path).toBe('(body)');
    const bad = await post(JSON.stringify(recipientsWith(3, { to: 42 })));
    expect(bad.status).toBe(400);
    expect(((await bad.json()) as ErrorJson).error.details.map((d) => d.path)).toEqual(['recipients[3].to']);
    expect((await getBatch('never-created')).status).toBe(404);
    expect((await fetch(url('notifications/bad%20id'))).status).toBe(400);
  });

  it('an invalid message on the queue is recorded as a failed batch once: no retries, nothing poisoned', async () => {
    const queue = new QueueClient(hostAzurite.connectionString, NOTIFICATIONS_QUEUE);
    const content = { template: 'notification', recipients: 'nobody' };
    await queue.sendMessage(encodeNotificationMessage(content));
    host.wakeQueues();
    const batchId = deriveBatchId(content);
    const deadline = Date.now() + 15_000;
    let found: { status: number; body: BatchView } | undefined;
    while (Date.now() < deadline) {
      found = await getBatch(batchId);
      if (found.status === 200) break;
      await new Promise((r) => setTimeout(r, 200));
    }
    expect(found?.body).toMatchObject({ status: 'failed', error: { code: 'INVALID_MESSAGE' } });
    expect(found?.body.error?.details?.[0]?.path).toBe('recipients');
    await new Promise((r) => setTimeout(r, 500));
    const poison = new QueueClient(hostAzurite.connectionString, NOTIFICATIONS_POISON_QUEUE);
    if (await poison.exists()) {
      expect((await poison.getProperties()).approximateMessagesCount ?? 0).toBe(0);
    }
    expect((await queue.getProperties()).approximateMessagesCount ?? 0).toBe(0);
    expect(hostLog.filter((l) => l.includes('[notificationsFanout') && l.includes('Failed ('))).toEqual([]);
  });
});
