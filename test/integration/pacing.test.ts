/**
 * Pacing piece by piece against Azurite and the sandbox: send slots and wake-up tickets in Table storage, the
 * rolling daily recipient window, connection slots as blob leases, and what delivery does with each limit.
 */
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { ConnectionSlots } from '../../src/pacing/connectionSlots';
import { MailError } from '../../src/errors';
import { enqueueOutbox, parseOutboxMessage } from '../../src/outbox/outboxQueue';
import { PACING_MARGIN, Pacer, type PacingLimits } from '../../src/pacing/pacer';
import { MessageStore } from '../../src/outbox/messageStore';
import { INLINE_CONTENT_MAX_CHARS } from '../../src/outbox/messageContent';
import { recordKeys } from '../../src/outbox/messageIds';
import type { AppServices } from '../../src/appServices';
import type { ApiRequest } from '../../src/api/apiTypes';
import { postMessage } from '../../src/api/messagesPost';
import { runApi } from '../../src/api/runApi';
import { MailSender } from '../../src/sender/mailSender';
import { createStorage, type StorageClients } from '../../src/storage/storageClients';
import { message, resetPacingState, sandboxMailer, type Sandbox, type TestMailer } from '../support/sandboxMailer';
import { startApp, startServices, type Services } from '../support/stack';

let services: Services;
let sandbox: Sandbox;
let storage: StorageClients;
let mailbox = 0;

beforeAll(async () => {
  services = await startServices();
  sandbox = services.sandbox;
  storage = createStorage({ kind: 'connectionString', connectionString: services.azurite.connectionString });
  await storage.ensureResources();
});

afterAll(async () => {
  await services?.close();
});

/** A fresh mailbox per test, so that tests share no pacing state. */
const nextMailbox = () => `pacing-${++mailbox}-${Date.now()}@contoso.com`;

function pacer(limits: Partial<PacingLimits> = {}, name = nextMailbox(), maxWaitMs?: number): Pacer {
  return new Pacer(
    storage.pacingTable,
    name,
    { ratePerWindow: 10, rateWindowMs: 1_000, dailyRecipientLimit: 1_000, dailyWindowMs: 60_000, ...limits },
    maxWaitMs === undefined ? {} : { maxWaitMs },
  );
}

