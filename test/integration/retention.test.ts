/**
 * Nothing grows without bound: the retention timer deletes records, idempotency keys, payloads and batches after
 * MAIL_RETENTION_DAYS, in bounded pages; a continuation reads only its own chunk of the batch. Against Azurite and
 * the sandbox. (That the reads stay flat beside 100,000 unrelated rows is test/integration/retentionScale.test.ts.)
 */
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { BatchBlobStore } from '../../src/notifications/batchBlobStore';
import { BatchStore } from '../../src/notifications/batchStore';
import { IdempotencyStore, idempotencyPartition } from '../../src/outbox/idempotencyStore';
import { Notifications, type FanoutOutcome } from '../../src/notifications/notifications';
import { Outbox } from '../../src/outbox/outbox';
import { MessageStore } from '../../src/outbox/messageStore';
import { INLINE_CONTENT_MAX_CHARS } from '../../src/outbox/messageContent';
import { Retention } from '../../src/outbox/retention';
import type { AppServices } from '../../src/appServices';
import { drainOutbox as driveOutbox, pumpNotifications as driveNotifications } from '../support/hostDriver';
import { startStack, type Stack } from '../support/stack';

const DAY_MS = 24 * 60 * 60 * 1000;
const RETENTION_DAYS = 30;

let stack: Stack;
let rt: AppServices;

beforeAll(async () => {
  stack = await startStack({ MAIL_RATE_PER_MINUTE: '6000', MAIL_RETENTION_DAYS: String(RETENTION_DAYS) });
  rt = stack.app;
}, 60_000);

afterAll(async () => {
  await stack?.close();
});

beforeEach(async () => {
  await Promise.all([rt.storage.outboxQueue.clearMessages(), rt.storage.notificationsQueue.clearMessages()]);
});

/** The retention timer as it would run `days` from now. */
function retentionAt(days: number, overrides: Partial<ConstructorParameters<typeof Retention>[0]> = {}): Retention {
  return new Retention({
    config: rt.config,
    storage: rt.storage,
    status: rt.status,
    payloads: rt.payloads,
    idempotency: new IdempotencyStore(rt.storage.idempotencyTable),
    batches: new BatchStore(rt.storage.batchTable),
    batchBlobs: new BatchBlobStore(rt.storage.batches),
    now: () => Date.now() + days * DAY_MS,
    ...overrides,
  });
}

const drainOutbox = () => driveOutbox(rt);
const pumpNotifications = (n: Notifications) => driveNotifications(rt, n);

async function claimExists(key: string): Promise<boolean> {
  try {
    await rt.storage.idempotencyTable.getEntity(idempotencyPartition(rt.config.sender, key), 'key');
    return true;
  } catch {
    return false;
  }
}

const payloadExists = (id: string) => rt.storage.payloads.getBlobClient(MessageStore.blobName(id)).exists();

let batchNo = 0;
const newBatchId = () => `ret-${Date.now()}-${++batchNo}`;

function notifications(chunkSize?: number): Notifications {
  return new Notifications({
    config: rt.config,
    renderer: rt.renderer,
    outbox: rt.outbox,
    status: rt.status,
    storage: rt.storage,
    ...(chunkSize ? { chunkSize } : {}),
  });
}

const batchOf = (batchId: string, names: string[]) => ({
  batchId,
  template: 'notification',
  data: { paragraphs: ['Retention test.'] },
  recipients: names.map((name) => ({ to: `${name}@example.com`, data: { title: `Hi ${name}` } })),
});

