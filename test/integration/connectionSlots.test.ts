/**
 * SMTP connection slots (blob leases in Azurite) with the real sender against the sandbox's Exchange: a lease lost
 * to another instance closes its connection, a crashed instance's slots come back when their leases run out, idle
 * extra connections are handed back, and delivery defers (without spending an attempt) when other instances hold
 * every slot.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import path from 'node:path';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import type { AzuriteInstance } from '../../dev/azurite';
import { ConnectionSlots, LEASE_SECONDS, type ConnectionSlot } from '../../src/pacing/connectionSlots';
import { createLogger } from '../../src/logger';
import { parseOutboxMessage } from '../../src/outbox/outboxQueue';
import { Pacer } from '../../src/pacing/pacer';
import { createAppServices, type AppServices } from '../../src/appServices';
import { IDLE_CLOSE_MS } from '../../src/sender/connectionPool';
import { MailSender } from '../../src/sender/mailSender';
import { statusView } from '../../src/outbox/statusStore';
import { createStorage, type StorageClients } from '../../src/storage/storageClients';
import { applySandboxEnv, message, sandboxMailer, type Sandbox, type TestMailer } from '../support/sandboxMailer';
import { appSettings, startServices, type Services } from '../support/stack';

const ROOT = path.resolve(__dirname, '../..');
/** Renewal interval in these tests: a lost lease is noticed within a fraction of a second instead of 5 s. */
const FAST_RENEW_MS = 200;

let services: Services;
let sandbox: Sandbox;
let azurite: AzuriteInstance;
let storage: StorageClients;
let mailer: TestMailer;
let mailboxes = 0;
const children = new Set<ChildProcess>();
const senders: MailSender[] = [];

beforeAll(async () => {
  services = await startServices();
  ({ sandbox, azurite } = services);
  storage = createStorage({ kind: 'connectionString', connectionString: azurite.connectionString });
  await storage.ensureResources();
  mailer = sandboxMailer(sandbox);
});

afterAll(async () => {
  for (const child of children) if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  await mailer?.close();
  await services?.close();
});

beforeEach(() => {
  sandbox.smtp.reset();
});

afterEach(async () => {
  await Promise.all(senders.splice(0).map((s) => s.close()));
});

/**
 * A mailbox name of its own for a test's slots, so that tests share no leases. The sender still authenticates as the
 * sandbox's mailbox: slots are keyed by name only.
 */
const nextMailbox = () => `slots-${++mailboxes}-${Date.now()}@contoso.test`;

/** A sender under the shared connection cap `slots`, on the sandbox mailer's settings and credentials. */
function cappedSender(slots: ConnectionSlots, options: { idleCloseMs?: number } = {}): MailSender {
  const sender = new MailSender(mailer.config, mailer.auth, { slots, ...options });
  senders.push(sender);
  return sender;
}

/** Resolves once `condition` holds; rejects after `timeoutMs` naming `what`. */
async function until(what: string, condition: () => boolean | Promise<boolean>, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 25));
  }
}

const sessionOf = (subject: string) => {
  const sent = sandbox.smtp.messages.find((m) => m.parsed.subject === subject);
  return sandbox.smtp.sessions.find((s) => s.id === sent?.sessionId);
};

describe('a release that fails', () => {
  it('is logged with the status and the error code (no data), and the slot stays with whoever holds it', async () => {
    const logs: string[] = [];
    const logger = createLogger({ level: 'debug', write: (line) => logs.push(line) });
    const slots = new ConnectionSlots(storage.pacingLeases, nextMailbox(), 1, { logger, renewEveryMs: 60_000 });
    const slot = await slots.acquire(() => {});
    expect(slot?.index).toBe(0);
    // Another instance breaks the lease and takes the slot: this one's release is refused.
    const blob = slots.slotBlob(0);
    await blob.getBlobLeaseClient().breakLease(0);
    const other = blob.getBlobLeaseClient();
    await other.acquireLease(LEASE_SECONDS);
    await slot?.release();
    const warning = logs.find((line) => line.includes('could not release an SMTP connection slot lease'));
    expect(warning).toMatch(/WARN .*"slot":0,"status":409,"code":"[A-Za-z0-9_]+"/);
    expect((await blob.getProperties()).leaseState).toBe('leased');
    await other.releaseLease();
  });
});