describe('send slots', () => {
  it('instances sharing a mailbox get distinct slots at least window / rate apart', async () => {
    const name = nextMailbox();
    const [a, b, c] = [pacer({}, name, 60_000), pacer({}, name, 60_000), pacer({}, name, 60_000)];
    const reservations = await Promise.all(Array.from({ length: 30 }, (_, i) => [a, b, c][i % 3]!.reserve(1)));
    const slots = reservations.map((r) => (r.kind === 'slot' ? r.at : Number.NaN)).sort((x, y) => x - y);
    expect(slots.every(Number.isFinite)).toBe(true);
    const interval = (1_000 / 10) * (1 + PACING_MARGIN);
    for (let i = 1; i < slots.length; i++) expect(slots[i]! - slots[i - 1]!).toBeGreaterThanOrEqual(interval - 1e-6);
    // Nothing is left out: the slots are back to back.
    expect(slots.at(-1)! - slots[0]!).toBeCloseTo(interval * 29, 3);
  });

  it('a slot further away than maxWait is not taken: the message is deferred with a wake-up ticket', async () => {
    // Slots 10.3 s apart and 25 s of wait allowed: the time the reservations themselves take (Azurite round trips,
    // a busy machine) is small beside both, so which ones fit does not depend on it.
    const p = pacer({ rateWindowMs: 100_000 }, nextMailbox(), 25_000);
    const kinds: string[] = [];
    const retryAts: number[] = [];
    for (let i = 0; i < 6; i++) {
      const r = await p.reserve(1);
      kinds.push(r.kind);
      if (r.kind === 'defer') {
        expect(r.reason).toBe('rate');
        retryAts.push(r.retryAt);
      }
    }
    // Slots 0, 10.3 and 20.6 s away fit in 25 s; the rest wait.
    expect(kinds).toEqual(['slot', 'slot', 'slot', 'defer', 'defer', 'defer']);
    // Deferred messages wake one interval apart, not all at once.
    expect(retryAts[1]! - retryAts[0]!).toBeCloseTo(p.intervalMs, 3);
    expect(retryAts[2]! - retryAts[1]!).toBeCloseTo(p.intervalMs, 3);
    const state = await p.snapshot();
    expect(state.nextWakeAt).toBeGreaterThan(state.nextSlotAt);
    // Batches are scheduled on their own line: a deferred single message is not put behind them.
    const batch = await p.reserveSchedule(100);
    expect(batch.startAt).toBeCloseTo(state.nextSlotAt, -1);
    const afterBatch = await p.reserve(1);
    expect(afterBatch.kind === 'defer' && afterBatch.retryAt).toBeCloseTo(state.nextWakeAt, 3);
  });

  it('a message never waits for its slot longer than half its sending lease', () => {
    const limits = { ratePerWindow: 30, rateWindowMs: 60_000, dailyRecipientLimit: 1_000, dailyWindowMs: 60_000 };
    expect(new Pacer(storage.pacingTable, nextMailbox(), limits).maxWaitMs).toBe(60_000);
    expect(new Pacer(storage.pacingTable, nextMailbox(), limits, { leaseMs: 30_000 }).maxWaitMs).toBe(15_000);
  });

  it('a caller may ask for a shorter wait (an inline ?wait=true send) and is deferred sooner', async () => {
    const p = pacer({}, nextMailbox(), 60_000);
    expect((await p.reserve(1)).kind).toBe('slot');
    expect((await p.reserve(1)).kind).toBe('slot');
    expect(await p.reserve(1, { maxWaitMs: 150 })).toMatchObject({ kind: 'defer', reason: 'rate' });
    expect((await p.reserve(1)).kind).toBe('slot');
  });

  it('a batch takes its wake-up tickets in one write; the next batch starts after it', async () => {
    const p = pacer();
    const first = await p.reserveSchedule(50);
    const second = await p.reserveSchedule(10);
    expect(first.intervalMs).toBeCloseTo(p.intervalMs, 6);
    expect(second.startAt - first.startAt).toBeCloseTo(50 * p.intervalMs, 3);
  });
});

describe('rolling daily recipient window', () => {
  it('defers once the window is full and sends again when it has room', async () => {
    const p = pacer({ dailyRecipientLimit: 5, dailyWindowMs: 2_000, ratePerWindow: 1_000 });
    const before = Date.now();
    expect((await p.reserve(3)).kind).toBe('slot');
    const over = await p.reserve(3);
    const after = Date.now();
    expect(over).toMatchObject({ kind: 'defer', reason: 'daily' });
    if (over.kind !== 'defer') throw new Error('unreachable');
    // Room comes back when the first bucket (it started at or before the first slot) has left the window: a window
    // after that bucket began, and at most a window and a bucket after the calls. Bounded by times taken around the
    // calls, so that a slow machine cannot make it fail.
    expect(over.retryAt).toBeGreaterThanOrEqual(before - 2_000 / 96 + 2_000);
    expect(over.retryAt).toBeLessThanOrEqual(after + 2_000 + 2_000 / 96);
    expect((await p.reserve(2)).kind).toBe('slot');
    expect((await p.snapshot()).recipientsInDailyWindow).toBe(5);
    await new Promise((resolve) => setTimeout(resolve, over.retryAt - Date.now() + 20));
    expect((await p.reserve(3)).kind).toBe('slot');
  });

  it('more recipients than a whole window allows is a permanent error, not an endless deferral', async () => {
    const error = await pacer({ dailyRecipientLimit: 5 })
      .reserve(6)
      .catch((e: unknown) => e);
    expect(error).toBeInstanceOf(MailError);
    expect(error).toMatchObject({ code: 'TOO_MANY_RECIPIENTS', transient: false });
  });
});