describe('single messages', () => {
  it(`a sent message, its idempotency key and its payload go ${RETENTION_DAYS} days after it was sent; a pending one stays`, async () => {
    const key = `ret-${Date.now()}`;
    const sent = await rt.outbox.accept(
      { to: 'old@example.com', subject: 'old', text: 'x' },
      { source: 'http', idempotencyKeyHeader: key },
    );
    const pending = await rt.outbox.accept(
      { to: 'later@example.com', subject: 'later', text: 'x', sendAt: new Date(Date.now() + DAY_MS).toISOString() },
      { source: 'http' },
    );
    // Content over INLINE_CONTENT_MAX_CHARS is in a blob; the others' is in their records.
    const large = await rt.outbox.accept(
      { to: 'large@example.com', subject: 'large', text: 'x'.repeat(INLINE_CONTENT_MAX_CHARS) },
      { source: 'http' },
    );
    expect(await payloadExists(large.id)).toBe(true);
    expect(await payloadExists(sent.id)).toBe(false);
    await drainOutbox();
    expect((await rt.status.get(sent.id))?.status).toBe('sent');
    expect((await rt.status.get(large.id))?.status).toBe('sent');

    // One day short of retention: everything stays.
    const early = await retentionAt(RETENTION_DAYS - 1).run();
    expect(early.messages).toBe(0);
    expect(await rt.status.get(sent.id)).toBeDefined();

    const report = await retentionAt(RETENTION_DAYS + 1).run();
    expect(report.complete).toBe(true);
    expect(report.messages).toBeGreaterThanOrEqual(1);
    expect(await rt.status.get(sent.id)).toBeUndefined();
    expect(await claimExists(key)).toBe(false);
    expect(await rt.status.get(large.id)).toBeUndefined();
    expect(await payloadExists(large.id)).toBe(false);
    expect(report.payloads).toBeGreaterThanOrEqual(1);
    // Not final, however old: kept with its content.
    const kept = await rt.status.get(pending.id);
    expect(kept?.status).toBe('scheduled');
    expect(kept?.content).toContain('later@example.com');

    // The expired key is free again: the same key names a new message now.
    const again = await rt.outbox.accept(
      { to: 'old@example.com', subject: 'a different message', text: 'y' },
      { source: 'http', idempotencyKeyHeader: key },
    );
    expect(again.replayed).toBe(false);
    expect(again.id).not.toBe(sent.id);
  });

  it('a key past retention is free even before the timer ran: a new request with it names a new message, not a 409', async () => {
    const key = `ret-early-${Date.now()}`;
    const first = await rt.outbox.accept(
      { to: 'k@example.com', subject: 'first', text: 'x' },
      { source: 'http', idempotencyKeyHeader: key },
    );
    await drainOutbox();
    // Within retention: a different payload with the key is a conflict, as always.
    await expect(
      rt.outbox.accept(
        { to: 'k@example.com', subject: 'second', text: 'y' },
        { source: 'http', idempotencyKeyHeader: key },
      ),
    ).rejects.toMatchObject({ code: 'IDEMPOTENCY_CONFLICT' });
    const later = new Outbox({
      config: rt.config,
      renderer: rt.renderer,
      storage: rt.storage,
      status: rt.status,
      payloads: rt.payloads,
      idempotency: new IdempotencyStore(rt.storage.idempotencyTable),
      now: () => Date.now() + (RETENTION_DAYS + 1) * DAY_MS,
    });
    const second = await later.accept(
      { to: 'k@example.com', subject: 'second', text: 'y' },
      { source: 'http', idempotencyKeyHeader: key },
    );
    expect(second).toMatchObject({ replayed: false });
    expect(second.id).not.toBe(first.id);
    // The old record is the timer's to delete; it no longer owns the key, so deleting it leaves the new claim alone.
    await retentionAt(RETENTION_DAYS + 1).run();
    expect(await rt.status.get(first.id)).toBeUndefined();
    expect(await claimExists(key)).toBe(true);
    expect(await rt.status.get(second.id)).toBeDefined();
  });

  it('a run stops at its budget and the next carries on', async () => {
    const ids: string[] = [];
    for (let i = 0; i < 5; i++) {
      ids.push(
        (await rt.outbox.accept({ to: `b${i}@example.com`, subject: 'budget', text: 'x' }, { source: 'http' })).id,
      );
    }
    await drainOutbox();
    const first = await retentionAt(RETENTION_DAYS + 1).run({ maxDeletions: 2 });
    expect(first.complete).toBe(false);
    expect(first.messages).toBeGreaterThanOrEqual(2);
    const rest = await retentionAt(RETENTION_DAYS + 1).run();
    expect(rest.complete).toBe(true);
    for (const id of ids) expect(await rt.status.get(id)).toBeUndefined();
  });
});