describe('a lease renewal that fails closes its connection', () => {
  it.each([
    ['broken by another instance', false],
    ['broken and taken by another instance', true],
  ])('lease %s: the connection closes at once, the slot is not held by this instance', async (_, takenOver) => {
    const logs: string[] = [];
    const logger = createLogger({ level: 'debug', write: (line) => logs.push(line) });
    const slots = new ConnectionSlots(storage.pacingLeases, nextMailbox(), 1, { logger, renewEveryMs: FAST_RENEW_MS });
    // Kept open when idle far longer than this test runs: whatever closes the connection here is the lost lease.
    const sender = cappedSender(slots, { idleCloseMs: 120_000 });
    await sender.send(message(mailer, { subject: 'before the lease was lost' }), { source: 'cli' });
    const session = sessionOf('before the lease was lost');
    expect(session?.open).toBe(true);
    expect(sender.heldSlots).toBe(1);

    const blob = slots.slotBlob(0);
    await blob.getBlobLeaseClient().breakLease(0);
    const other = blob.getBlobLeaseClient();
    if (takenOver) await other.acquireLease(LEASE_SECONDS);

    await until('the connection to close', () => sender.heldSlots === 0 && session?.open === false);
    expect(logs.join('\n')).toMatch(/WARN .*lost an SMTP connection slot lease; closing its connection/);
    // The closed lane gives back nothing it no longer holds (its release comes a moment after the close).
    await new Promise((resolve) => setTimeout(resolve, 500));
    const properties = await blob.getProperties();
    if (takenOver) {
      expect(properties.leaseState).toBe('leased');
      await other.renewLease(); // still the other instance's
      const refused = await sender
        .send(message(mailer, { subject: 'after the lease was lost' }), { source: 'cli' })
        .catch((e: unknown) => e);
      expect(refused).toMatchObject({ code: 'CONNECTION_SLOTS_BUSY', transient: true });
      await other.releaseLease();
    } else {
      expect(properties.leaseState).not.toBe('leased');
      // Free for whoever asks next, this instance included, on a new connection.
      await sender.send(message(mailer, { subject: 'after the lease was lost' }), { source: 'cli' });
      expect(sessionOf('after the lease was lost')?.id).not.toBe(session?.id);
    }
    expect(sandbox.smtp.messages.filter((m) => m.sessionId === session?.id)).toHaveLength(1);
  });
});

