/**
 * Exchange's own throttling of the mailbox, caused by mail sent outside this app: the outbox waits it out without
 * spending attempts, shows why, says so in telemetry, and sends once Exchange's rolling window frees.
 */
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { getMessage } from '../../src/api/messagesGet';
import type { ApiRequest } from '../../src/api/apiTypes';
import type { DeliverOutcome } from '../../src/outbox/delivery';
import { parseOutboxMessage } from '../../src/outbox/outboxQueue';
import type { AppServices } from '../../src/appServices';
import { message, resetPacingState, sandboxMailer, type Sandbox, type TestMailer } from '../support/sandboxMailer';
import { startStack, type Stack } from '../support/stack';

/** Exchange's daily quota, scaled down: 3 recipients per rolling 8 s. */
const QUOTA = 3;
const WINDOW_MS = 8_000;

let stack: Stack;
let sandbox: Sandbox;
let mailer: TestMailer;
/** Another app (or a person) sending from the same mailbox, past this app's pacing. */
let outsider: TestMailer;
let rt: AppServices;

beforeAll(async () => {
  stack = await startStack(
    {
      // This app's own count would allow far more: the quota is used up by mail it never saw.
      MAIL_DAILY_RECIPIENT_LIMIT: '1000',
      MAIL_DAILY_WINDOW_SECONDS: String(WINDOW_MS / 1000),
      MAIL_RATE_PER_MINUTE: '6000',
    },
    { sandbox: { smtpLimits: { dailyRecipients: QUOTA, dailyWindowMs: WINDOW_MS } } },
  );
  ({ sandbox, mailer, app: rt } = stack);
  outsider = sandboxMailer(sandbox);
});

afterAll(async () => {
  await outsider?.close();
  await stack?.close();
});

beforeEach(async () => {
  // Each test fills the quota itself: start from an empty window and no block, whatever ran before.
  sandbox.smtp.reset();
  sandbox.ingestion.reset();
  await rt.storage.outboxQueue.clearMessages();
  await resetPacingState(rt.storage.pacingTable);
});

/** Plays the Functions host once: delivers the visible outbox messages and deletes them. */
async function drainOnce(): Promise<Map<string, DeliverOutcome>> {
  const received = await rt.storage.outboxQueue.receiveMessages({ numberOfMessages: 32, visibilityTimeout: 30 });
  const outcomes = new Map<string, DeliverOutcome>();
  for (const m of received.receivedMessageItems) {
    const id = parseOutboxMessage(m.messageText)!.id;
    outcomes.set(id, await rt.delivery.deliver(id, { dequeueCount: m.dequeueCount }));
    await rt.storage.outboxQueue.deleteMessage(m.messageId, m.popReceipt);
  }
  return outcomes;
}

function getRequest(id: string): ApiRequest {
  const url = `http://127.0.0.1:7071/api/messages/${id}`;
  return {
    method: 'GET',
    url,
    headers: new Headers(),
    query: new URL(url).searchParams,
    params: { id },
    body: null,
  };
}

const quotaRejections = () => sandbox.smtp.rejections.filter((r) => r.enhanced === '5.2.0').length;