describe('connection slots (blob leases)', () => {
  it('at most MAIL_MAX_CONNECTIONS leases across instances; a released slot can be taken again', async () => {
    const name = nextMailbox();
    const one = new ConnectionSlots(storage.pacingLeases, name, 3);
    const two = new ConnectionSlots(storage.pacingLeases, name, 3);
    const held = await Promise.all([one.acquire(() => {}), two.acquire(() => {}), one.acquire(() => {})]);
    expect(held.every(Boolean)).toBe(true);
    expect(new Set(held.map((s) => s!.index)).size).toBe(3);
    expect(await two.acquire(() => {})).toBeUndefined();
    expect(await one.leasedCount()).toBe(3);
    await held[1]!.release();
    const again = await one.acquire(() => {});
    expect(again?.index).toBe(held[1]!.index);
    await Promise.all([held[0]!.release(), held[2]!.release(), again!.release()]);
    expect(await two.leasedCount()).toBe(0);
  });
});

describe('the sender under a shared connection cap', () => {
  let first: TestMailer;
  let second: TestMailer;

  beforeEach(() => {
    sandbox.smtp.reset();
  });

  afterAll(async () => {
    await Promise.all([first?.close(), second?.close()]);
  });

  it('two instances with one slot between them: one sends, the other is told CONNECTION_SLOTS_BUSY, never 432', async () => {
    const name = nextMailbox();
    const overrides = { MAIL_MAX_CONNECTIONS: '1' };
    first = sandboxMailer(sandbox, 'client-secret', overrides);
    second = sandboxMailer(sandbox, 'client-secret', overrides);
    const slotsA = new ConnectionSlots(storage.pacingLeases, name, 1);
    const slotsB = new ConnectionSlots(storage.pacingLeases, name, 1);
    // The mailers' own senders have no cap; build capped ones on the same auth.
    const a = new MailSender(first.config, first.auth, { slots: slotsA });
    const b = new MailSender(second.config, second.auth, { slots: slotsB });
    try {
      expect(await a.connectionReady()).toBe(true);
      expect(await b.connectionReady()).toBe(false);
      await a.send(message(first, { subject: 'capped 1' }), { source: 'cli' });
      const refused = await b
        .send(message(second, { subject: 'capped 2' }), { source: 'cli' })
        .catch((e: unknown) => e);
      expect(refused).toMatchObject({ code: 'CONNECTION_SLOTS_BUSY', transient: true });
      expect(a.heldSlots).toBe(1);
      await a.close();
      expect(a.heldSlots).toBe(0);
      // Given back on close: the other instance gets it.
      await b.send(message(second, { subject: 'capped 3' }), { source: 'cli' });
      expect(sandbox.smtp.messages.map((m) => m.parsed.subject)).toEqual(['capped 1', 'capped 3']);
      expect(sandbox.smtp.rejections.filter((r) => r.code === 432)).toEqual([]);
    } finally {
      await Promise.all([a.close(), b.close()]);
    }
  });
});