describe('a crashed instance', () => {
  it(`gives its slots back when their ${LEASE_SECONDS} s leases run out, not before`, async () => {
    const name = nextMailbox();
    const max = 2;
    // `node --import tsx`: one process, so SIGKILL kills the instance itself.
    const child = spawn(process.execPath, ['--import', 'tsx', path.join(__dirname, '../programs/slotHolder.ts')], {
      cwd: ROOT,
      env: {
        ...process.env,
        TEST_STORAGE: azurite.connectionString,
        TEST_MAILBOX: name,
        TEST_SLOTS: String(max),
      },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    children.add(child);
    let out = '';
    let err = '';
    child.stdout?.on('data', (chunk: Buffer) => (out += chunk.toString()));
    child.stderr?.on('data', (chunk: Buffer) => (err += chunk.toString()));
    await until(
      'the instance to hold its slots',
      () => {
        if (child.exitCode !== null) throw new Error(`slot holder exited ${child.exitCode}: ${err}`);
        return out.includes('"held"');
      },
      30_000,
    );
    const held = JSON.parse(out.split('\n').find((l) => l.includes('"held"')) ?? '{}') as {
      indices: number[];
      startedAt: number;
      heldAt: number;
    };
    expect([...held.indices].sort()).toEqual([0, 1]);

    const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
    child.kill('SIGKILL');
    await exited;
    const crashedAt = Date.now();
    // Its leases began after `startedAt`: none can end before startedAt + LEASE_SECONDS.
    const earliestExpiry = held.startedAt + LEASE_SECONDS * 1000;
    expect(crashedAt).toBeLessThan(earliestExpiry);

    const survivor = new ConnectionSlots(storage.pacingLeases, name, max);
    expect(await survivor.acquire(() => {})).toBeUndefined();
    expect(await survivor.leasedCount()).toBe(max);

    let slot: ConnectionSlot | undefined;
    await until(
      'a slot to come back',
      async () => (slot = await survivor.acquire(() => {})) !== undefined,
      LEASE_SECONDS * 1000 + 10_000,
    );
    const freedAt = Date.now();
    expect(freedAt).toBeGreaterThanOrEqual(earliestExpiry);
    // Within one lease period of the crash (plus this loop's polling and a loaded machine's slack).
    expect(freedAt - crashedAt).toBeLessThan(LEASE_SECONDS * 1000 + 3_000);
    // The other lease may have been renewed a moment after the first one before the kill: it runs out as soon after.
    let second: ConnectionSlot | undefined;
    await until(
      'the second slot to come back',
      async () => (second = await survivor.acquire(() => {})) !== undefined,
      LEASE_SECONDS * 1000 + 10_000,
    );
    expect(Date.now() - crashedAt).toBeLessThan(LEASE_SECONDS * 1000 + 3_000);
    await Promise.all([slot?.release(), second?.release()]);
    expect(await survivor.leasedCount()).toBe(0);
  }, 60_000);
});

describe('idle connections', () => {
  afterEach(() => {
    sandbox.smtp.faults.delayMs = 0;
  });

  it(`extra connections are handed back as soon as they are idle; the first is kept for ${IDLE_CLOSE_MS} ms`, async () => {
    const slots = new ConnectionSlots(storage.pacingLeases, nextMailbox(), 3);
    const sender = cappedSender(slots);
    // Slow replies keep each send in flight while the next one starts, so each needs a connection of its own.
    sandbox.smtp.faults.delayMs = 150;
    const sends: Array<Promise<unknown>> = [];
    for (const [i, subject] of ['lane 1', 'lane 2', 'lane 3'].entries()) {
      sends.push(sender.send(message(mailer, { subject }), { source: 'cli' }));
      await until(`connection ${i + 1}`, () => sender.heldSlots === i + 1);
    }
    await Promise.all(sends);
    const [primary, ...extra] = ['lane 1', 'lane 2', 'lane 3'].map((s) => sessionOf(s));
    expect(new Set([primary, ...extra].map((s) => s?.id)).size).toBe(3);
    expect(sandbox.smtp.maxConcurrentSessions(mailer.config.sender)).toBe(3);

    await until('the extra connections to close', () => sender.heldSlots === 1 && extra.every((s) => !s?.open));
    await until('their slots to be given back', async () => (await slots.leasedCount()) === 1);
    // The first connection stays for the next message (its idle timer started when its send ended, moments ago).
    expect(primary?.open).toBe(true);

    await until('the first connection to close', () => primary?.open === false, IDLE_CLOSE_MS + 10_000);
    const receivedAt = sandbox.smtp.messages.find((m) => m.parsed.subject === 'lane 1')?.receivedAt ?? Infinity;
    // Not before it had been idle for IDLE_CLOSE_MS: its idle time began after Exchange had its message.
    expect(primary?.closedAt).toBeGreaterThanOrEqual(receivedAt + IDLE_CLOSE_MS);
    await until('its slot to be given back', async () => (await slots.leasedCount()) === 0);
    expect(sender.heldSlots).toBe(0);
  }, 30_000);
});

describe('delivery when other instances hold every connection slot', () => {
  let rt: AppServices;

  beforeAll(async () => {
    applySandboxEnv(sandbox);
    // The app as deployed: the app's services build their own sender under the mailbox's shared connection cap.
    rt = createAppServices(appSettings(services, { MAIL_RATE_PER_MINUTE: '6000' }), {
      logger: createLogger({ level: 'error', write: () => {} }),
    });
    await rt.storage.ensureResources();
  });

  afterAll(async () => {
    await rt?.close();
  });

  beforeEach(async () => {
    await rt.storage.outboxQueue.clearMessages();
    sandbox.ingestion.reset();
  });

  it('before a send slot is taken: paced ("connections"), no attempt spent, no send slot used, nothing connects; sent once the slots are free', async () => {
    const others = new ConnectionSlots(rt.storage.pacingLeases, rt.config.sender, rt.config.limits.maxConnections);
    const held = await Promise.all(
      Array.from({ length: rt.config.limits.maxConnections }, () => others.acquire(() => {})),
    );
    expect(held.every(Boolean)).toBe(true);
    try {
      const { id } = await rt.outbox.accept({ to: 'a@example.com', subject: 'no slot', text: 'x' }, { source: 'http' });
      // Taken off the queue, as the host does when it runs the delivery.
      const taken = await rt.storage.outboxQueue.receiveMessages({ numberOfMessages: 32, visibilityTimeout: 30 });
      await Promise.all(
        taken.receivedMessageItems.map((m) => rt.storage.outboxQueue.deleteMessage(m.messageId, m.popReceipt)),
      );
      const tokensBefore = sandbox.entra.requests.length;
      const pacingBefore = await rt.pacer!.snapshot();

      const outcome = await rt.delivery.deliver(id, { dequeueCount: 1 });
      expect(outcome).toMatchObject({ outcome: 'paced', reason: 'connections' });
      if (outcome.outcome !== 'paced') throw new Error('unreachable');
      // Other instances give idle connections back within IDLE_CLOSE_MS; it comes back after one to two of those.
      expect(outcome.retryInSeconds).toBeGreaterThanOrEqual(IDLE_CLOSE_MS / 1000);
      const record = (await rt.status.get(id))!;
      expect(record).toMatchObject({ status: 'queued', attempts: 0, waitReason: 'connections' });
      expect(record.leaseUntil).toBeUndefined();
      expect(Date.parse(record.dueAt)).toBeGreaterThan(Date.now());
      expect(statusView(record).waiting?.reason).toBe('connections');
      // Nothing was spent: no send slot, no token, no SMTP connection.
      expect((await rt.pacer!.snapshot()).nextSlotAt).toBe(pacingBefore.nextSlotAt);
      expect(sandbox.entra.requests.length).toBe(tokensBefore);
      expect(sandbox.smtp.sessions).toHaveLength(0);
      // Its retry is on the queue, invisible until it is due.
      const visible = await rt.storage.outboxQueue.peekMessages({ numberOfMessages: 32 });
      expect(visible.peekedMessageItems.map((m) => parseOutboxMessage(m.messageText)?.id)).not.toContain(id);
      expect((await rt.storage.outboxQueue.getProperties()).approximateMessagesCount).toBe(1);
      await (await rt.mailer()).telemetry.flush();
      const paced = await sandbox.ingestion.waitFor(
        () => sandbox.ingestion.events('MailPaced').some((e) => e.properties.id === id),
        10_000,
      );
      expect(paced).toBe(true);
      expect(sandbox.ingestion.events('MailPaced').find((e) => e.properties.id === id)?.properties.reason).toBe(
        'connections',
      );

      await Promise.all(held.map((slot) => slot?.release() ?? Promise.resolve()));
      // As its queue message does once it is visible.
      await rt.status.transition(record, { dueAt: new Date().toISOString() });
      expect((await rt.delivery.deliver(id, { dequeueCount: 1 })).outcome).toBe('sent');
      expect(await rt.status.get(id)).toMatchObject({ status: 'sent', attempts: 1 });
      expect(sandbox.smtp.messages.map((m) => m.parsed.subject)).toEqual(['no slot']);
    } finally {
      await Promise.all(held.map((slot) => slot?.release() ?? Promise.resolve()));
    }
  });

  it('the slot lost while waiting for the send slot: the sender says CONNECTION_SLOTS_BUSY and delivery paces the message, no attempt spent, nothing sent', async () => {
    const name = nextMailbox();
    const slots = new ConnectionSlots(rt.storage.pacingLeases, name, 1, { renewEveryMs: FAST_RENEW_MS });
    const sender = new MailSender(rt.config, (await rt.mailer()).auth, { slots, idleCloseMs: 120_000 });
    senders.push(sender);
    // One send every 3 s for this mailbox, and the next slot taken: the delivery below waits about 3 s for its own.
    const pacer = new Pacer(
      rt.storage.pacingTable,
      name,
      { ratePerWindow: 1, rateWindowMs: 3_000, dailyRecipientLimit: 1_000, dailyWindowMs: 60_000 },
      { leaseMs: rt.config.sendLeaseMs },
    );
    expect((await pacer.reserve(1)).kind).toBe('slot');
    const { nextSlotAt } = await pacer.snapshot();
    // This instance holds the mailbox's one connection slot (idle, no SMTP session yet).
    expect(await sender.connectionReady()).toBe(true);

    const { id } = await rt.outbox.accept({ to: 'b@example.com', subject: 'slot lost', text: 'x' }, { source: 'http' });
    const delivery = rt.delivery.with({ sender, pacer }).deliver(id, { dequeueCount: 1 });
    // It has its connection slot and its send slot, and waits for the latter.
    await until('the delivery to take its send slot', async () => (await pacer.snapshot()).nextSlotAt > nextSlotAt);
    // Meanwhile another instance takes the connection slot over.
    const blob = slots.slotBlob(0);
    await blob.getBlobLeaseClient().breakLease(0);
    const other = blob.getBlobLeaseClient();
    await other.acquireLease(LEASE_SECONDS);
    try {
      await until('the lost lease to close the connection', () => sender.heldSlots === 0);
      const outcome = await delivery;
      expect(outcome).toMatchObject({ outcome: 'paced', reason: 'connections' });
      expect(await rt.status.get(id)).toMatchObject({ status: 'queued', attempts: 0, waitReason: 'connections' });
      expect(sandbox.smtp.sessions).toHaveLength(0);
      expect(sandbox.smtp.messages).toHaveLength(0);
    } finally {
      await other.releaseLease();
    }
  });
});
