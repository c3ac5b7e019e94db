/**
 * Telemetry joined to the Functions invocation, end to end: the built bundle in the dev host, Azurite, the sandbox's
 * Exchange and its ingestion capture. Every event carries its invocation's operation id (the trace id of the
 * invocation's traceparent), a delivery also the accepting request's (`acceptOperationId`), and the app's log lines
 * go to the invocation's logger without an address, subject, body or secret.
 */
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { TableClient } from '@azure/data-tables';
import { QueueClient } from '@azure/storage-queue';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { DEV_ACCOUNT_KEY, startAzurite, type AzuriteInstance } from '../../dev/azurite';
import { startDevHost, type DevHost } from '../../dev/host';
import type { CapturedEvent } from '../../sandbox/ingestion';
import { encodeNotificationMessage } from '../../src/notifications/batchQueue';
import { recordKeys } from '../../src/outbox/messageIds';
import { NOTIFICATIONS_QUEUE, STATUS_TABLE } from '../../src/storage/storageClients';
import { secretScanner } from '../support/secretScan';
import { applySandboxEnv, startSandbox, type Sandbox } from '../support/sandboxMailer';

const ROOT = path.resolve(__dirname, '../..');
/**
 * The exporter sends every 5 s; an event is at the capture well within this, unless its delivery met a transient
 * fault and waits out its back-off first: room for that on a busy CI machine.
 */
const ARRIVAL_MS = 60_000;
// A test may wait ARRIVAL_MS for an event, and then for its message's status.
vi.setConfig({ testTimeout: 3 * ARRIVAL_MS });
const TRACE_ID = /^[0-9a-f]{32}$/;
const SPAN_ID = /^[0-9a-f]{16}$/;

let sandbox: Sandbox;
let azurite: AzuriteInstance;
let host: DevHost;
/** Every line the dev host wrote: its own, and what the functions logged through their invocation context. */
const hostLog: string[] = [];
/** Addresses, subjects and bodies this suite sent: none may appear in a log line. */
const personal: string[] = [];

/** A fresh W3C traceparent, as a caller's tracing would send it. */
function newTraceParent(): { header: string; traceId: string; spanId: string } {
  const traceId = randomBytes(16).toString('hex');
  const spanId = randomBytes(8).toString('hex');
  return { header: `00-${traceId}-${spanId}-01`, traceId, spanId };
}

/** A unique address and subject for one message, remembered for the log scan. */
function mail(label: string): { to: string; subject: string; text: string } {
  const tag = randomBytes(6).toString('hex');
  const m = {
    to: `${label}-${tag}@example.com`,
    subject: `Subject ${label} ${tag}`,
    text: `Body text ${label} ${tag}`,
  };
  personal.push(m.to, m.subject, m.text);
  return m;
}

async function call(
  route: string,
  init: { method?: string; body?: unknown; traceparent?: string } = {},
): Promise<{ status: number; json: Record<string, unknown> }> {
  const response = await fetch(`${host.url}/api/${route}${route.includes('?') ? '&' : '?'}code=${host.functionKey}`, {
    method: init.method ?? 'GET',
    headers: {
      'content-type': 'application/json',
      ...(init.traceparent !== undefined ? { traceparent: init.traceparent } : {}),
    },
    ...(init.body !== undefined ? { body: JSON.stringify(init.body) } : {}),
  });
  const text = await response.text();
  return { status: response.status, json: (text ? JSON.parse(text) : {}) as Record<string, unknown> };
}

/** Waits for the events `match` picks out to be `count` at least, and returns them. */
async function eventsOf(
  name: string,
  match: (e: CapturedEvent) => boolean,
  count = 1,
  timeoutMs = ARRIVAL_MS,
): Promise<CapturedEvent[]> {
  const pick = () => sandbox.ingestion.events(name).filter(match);
  const arrived = await sandbox.ingestion.waitFor(() => pick().length >= count, timeoutMs);
  expect(
    arrived,
    `${count} ${name} event(s); got ${JSON.stringify(sandbox.ingestion.events().map((e) => e.name))}`,
  ).toBe(true);
  return pick();
}