describe('notification batches', () => {
  it('records, keys, payloads, blobs, summary and index go once every message is final and past retention', async () => {
    const n = notifications(2);
    const batchId = newBatchId();
    const { batchId: submitted } = await n.submit(batchOf(batchId, ['r0', 'r1', 'r2', 'r3', 'r4']));
    await pumpNotifications(n);
    expect((await n.view(submitted))?.accepted).toBe(5);
    const blobs = new BatchBlobStore(rt.storage.batches);
    expect(await blobs.header(batchId)).toBeDefined();

    // One message still pending: the batch is kept, its final messages are not.
    const records = await (async () => {
      const out = [];
      for await (const page of rt.status.ofBatch(batchId)) out.push(...page);
      return out;
    })();
    expect(records).toHaveLength(5);
    const keepPending = records[0]!;
    await drainOutbox();
    await rt.status.transition((await rt.status.get(keepPending.id))!, { status: 'queued', completedAt: undefined });

    const partial = await retentionAt(RETENTION_DAYS + 1).run();
    expect(partial.batches).toBe(0);
    expect((await n.view(batchId))?.counts).toMatchObject({ queued: 1, sent: 0 });
    expect(await blobs.header(batchId)).toBeDefined();
    for (const r of records.slice(1)) {
      expect(await rt.status.get(r.id)).toBeUndefined();
      expect(await claimExists(r.idempotencyKey!)).toBe(false);
    }

    // Once that one is final too, the whole batch goes.
    await rt.status.transition((await rt.status.get(keepPending.id))!, {
      status: 'sent',
      completedAt: new Date().toISOString(),
    });
    const full = await retentionAt(RETENTION_DAYS + 1).run();
    expect(full.batches).toBeGreaterThanOrEqual(1);
    expect(await n.view(batchId)).toBeUndefined();
    expect(await blobs.header(batchId)).toBeUndefined();
    expect(await blobs.chunk(batchId, 0)).toBeUndefined();
    expect(await rt.status.get(keepPending.id)).toBeUndefined();
    // Nothing is left for later runs: the index row went with the batch.
    expect((await retentionAt(RETENTION_DAYS + 1).run()).batches).toBe(0);
  });

  it('a continuation reads the batch fields and its own chunk only', async () => {
    const n = notifications(2);
    const batchId = newBatchId();
    await n.submit(batchOf(batchId, ['c0', 'c1', 'c2', 'c3', 'c4', 'c5']));
    const [first] = await pumpOnce(n);
    expect(first).toMatchObject({ outcome: 'fanned-out', offset: 0, next: 2 });
    // Delete every chunk but the one the continuation at offset 2 needs: it still fans out.
    await rt.storage.batches.deleteBlob(BatchBlobStore.chunkBlobName(batchId, 0));
    await rt.storage.batches.deleteBlob(BatchBlobStore.chunkBlobName(batchId, 2));
    const [second] = await pumpOnce(n);
    expect(second).toMatchObject({ outcome: 'fanned-out', offset: 2, next: 4 });
    // The chunk at offset 4 is gone: its continuation fails the batch, naming the missing blobs.
    const [third] = await pumpOnce(n);
    expect(third).toMatchObject({ outcome: 'failed', error: { code: 'PAYLOAD_MISSING' } });
    expect((await n.view(batchId))?.accepted).toBe(4);
  });
});

/** Handles the messages on mail-notifications once (not their continuations). */
async function pumpOnce(n: Notifications): Promise<FanoutOutcome[]> {
  const received = await rt.storage.notificationsQueue.receiveMessages({ numberOfMessages: 32, visibilityTimeout: 60 });
  const outcomes: FanoutOutcome[] = [];
  for (const m of received.receivedMessageItems) {
    outcomes.push(await n.handleMessage(m.messageText, { dequeueCount: m.dequeueCount }));
    await rt.storage.notificationsQueue.deleteMessage(m.messageId, m.popReceipt);
  }
  return outcomes;
}
