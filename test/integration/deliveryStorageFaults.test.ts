/**
 * Storage failing in the middle of a delivery, through a proxy in front of Azurite's table endpoint: after the lease
 * is taken but before SMTP (the lease is handed back), and after Exchange's 250 (the `sent` write is retried; when it
 * never succeeds, the lease is kept and the documented duplicate follows). Each time: what deliver returns or throws,
 * the record afterwards, what Exchange received, and what the next delivery does.
 */
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import type { AppServices } from '../../src/appServices';
import type { StoredRecord } from '../../src/outbox/statusStore';
import {
  isRecordOf,
  startTableFaultProxy,
  type TableFault,
  type TableFaultProxy,
  type TableRequest,
} from '../support/tableFaultProxy';
import type { Sandbox, TestMailer } from '../support/sandboxMailer';
import { startStack, type Stack } from '../support/stack';

/** The sending lease: short, so that a test can wait for it to run out. Held over 400 ms before SMTP, it is renewed. */
const LEASE_MS = 4_000;
/** A lease write this slow makes the worker renew its lease before SMTP (LEASE_MS / 10 is the renewal threshold). */
const SLOW_LEASE_WRITE_MS = 1_500;
/** The host's delivery context on a first and a retried dequeue. */
const FIRST = { dequeueCount: 1 };
const RETRY = { dequeueCount: 2 };

let stack: Stack;
let sandbox: Sandbox;
let proxy: TableFaultProxy;
let mailer: TestMailer;
let rt: AppServices;

beforeAll(async () => {
  stack = await startStack(
    async ({ azurite }) => {
      proxy = await startTableFaultProxy(`http://127.0.0.1:${azurite.ports.table}/devstoreaccount1`);
      return {
        // Every table request of the app (status records, pacing) goes through the proxy; queues and blobs do not.
        AzureWebJobsStorage: azurite.connectionString.replace(/TableEndpoint=[^;]+/, `TableEndpoint=${proxy.url}`),
        MAIL_RATE_PER_MINUTE: '6000',
      };
    },
    { delivery: { leaseMs: LEASE_MS } },
  );
  ({ sandbox, mailer, app: rt } = stack);
});

afterAll(async () => {
  await Promise.all([stack?.close(), proxy?.close()]);
});

beforeEach(async () => {
  proxy.decide = () => 'forward';
  proxy.log.length = 0;
  sandbox.smtp.reset();
  await rt.storage.outboxQueue.clearMessages();
});

async function accept(subject: string): Promise<string> {
  const { id } = await rt.outbox.accept({ to: 'someone@example.com', subject, text: 'x' }, { source: 'http' });
  return id;
}

async function record(id: string): Promise<StoredRecord> {
  const found = await rt.status.get(id);
  if (!found) throw new Error(`no record ${id}`);
  return found;
}

/** Writes of message `id`'s record that carry `status` (lease and renewal: `sending`; give-back: `queued`). */
const isWrite = (request: TableRequest, id: string, status: string) =>
  isRecordOf(request, id) && request.method === 'PUT' && request.body?.status === status;

/** What the proxy did with each SDK call (its first try) that wrote `status` to `id`'s record. */
const writes = (id: string, status: string) =>
  proxy.log.filter((r) => isWrite(r, id, status) && r.attempt === 1).map((r) => r.fault);

async function rejection(promise: Promise<unknown>): Promise<Error & { statusCode?: number }> {
  try {
    await promise;
  } catch (error) {
    return error as Error & { statusCode?: number };
  }
  throw new Error('expected deliver to throw');
}