async function waitForStatus(id: string, wanted: string): Promise<void> {
  const deadline = Date.now() + ARRIVAL_MS;
  for (;;) {
    const { json } = await call(`messages/${id}`);
    if (json.status === wanted) return;
    if (Date.now() > deadline) throw new Error(`message ${id} stayed ${String(json.status)}`);
    await new Promise((r) => setTimeout(r, 150));
  }
}

beforeAll(async () => {
  execFileSync(process.execPath, [path.join(ROOT, 'scripts/build.mjs')], { cwd: ROOT });
  // The sandbox's Exchange allows what the app is told it may send, so that no send meets a rate refusal.
  [sandbox, azurite] = await Promise.all([startSandbox({ smtpLimits: { ratePerMinute: 6000 } }), startAzurite()]);
  applySandboxEnv(sandbox);
  host = await startDevHost({
    entry: path.join(ROOT, 'dist/functions/index.js'),
    env: {
      ...sandbox.settings(),
      AzureWebJobsStorage: azurite.connectionString,
      MAIL_RATE_PER_MINUTE: '6000',
      // Far away: the digest runs only when this suite asks.
      MAIL_DIGEST_SCHEDULE: '0 0 0 1 1 *',
      // Every line the app can write, so that the scan sees the most it could leak.
      MAIL_LOG_LEVEL: 'debug',
    },
    port: 0,
    pollIntervalMs: 100,
    log: (line) => hostLog.push(line),
  });
}, 120_000);

afterAll(async () => {
  await host?.stop();
  await Promise.all([sandbox?.close(), azurite?.stop()]);
});

/** Malformed traceparent headers, each built from a valid trace and span id that must not be taken up. */
const MALFORMED: Array<[string, (traceId: string, spanId: string) => string]> = [
  ['upper-case hex', (t, s) => `00-${t.toUpperCase()}-${s}-01`],
  ['an all-zero trace id', (_t, s) => `00-${'0'.repeat(32)}-${s}-01`],
  ['version ff', (t, s) => `ff-${t}-${s}-01`],
  ['version 00 with a fifth field', (t, s) => `00-${t}-${s}-01-extra`],
  ['a short trace id', (t, s) => `00-${t.slice(2)}-${s}-01`],
  // Long, and shaped to make a backtracking pattern work hard; within Node's 16 KB header limit.
  ['8 KB of dashes and hex', (t) => `00-${t}-${'0-'.repeat(4_000)}`],
];

/** One scenario's traffic, started in beforeAll so that every scenario's events ride the same exports. */
type Scenario<T> = Promise<T>;
function started<T>(run: () => Promise<T>): Scenario<T> {
  const promise = run();
  promise.catch(() => undefined); // awaited (and reported) by its test
  return promise;
}

let inline: Scenario<{ id: string; trace: ReturnType<typeof newTraceParent> }>;
let queued: Scenario<{ id: string; trace: ReturnType<typeof newTraceParent> }>;
let digest: Scenario<{ trace: ReturnType<typeof newTraceParent> }>;
let digestTimer: Scenario<void>;
let malformed: Scenario<Array<{ label: string; id: string; status: number; trace: ReturnType<typeof newTraceParent> }>>;
let batch: Scenario<{ batchId: string }>;