describe("Exchange's daily quota used up by mail sent outside the app", () => {
  it('the message waits with the reason and no attempt spent, then goes out once the rolling window frees', async () => {
    for (let i = 0; i < QUOTA; i++)
      await outsider.sender.send(message(outsider, { subject: `outside ${i}` }), { source: 'cli' });
    const quotaUsedAt = Date.now();

    const first = await rt.outbox.accept(
      { to: 'one@example.com', subject: 'over quota 1', text: 'x' },
      { source: 'http' },
    );
    const [refused] = [...(await drainOnce()).values()];
    expect(refused).toMatchObject({ outcome: 'paced', reason: 'exchange-daily-quota' });
    const waiting = await rt.status.get(first.id);
    expect(waiting).toMatchObject({ status: 'queued', attempts: 0, waitReason: 'exchange-daily-quota' });
    expect(waiting?.error).toMatchObject({
      code: 'DAILY_QUOTA_EXCEEDED',
      transient: true,
      smtp: { code: 554, enhanced: '5.2.0' },
    });
    // What the caller sees: waiting, why, until when, and Exchange's own reply.
    const view = (await getMessage(getRequest(first.id), rt)).jsonBody as Record<string, unknown>;
    expect(view).toMatchObject({
      status: 'queued',
      attempts: 0,
      waiting: { reason: 'exchange-daily-quota', until: waiting?.dueAt },
      error: { code: 'DAILY_QUOTA_EXCEEDED', smtp: { enhanced: '5.2.0' } },
    });
    // Every instance holds back now: the mailbox is blocked in the shared pacing state until the next probe.
    expect((await rt.pacer!.snapshot()).blockedUntil).toBeGreaterThan(Date.now());

    // A second message meanwhile is held back by the shared block itself: Exchange is not asked again for it.
    const second = await rt.outbox.accept(
      { to: 'two@example.com', subject: 'over quota 2', text: 'x' },
      { source: 'http' },
    );
    const rejectionsBefore = quotaRejections();
    const held = (await drainOnce()).get(second.id);
    expect(held).toMatchObject({ outcome: 'paced', reason: 'exchange-daily-quota' });
    expect(quotaRejections()).toBe(rejectionsBefore);
    expect(await rt.status.get(second.id)).toMatchObject({ attempts: 0, waitReason: 'exchange-daily-quota' });

    // The host keeps delivering as the queue hands the messages back; once the window frees, both go out.
    const deadline = Date.now() + WINDOW_MS + 20_000;
    for (;;) {
      const [a, b] = await Promise.all([rt.status.get(first.id), rt.status.get(second.id)]);
      if (a?.status === 'sent' && b?.status === 'sent') break;
      if (Date.now() > deadline) throw new Error(`not sent in time: ${a?.status} ${b?.status}`);
      await drainOnce();
      await new Promise((resolve) => setTimeout(resolve, 250));
    }
    const sent = sandbox.smtp.messages.filter((m) => m.parsed.subject?.startsWith('over quota'));
    expect(sent).toHaveLength(2);
    // Not before Exchange's window let them: the quota was used up at quotaUsedAt.
    for (const m of sent) expect(m.receivedAt).toBeGreaterThanOrEqual(quotaUsedAt + WINDOW_MS - 1_000);
    for (const id of [first.id, second.id]) {
      const record = await rt.status.get(id);
      expect(record).toMatchObject({ status: 'sent', attempts: 1 });
      expect(record?.waitReason).toBeUndefined();
      expect(record?.throttles).toBeUndefined();
    }
    // Probing costs at most one refused message per probe interval (1 s here), never one per waiting message.
    expect(quotaRejections()).toBeLessThanOrEqual(Math.ceil(WINDOW_MS / 1_000) + 1);

    await mailer.telemetry.flush();
    const deferred = sandbox.ingestion.events('MailDeferred').filter((e) => e.properties.id === first.id);
    expect(deferred.length).toBeGreaterThanOrEqual(1);
    expect(deferred[0]?.properties).toMatchObject({
      reason: 'exchange-daily-quota',
      errorCode: 'DAILY_QUOTA_EXCEEDED',
      smtpCode: '554',
      attempt: '0',
      transient: 'true',
    });
    const paced = sandbox.ingestion.events('MailPaced').filter((e) => e.properties.id === second.id);
    expect(paced.map((e) => e.properties.reason)).toContain('exchange-daily-quota');
  }, 60_000);

  it('the CLI, which sends inline, reports the quota at once with the classified error', async () => {
    for (let i = 0; i < QUOTA; i++)
      await outsider.sender.send(message(outsider, { subject: `fill ${i}` }), { source: 'cli' });
    await expect(mailer.sender.send(message(mailer, { subject: 'inline' }), { source: 'cli' })).rejects.toMatchObject({
      code: 'DAILY_QUOTA_EXCEEDED',
      transient: true,
    });
  });
});