describe('storage fails after the lease is taken, before SMTP: the lease is handed back', () => {
  it('the pacing state cannot be read: deliver throws, the record is queued again without a lease, nothing was sent; the next delivery sends one copy', async () => {
    const id = await accept('pacing unreadable');
    let leased = false;
    proxy.decide = (r) => {
      if (isWrite(r, id, 'sending')) leased = true;
      return leased && r.method === 'GET' && /\/MailPacing\(/.test(r.path) ? 'refuse' : 'forward';
    };

    const error = await rejection(rt.delivery.deliver(id, FIRST));
    expect(error.statusCode).toBe(503);
    // The lease was taken, then given back by one more write.
    expect(writes(id, 'sending')).toEqual(['forward']);
    expect(writes(id, 'queued')).toEqual(['forward']);
    const after = await record(id);
    expect(after).toMatchObject({ status: 'queued', attempts: 1 });
    expect(after.leaseUntil).toBeUndefined();
    // Due now: the host's retry of the queue message is not hidden behind a lease or a future dueAt.
    expect(Date.parse(after.dueAt)).toBeLessThanOrEqual(Date.now());
    expect(sandbox.smtp.sessions).toHaveLength(0);
    expect(sandbox.smtp.messages).toHaveLength(0);

    proxy.decide = () => 'forward';
    const next = await rt.delivery.deliver(id, RETRY);
    expect(next.outcome).toBe('sent');
    expect(await record(id)).toMatchObject({ status: 'sent', attempts: 2 });
    expect(sandbox.smtp.messages.map((m) => m.parsed.subject)).toEqual(['pacing unreadable']);
  });

  it('the lease renewal before SMTP is refused: deliver throws, the lease is handed back, nothing was sent; the next delivery sends one copy', async () => {
    const id = await accept('renewal refused');
    let sendingWrites = 0;
    proxy.decide = (r): TableFault => {
      if (!isWrite(r, id, 'sending')) return 'forward';
      if (r.attempt === 1) sendingWrites++;
      // A slow lease write: the worker has held its lease too long to send on it unrenewed, and renews it.
      return sendingWrites === 1 ? { delayMs: SLOW_LEASE_WRITE_MS } : 'refuse';
    };

    const error = await rejection(rt.delivery.deliver(id, FIRST));
    expect(error.statusCode).toBe(503);
    // The lease, then its renewal refused on every try the SDK made, then the give-back.
    expect(writes(id, 'sending')).toEqual([{ delayMs: SLOW_LEASE_WRITE_MS }, 'refuse']);
    expect(proxy.log.filter((r) => isWrite(r, id, 'sending') && r.fault === 'refuse').length).toBeGreaterThan(1);
    expect(writes(id, 'queued')).toEqual(['forward']);
    const after = await record(id);
    expect(after).toMatchObject({ status: 'queued', attempts: 1 });
    expect(after.leaseUntil).toBeUndefined();
    expect(sandbox.smtp.sessions).toHaveLength(0);

    proxy.decide = () => 'forward';
    expect((await rt.delivery.deliver(id, RETRY)).outcome).toBe('sent');
    expect(await record(id)).toMatchObject({ status: 'sent', attempts: 2 });
    expect(sandbox.smtp.messages.map((m) => m.parsed.subject)).toEqual(['renewal refused']);
  });

  it('the lease cannot be handed back either: it runs out on its own; until then the next delivery waits, after it one copy is sent', async () => {
    const id = await accept('give-back refused');
    let sendingWrites = 0;
    proxy.decide = (r): TableFault => {
      if (isWrite(r, id, 'queued')) return 'refuse';
      if (!isWrite(r, id, 'sending')) return 'forward';
      if (r.attempt === 1) sendingWrites++;
      return sendingWrites === 1 ? { delayMs: SLOW_LEASE_WRITE_MS } : 'refuse';
    };

    const error = await rejection(rt.delivery.deliver(id, FIRST));
    expect(error.statusCode).toBe(503);
    expect(writes(id, 'queued')).toEqual(['refuse']);
    expect(mailer.logs.join('\n')).toMatch(/could not release the sending lease after an error; it expires on its own/);
    const after = await record(id);
    expect(after).toMatchObject({ status: 'sending', attempts: 1 });
    const leaseEnds = Date.parse(after.leaseUntil ?? '');
    expect(leaseEnds).toBeGreaterThan(Date.now());

    proxy.decide = () => 'forward';
    // While the lease lasts, another delivery does not send: it re-enqueues for when the lease ends.
    const waiting = await rt.delivery.deliver(id, RETRY);
    expect(waiting).toMatchObject({ outcome: 'waiting', reason: 'lease' });
    expect(sandbox.smtp.sessions).toHaveLength(0);

    await new Promise((resolve) => setTimeout(resolve, Math.max(0, leaseEnds - Date.now()) + 100));
    expect((await rt.delivery.deliver(id, { dequeueCount: 3 })).outcome).toBe('sent');
    expect(await record(id)).toMatchObject({ status: 'sent', attempts: 2 });
    expect(sandbox.smtp.messages.map((m) => m.parsed.subject)).toEqual(['give-back refused']);
  });
});

describe('storage fails after Exchange accepted the message (250): the `sent` write', () => {
  it('refused once: retried, the record is `sent` and Exchange has one copy; a redelivered queue message sends nothing', async () => {
    const id = await accept('sent write retried');
    let sentWrites = 0;
    proxy.decide = (r) => {
      if (!isWrite(r, id, 'sent')) return 'forward';
      if (r.attempt === 1) sentWrites++;
      return sentWrites === 1 ? 'refuse' : 'forward';
    };

    const outcome = await rt.delivery.deliver(id, FIRST);
    expect(outcome.outcome).toBe('sent');
    expect(writes(id, 'sent')).toEqual(['refuse', 'forward']);
    const after = await record(id);
    expect(after).toMatchObject({ status: 'sent', attempts: 1 });
    expect(after.leaseUntil).toBeUndefined();
    expect(after.messageId).toBe(sandbox.smtp.messages[0]?.parsed.messageId);
    expect(sandbox.smtp.messages).toHaveLength(1);

    expect((await rt.delivery.deliver(id, RETRY)).outcome).toBe('completed');
    expect(sandbox.smtp.messages).toHaveLength(1);
  });

  it('applied but its answer lost: the worker finds the record `sent` and reports it sent; one copy', async () => {
    const id = await accept('sent write answer lost');
    let dropped = false;
    proxy.decide = (r) => {
      if (!isWrite(r, id, 'sent') || dropped) return 'forward';
      dropped = true;
      return 'drop-reply';
    };

    const outcome = await rt.delivery.deliver(id, FIRST);
    expect(dropped).toBe(true);
    expect(outcome.outcome).toBe('sent');
    expect(await record(id)).toMatchObject({ status: 'sent', attempts: 1 });
    expect(sandbox.smtp.messages).toHaveLength(1);
    expect((await rt.delivery.deliver(id, RETRY)).outcome).toBe('completed');
    expect(sandbox.smtp.messages).toHaveLength(1);
  });

  it('refused every time: deliver throws after Exchange accepted, the lease is kept (not handed back for a resend before it ends); after the lease the next delivery sends again — the documented duplicate', async () => {
    const id = await accept('sent write lost');
    proxy.decide = (r) => (isWrite(r, id, 'sent') ? 'refuse' : 'forward');

    const error = await rejection(rt.delivery.deliver(id, FIRST));
    expect(error.statusCode).toBe(503);
    // SENT_WRITE_TRIES (3) writes of `sent`, each refused on every try; no give-back write.
    expect(writes(id, 'sent')).toEqual(['refuse', 'refuse', 'refuse']);
    expect(writes(id, 'queued')).toEqual([]);
    expect(sandbox.smtp.messages).toHaveLength(1);
    const after = await record(id);
    expect(after).toMatchObject({ status: 'sending', attempts: 1 });
    const leaseEnds = Date.parse(after.leaseUntil ?? '');
    expect(leaseEnds).toBeGreaterThan(Date.now());

    proxy.decide = () => 'forward';
    // The host retries its queue message: under the lease nothing is sent again.
    expect(await rt.delivery.deliver(id, RETRY)).toMatchObject({ outcome: 'waiting', reason: 'lease' });
    expect(sandbox.smtp.messages).toHaveLength(1);

    // Once the lease has run out, the message is sent again: the one duplicate the design cannot prevent.
    await new Promise((resolve) => setTimeout(resolve, Math.max(0, leaseEnds - Date.now()) + 100));
    expect((await rt.delivery.deliver(id, { dequeueCount: 3 })).outcome).toBe('sent');
    const final = await record(id);
    expect(final).toMatchObject({ status: 'sent', attempts: 2 });
    const copies = sandbox.smtp.messages.map((m) => m.parsed);
    expect(copies.map((m) => m.subject)).toEqual(['sent write lost', 'sent write lost']);
    // Both copies carry the Message-ID fixed at accept, which the record keeps.
    expect(copies[0]?.messageId).toBe(copies[1]?.messageId);
    expect(final.messageId).toBe(copies[0]?.messageId);
  });
});