describe('delivery with pacing', () => {
  let rt: AppServices;

  beforeAll(async () => {
    ({ app: rt } = await startApp(services, {
      MAIL_DAILY_RECIPIENT_LIMIT: '3',
      MAIL_DAILY_WINDOW_SECONDS: '3',
      MAIL_RATE_PER_MINUTE: '600',
    }));
  });

  afterAll(async () => {
    await rt?.close();
  });

  beforeEach(async () => {
    await rt.storage.outboxQueue.clearMessages();
    await resetPacingState(rt.storage.pacingTable);
    sandbox.smtp.reset();
    sandbox.ingestion.reset();
  });

  it('over the daily recipient limit: paced back to the queue, never failed, attempts not spent; sent later', async () => {
    const first = await rt.outbox.accept(
      { to: ['a@example.com', 'b@example.com'], subject: 'd1', text: 'x' },
      {
        source: 'http',
      },
    );
    const second = await rt.outbox.accept(
      { to: ['c@example.com', 'd@example.com'], subject: 'd2', text: 'x' },
      {
        source: 'http',
      },
    );
    // Take both queue messages, as the host does, then deliver.
    const taken = await rt.storage.outboxQueue.receiveMessages({ numberOfMessages: 32, visibilityTimeout: 30 });
    await Promise.all(
      taken.receivedMessageItems.map((m) => rt.storage.outboxQueue.deleteMessage(m.messageId, m.popReceipt)),
    );
    expect((await rt.delivery.deliver(first.id, {})).outcome).toBe('sent');
    const paced = await rt.delivery.deliver(second.id, {});
    expect(paced).toMatchObject({ outcome: 'paced', reason: 'daily' });
    const record = await rt.status.get(second.id);
    expect(record).toMatchObject({ status: 'queued', attempts: 0 });
    expect(Date.parse(record!.dueAt)).toBeGreaterThan(Date.now());
    // Its queue message comes back when the window has room.
    const peek = await rt.storage.outboxQueue.peekMessages({ numberOfMessages: 32 });
    expect(peek.peekedMessageItems.map((m) => parseOutboxMessage(m.messageText)?.id)).not.toContain(second.id);
    const deadline = Date.now() + 15_000;
    for (;;) {
      const got = await rt.storage.outboxQueue.receiveMessages({ numberOfMessages: 32, visibilityTimeout: 30 });
      const item = got.receivedMessageItems.find((m) => parseOutboxMessage(m.messageText)?.id === second.id);
      if (item) break;
      if (Date.now() > deadline) throw new Error('the paced message never came back');
      await new Promise((resolve) => setTimeout(resolve, 250));
    }
    expect((await rt.delivery.deliver(second.id, {})).outcome).toBe('sent');
    expect(sandbox.smtp.messages.map((m) => m.parsed.subject)).toEqual(['d1', 'd2']);
    await (await rt.mailer()).telemetry.flush();
    const pacedEvent = await sandbox.ingestion.waitFor(
      () => sandbox.ingestion.events('MailPaced').some((e) => e.properties.id === second.id),
      10_000,
    );
    expect(pacedEvent).toBe(true);
    expect(sandbox.ingestion.events('MailPaced').find((e) => e.properties.id === second.id)?.properties.reason).toBe(
      'daily',
    );
  }, 30_000);

  it('a 432 4.3.2 from Exchange backs off without spending the attempt, is retried, and is counted as MailThrottled', async () => {
    sandbox.smtp.faults.force432 = 1;
    const accepted = await rt.outbox.accept({ to: 'e@example.com', subject: 't432', text: 'x' }, { source: 'http' });
    const first = await rt.delivery.deliver(accepted.id, {});
    expect(first).toMatchObject({ outcome: 'paced', reason: 'exchange-concurrency' });
    if (first.outcome !== 'paced') throw new Error('unreachable');
    expect(first.error?.code).toBe('CONCURRENCY_LIMIT');
    expect(first.retryInSeconds).toBeGreaterThan(0);
    expect(await rt.status.get(accepted.id)).toMatchObject({ status: 'queued', attempts: 0 });
    await (await rt.mailer()).telemetry.flush();
    const throttled = await sandbox.ingestion.waitFor(
      () => sandbox.ingestion.events('MailThrottled').some((e) => e.properties.id === accepted.id),
      10_000,
    );
    expect(throttled).toBe(true);
    // Retried (here at once, as its back-off would) and sent. The failed attempt counted against the 3-recipient
    // daily window (usage is reserved before sending), so the retry may first be paced until the window has room.
    await rt.status.transition((await rt.status.get(accepted.id))!, { dueAt: new Date().toISOString() });
    let again = await rt.delivery.deliver(accepted.id, {});
    for (let i = 0; again.outcome === 'paced' && i < 5; i++) {
      await new Promise((resolve) => setTimeout(resolve, 1_000));
      again = await rt.delivery.deliver(accepted.id, { inline: true });
    }
    expect(again.outcome).toBe('sent');
    expect(sandbox.smtp.messages.map((m) => m.parsed.subject)).toEqual(['t432']);
  }, 30_000);

  it('stored content that is not a message, inline or in a blob, fails the message at once (no retry loop)', async () => {
    const inline = await rt.outbox.accept({ to: 'f@example.com', subject: 'corrupt', text: 'x' }, { source: 'http' });
    const keys = recordKeys(inline.id);
    await rt.storage.statusTable.updateEntity({ ...keys, content0: '{not json' }, 'Merge');
    // Over INLINE_CONTENT_MAX_CHARS: its content is in a blob.
    const large = await rt.outbox.accept(
      { to: 'f@example.com', subject: 'corrupt', text: 'x'.repeat(INLINE_CONTENT_MAX_CHARS) },
      { source: 'http' },
    );
    await rt.storage.payloads.getBlockBlobClient(MessageStore.blobName(large.id)).upload('{not json', 9, {
      conditions: {},
    });
    for (const id of [inline.id, large.id]) {
      const outcome = await rt.delivery.deliver(id, {});
      expect(outcome).toMatchObject({ outcome: 'failed' });
      expect((await rt.status.get(id))?.error?.code).toBe('PAYLOAD_INVALID');
    }
  });

  it('a message that used up its attempts without an outcome ends failed RETRIES_EXHAUSTED, not retried forever', async () => {
    const accepted = await rt.outbox.accept({ to: 'g@example.com', subject: 'worn', text: 'x' }, { source: 'http' });
    const record = (await rt.status.get(accepted.id))!;
    // As left by workers that crashed after taking the lease, eight times over.
    await rt.status.transition(record, { attempts: 8, status: 'queued' });
    await enqueueOutbox(rt.storage.outboxQueue, accepted.id, 0);
    const outcome = await rt.delivery.deliver(accepted.id, {});
    expect(outcome).toMatchObject({ outcome: 'failed' });
    expect(await rt.status.get(accepted.id)).toMatchObject({
      status: 'failed',
      attempts: 8,
      error: { code: 'RETRIES_EXHAUSTED', transient: false },
    });
    // Not retried: a later copy of the queue message finds the outcome and sends nothing.
    expect(await rt.delivery.deliver(accepted.id, {})).toMatchObject({ outcome: 'completed' });
    expect(sandbox.smtp.messages.filter((m) => m.parsed.subject === 'worn')).toHaveLength(0);
  });
});