beforeAll(() => {
  inline = started(async () => {
    const trace = newTraceParent();
    const response = await call('messages?wait=true', {
      method: 'POST',
      body: mail('inline'),
      traceparent: trace.header,
    });
    expect(response.status).toBe(200);
    return { id: response.json.id as string, trace };
  });
  queued = started(async () => {
    const trace = newTraceParent();
    const response = await call('messages', { method: 'POST', body: mail('queued'), traceparent: trace.header });
    expect(response.status).toBe(202);
    const id = response.json.id as string;
    await waitForStatus(id, 'sent');
    return { id, trace };
  });
  digest = started(async () => {
    const items = await call('digests/activity/items', {
      method: 'POST',
      body: { items: [{ recipient: mail('digest').to, item: { title: 'trace item' } }] },
    });
    expect(items.status).toBe(202);
    const trace = newTraceParent();
    const run = await call('digests/activity/run', { method: 'POST', traceparent: trace.header });
    expect([run.status, run.json.outcome]).toEqual([200, 'completed']);
    return { trace };
  });
  // After the HTTP run (one run of a digest at a time): an item for the timer's run.
  digestTimer = started(async () => {
    await digest;
    const items = await call('digests/activity/items', {
      method: 'POST',
      body: { items: [{ recipient: mail('digest-timer').to, item: { title: 'timer item' } }] },
    });
    expect(items.status).toBe(202);
    await host.runTimer('digestTimer');
  });
  malformed = started(() =>
    Promise.all(
      MALFORMED.map(async ([label, build]) => {
        const trace = newTraceParent();
        const traceparent = build(trace.traceId, trace.spanId);
        const response = await call('messages?wait=true', { method: 'POST', body: mail('malformed'), traceparent });
        return { label, id: response.json.id as string, status: response.status, trace };
      }),
    ),
  );
  batch = started(async () => {
    const sample = JSON.parse(readFileSync(path.join(ROOT, 'templates/notification/sample.json'), 'utf8')) as object;
    const batchId = `trace-${randomBytes(6).toString('hex')}`;
    const recipients = [{ to: mail('batch-1').to }, { to: mail('batch-2').to }, { to: 'not an address' }];
    const client = new QueueClient(azurite.connectionString, NOTIFICATIONS_QUEUE);
    await client.createIfNotExists();
    await client.sendMessage(
      encodeNotificationMessage({ batchId, template: 'notification', data: sample, recipients }),
    );
    host.wakeQueues();
    return { batchId };
  });
});

describe('HTTP: the caller’s traceparent is the operation of the events', () => {
  it('?wait=true: MailSent carries the request’s trace id as operation_Id, the invocation’s span as parent', async () => {
    const { id, trace } = await inline;
    const [sent] = await eventsOf('MailSent', (e) => e.properties.id === id);
    expect(sent!.tags['ai.operation.id']).toBe(trace.traceId);
    // The host's request span (a child of the caller's), not the caller's own span.
    expect(sent!.tags['ai.operation.parentId']).toMatch(SPAN_ID);
    expect(sent!.tags['ai.operation.parentId']).not.toBe(trace.spanId);
    expect(sent!.properties.invocationId).toMatch(/^[0-9a-f-]{36}$/);
    // Accepted and delivered in the same request.
    expect(sent!.properties.acceptOperationId).toBe(trace.traceId);
  });

  it('accept, then delivery by the queue trigger: MailSent is the delivery’s operation, acceptOperationId the request’s', async () => {
    const { id, trace } = await queued;
    const [sent] = await eventsOf('MailSent', (e) => e.properties.id === id);
    expect(sent!.tags['ai.operation.id']).toMatch(TRACE_ID);
    expect(sent!.tags['ai.operation.id']).not.toBe(trace.traceId);
    expect(sent!.properties.acceptOperationId).toBe(trace.traceId);
    expect(sent!.properties.invocationId).toMatch(/^[0-9a-f-]{36}$/);
    // Kept on the status record at accept, where the delivery read it.
    const table = TableClient.fromConnectionString(azurite.connectionString, STATUS_TABLE, {
      allowInsecureConnection: true,
    });
    const { partitionKey, rowKey } = recordKeys(id);
    const entity = await table.getEntity<{ acceptOperationId?: string }>(partitionKey, rowKey);
    expect(entity.acceptOperationId).toBe(trace.traceId);
  });

  it('a digest run over HTTP: DigestRun carries the request’s operation id, each digest’s delivery its acceptOperationId', async () => {
    const { trace } = await digest;
    const [digestRun] = await eventsOf('DigestRun', (e) => e.tags['ai.operation.id'] === trace.traceId);
    expect(digestRun!.properties).toMatchObject({ digest: 'activity', recipients: '1' });
    const [sent] = await eventsOf('MailSent', (e) => e.properties.acceptOperationId === trace.traceId);
    expect(sent!.properties.source).toBe('digest');
    expect(sent!.tags['ai.operation.id']).not.toBe(trace.traceId);
  });

  it('the digest timer: DigestRun in a fresh trace of its own, which its digests’ deliveries carry as acceptOperationId', async () => {
    const { trace } = await digest;
    await digestTimer;
    const [timerRun] = await eventsOf('DigestRun', (e) => e.tags['ai.operation.id'] !== trace.traceId);
    const operationId = timerRun!.tags['ai.operation.id']!;
    expect(operationId).toMatch(TRACE_ID);
    expect(timerRun!.tags['ai.operation.parentId']).toMatch(SPAN_ID);
    expect(timerRun!.properties).toMatchObject({ digest: 'activity', recipients: '1' });
    expect(timerRun!.properties.invocationId).toMatch(/^[0-9a-f-]{36}$/);
    const [sent] = await eventsOf('MailSent', (e) => e.properties.acceptOperationId === operationId);
    expect(sent!.tags['ai.operation.id']).not.toBe(operationId);
  });

  it('a malformed traceparent is ignored (a fresh trace), never a 5xx', async () => {
    const results = await malformed;
    expect(results.map((r) => [r.label, r.status])).toEqual(MALFORMED.map(([label]) => [label, 200]));
    for (const { label, id, trace } of results) {
      const [sent] = await eventsOf('MailSent', (e) => e.properties.id === id);
      const operationId = sent!.tags['ai.operation.id'];
      expect(operationId, label).toMatch(TRACE_ID);
      expect(operationId, label).not.toBe(trace.traceId);
      expect(operationId, label).not.toBe('0'.repeat(32));
    }
  });
});