describe('POST /api/messages?wait=true under pacing', () => {
  it('sends inline while the slot is near; answers 202 queued, not a held request, when it is far', async () => {
    // One message a minute: the second slot is about 61 s away, far over the inline wait of a few seconds.
    const { app: rt } = await startApp(services, { MAIL_RATE_PER_MINUTE: '1' });
    const post = (subject: string) => {
      const url = 'http://127.0.0.1:7071/api/messages?wait=true';
      const request: ApiRequest = {
        method: 'POST',
        url,
        headers: new Headers({ 'content-type': 'application/json' }),
        query: new URL(url).searchParams,
        params: {},
        body: new Response(JSON.stringify({ to: 'w@example.com', subject, text: 'x' })).body,
      };
      return runApi(postMessage, request, () => rt);
    };
    try {
      // The mailbox's pacing state is shared with the tests above: wait until its next slot is free.
      const free = (await rt.pacer!.snapshot()).nextSlotAt - Date.now();
      if (free > 0) await new Promise((resolve) => setTimeout(resolve, free));
      sandbox.smtp.reset();
      const first = await post('inline 1');
      expect(first.status).toBe(200);
      const started = Date.now();
      const second = await post('inline 2');
      expect(Date.now() - started).toBeLessThan(4_000);
      expect(second.status).toBe(202);
      expect(second.jsonBody).toMatchObject({ status: 'queued' });
      expect(sandbox.smtp.messages.map((m) => m.parsed.subject)).toEqual(['inline 1']);
    } finally {
      await rt.close();
    }
  }, 30_000);
});