describe('queue: each invocation is an operation of its own', () => {
  it('a batch on mail-notifications: BatchAccepted and its rejections carry the fan-out’s operation id, its messages it as acceptOperationId', async () => {
    const { batchId } = await batch;
    const [accepted] = await eventsOf('BatchAccepted', (e) => e.properties.batchId === batchId);
    const operationId = accepted!.tags['ai.operation.id']!;
    expect(operationId).toMatch(TRACE_ID);
    expect(accepted!.tags['ai.operation.parentId']).toMatch(SPAN_ID);
    expect(accepted!.properties.invocationId).toMatch(/^[0-9a-f-]{36}$/);
    const [rejected] = await eventsOf('NotificationRecipientRejected', (e) => e.properties.batchId === batchId);
    expect(rejected!.tags['ai.operation.id']).toBe(operationId);
    expect(rejected!.properties.invocationId).toBe(accepted!.properties.invocationId);

    const sent = await eventsOf('MailSent', (e) => e.properties.batchId === batchId, 2);
    for (const event of sent) {
      expect(event.properties.acceptOperationId).toBe(operationId);
      // Each delivery is a queue invocation of its own, in a fresh trace.
      expect(event.tags['ai.operation.id']).toMatch(TRACE_ID);
      expect(event.tags['ai.operation.id']).not.toBe(operationId);
    }
    expect(new Set(sent.map((e) => e.tags['ai.operation.id'])).size).toBe(sent.length);
  });
});

describe('log lines', () => {
  it('go through the invocation’s logger, and hold no address, subject, body or secret', async () => {
    await Promise.all([inline, queued, digest, digestTimer, malformed, batch]);
    const { batchId } = await batch;
    await eventsOf('MailSent', (e) => e.properties.batchId === batchId, 2);
    // Written through context.log: the host shows them under the function that wrote them.
    expect(hostLog.some((l) => /\[messagesPost\] m365-mailer: mail sent/.test(l))).toBe(true);
    expect(hostLog.some((l) => /\[outboxDeliver\] m365-mailer: mail sent/.test(l))).toBe(true);
    expect(
      hostLog.some((l) => /\[notificationsFanout\] m365-mailer: notification batch chunk fanned out/.test(l)),
    ).toBe(true);
    expect(hostLog.some((l) => /\[digestRunPost\] m365-mailer: digest run completed/.test(l))).toBe(true);
    expect(hostLog.filter((l) => l.includes('m365-mailer:')).length).toBeGreaterThan(10);

    const scan = secretScanner([
      ...sandbox.secrets(),
      { kind: 'storage-account-key', label: 'Azurite account key', value: DEV_ACCOUNT_KEY },
      { kind: 'function-key', label: 'the dev host function key', value: host.functionKey },
      ...personal.map((value, i) => ({ kind: 'personal-data', label: `address, subject or body #${i}`, value })),
    ]);
    expect(personal.length).toBeGreaterThan(20);
    expect(scan.findAll({ 'dev host log': hostLog })).toEqual([]);
    // Plain text too: no address of any shape.
    expect(hostLog.filter((l) => /[A-Za-z0-9._-]+@example\.com/.test(l))).toEqual([]);
  });
});
