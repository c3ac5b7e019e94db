/**
 * Scheduled digests against Azurite and the sandbox's Exchange: intake over HTTP (one item, bulk with rejections,
 * idempotency), the mail-digest-items queue and its poison path, a run that sends one digest per recipient through
 * the outbox, the period cut, a rerun after part of the items were deleted, overlapping runs, GET, DigestRun
 * telemetry at the sandbox's ingestion capture.
 */
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import type { ApiRequest, ApiResponse } from '../../src/api/apiTypes';
import { getDigest, postDigestItems, postDigestRun } from '../../src/api/digests';
import { runApi, type ApiHandler } from '../../src/api/runApi';
import type { AppServices } from '../../src/appServices';
import { MAX_ITEMS_PER_REQUEST, MAX_ITEM_JSON_CHARS } from '../../src/digests/digestRequest';
import { digestIdempotencyKey, digestList, DigestRunner } from '../../src/digests/digestRun';
import { itemsPartition } from '../../src/digests/digestStore';
import { Digests } from '../../src/digests/digests';
import { IdempotencyStore } from '../../src/outbox/idempotencyStore';
import { drainOutbox } from '../support/hostDriver';
import type { Sandbox, TestMailer } from '../support/sandboxMailer';
import { startStack, type Stack } from '../support/stack';

const BASE = 'http://127.0.0.1:7071/api';
const HUGE = 1_000_000_000;

let stack: Stack;
let sandbox: Sandbox;
let mailer: TestMailer;
let rt: AppServices;

beforeAll(async () => {
  stack = await startStack(
    { MAIL_PACING: 'off', MAIL_DIGEST_MAX_ITEMS: '3' },
    { sandbox: { smtpLimits: { ratePerMinute: HUGE, dailyRecipients: HUGE } } },
  );
  ({ sandbox, mailer, app: rt } = stack);
});

afterAll(async () => {
  await stack?.close();
});

beforeEach(() => {
  sandbox.smtp.reset();
});

function request(path: string, params: Record<string, string>, body?: unknown, method = 'POST'): ApiRequest {
  const url = `${BASE}/${path}`;
  const text = body === undefined ? undefined : typeof body === 'string' ? body : JSON.stringify(body);
  return {
    method,
    url,
    headers: new Headers(text !== undefined ? { 'content-type': 'application/json' } : {}),
    query: new URL(url).searchParams,
    params,
    body: text !== undefined ? new Response(text).body : null,
  };
}

const call = (handler: ApiHandler, req: ApiRequest): Promise<ApiResponse> => runApi(handler, req, () => rt);
const postItems = (digest: string, body: unknown) =>
  call(postDigestItems, request(`digests/${digest}/items`, { digest }, body));
const runDigest = (digest: string) => call(postDigestRun, request(`digests/${digest}/run`, { digest }, undefined));

interface ErrorJson {
  error: { code: string; details: Array<{ path: string; message: string }> };
}

let n = 0;
/** A fresh recipient per call: tests share the digest `activity`. */
const someone = (name: string) => `${name}.${Date.now()}.${++n}@example.com`;
const activity = (title: string) => ({ title, detail: `detail of ${title}` });

/** The digests the sandbox received for `recipient`. */
const digestsFor = (recipient: string) => sandbox.smtp.messages.filter((m) => m.envelope.to.includes(recipient));

/** Runs the digest until it is not busy, then delivers what it accepted. */
async function runAndDeliver(digests: Digests = rt.digests): Promise<void> {
  const report = await digests.run('activity');
  expect(report.outcome).toBe('completed');
  await drainOutbox(rt);
}

describe('intake', () => {
  it('stores one item (202), and the same item again is a duplicate stored once', async () => {
    const to = someone('one');
    const first = await postItems('activity', { recipient: to, item: activity('a'), idempotencyKey: 'k-1' });
    expect(first.status).toBe(202);
    expect(first.jsonBody).toMatchObject({ digest: 'activity', accepted: 1, duplicates: 0, rejected: 0 });
    const again = await postItems('activity', {
      recipient: to.toUpperCase(),
      item: activity('a'),
      idempotencyKey: 'k-1',
    });
    expect(again.jsonBody).toMatchObject({ accepted: 0, duplicates: 1 });
    // Without a key, the content is the identity.
    await postItems('activity', { recipient: to, item: activity('b') });
    expect((await postItems('activity', { recipient: to, item: activity('b') })).jsonBody).toMatchObject({
      duplicates: 1,
    });
    expect(await rt.digests.store.countItems('activity', to)).toBe(2);
  });

  it('bulk: each bad item is a rejection naming its field, the good ones are stored', async () => {
    const to = someone('bulk');
    const response = await postItems('activity', {
      items: [
        { recipient: to, item: activity('1') },
        { recipient: 'not an address', item: activity('2') },
        { recipient: to, item: 'text' },
        { recipient: to, item: activity('4'), extra: true },
        { recipient: to, item: { big: 'x'.repeat(MAX_ITEM_JSON_CHARS) } },
        { recipient: to, item: activity('6'), idempotencyKey: 'bad key with spaces' },
      ],
    });
    expect(response.status).toBe(202);
    const body = response.jsonBody as {
      accepted: number;
      rejected: number;
      rejections: Array<{ index: number; field: string }>;
    };
    expect(body.accepted).toBe(1);
    expect(body.rejected).toBe(5);
    expect(body.rejections.map((r) => [r.index, r.field])).toEqual([
      [1, 'items[1].recipient'],
      [2, 'items[2].item'],
      [3, 'items[3].extra'],
      [4, 'items[4].item'],
      [5, 'items[5].idempotencyKey'],
    ]);
  });

  it('refuses a bad digest name (400), an unknown digest (404 naming it), a bad single item (400 naming the field), too many items', async () => {
    const bad = await postItems('Bad_Name', { recipient: 'a@example.com', item: {} });
    expect(bad.status).toBe(400);
    expect((bad.jsonBody as ErrorJson).error.details[0]?.path).toBe('digest');
    const unknown = await postItems('nosuch', { recipient: 'a@example.com', item: {} });
    expect(unknown.status).toBe(404);
    expect(JSON.stringify(unknown.jsonBody)).toContain('nosuch');
    const single = await postItems('activity', { recipient: 'a@example.com' });
    expect(single.status).toBe(400);
    expect((single.jsonBody as ErrorJson).error.details[0]?.path).toBe('item');
    const many = await postItems('activity', {
      items: Array.from({ length: MAX_ITEMS_PER_REQUEST + 1 }, (_, i) => ({ recipient: 'a@example.com', item: { i } })),
    });
    expect(many.status).toBe(400);
    expect((many.jsonBody as ErrorJson).error.details[0]?.path).toBe('items');
    const long = await postItems('a'.repeat(58), { recipient: 'a@example.com', item: {} });
    expect(long.status).toBe(400);
  });

  it('the queue: a valid message is stored once however often it comes; a bad one goes to the poison queue with its reason', async () => {
    const to = someone('queue');
    const message = Buffer.from(JSON.stringify({ digest: 'activity', recipient: to, item: activity('q') })).toString(
      'base64',
    );
    expect(await rt.digests.handleQueueMessage(message)).toEqual({ outcome: 'stored', digest: 'activity' });
    expect(await rt.digests.handleQueueMessage(message)).toEqual({ outcome: 'duplicate', digest: 'activity' });
    expect(await rt.digests.store.countItems('activity', to)).toBe(1);

    await rt.storage.digestItemsPoisonQueue.clearMessages();
    const bad = await rt.digests.handleQueueMessage({ digest: 'activity', recipient: to, item: [1] });
    expect(bad).toMatchObject({ outcome: 'rejected', error: { code: 'INVALID_MESSAGE', transient: false } });
    const unknown = await rt.digests.handleQueueMessage({ digest: 'nosuch', recipient: to, item: {} });
    expect(unknown).toMatchObject({ outcome: 'rejected', error: { code: 'NOT_FOUND' } });
    expect(await rt.digests.handleQueueMessage('not json at all')).toMatchObject({ outcome: 'rejected' });
    const poisoned = (await rt.storage.digestItemsPoisonQueue.receiveMessages({ numberOfMessages: 10 }))
      .receivedMessageItems;
    expect(poisoned).toHaveLength(3);
    for (const m of poisoned) expect((await rt.digests.markPoisoned(m.messageText)).outcome).toBe('rejected');
    // A valid message the host gave up on (storage was down) is stored by the poison handler.
    const late = someone('late');
    expect(await rt.digests.markPoisoned({ digest: 'activity', recipient: late, item: activity('l') })).toEqual({
      outcome: 'stored',
      digest: 'activity',
    });
  });
});

describe('the run', () => {
  it('sends each recipient one digest of its items (at most MAIL_DIGEST_MAX_ITEMS listed), deletes them, and GET reports the run', async () => {
    await runAndDeliver(); // whatever earlier tests left
    const a = someone('a');
    const b = someone('b');
    await postItems('activity', {
      items: [
        ...['a1', 'a2', 'a3', 'a4', 'a5'].map((t) => ({ recipient: a, item: activity(t) })),
        { recipient: b, item: activity('b1') },
      ],
    });
    const before = await call(getDigest, request('digests/activity', { digest: 'activity' }, undefined, 'GET'));
    expect(before.jsonBody).toMatchObject({ digest: 'activity', pendingRecipients: 2, pendingItems: 6 });

    const response = await runDigest('activity');
    expect(response.status).toBe(200);
    expect(response.jsonBody).toMatchObject({
      outcome: 'completed',
      run: { status: 'completed', recipients: 2, items: 6, omitted: 2 },
    });
    await drainOutbox(rt);
    const [toA] = digestsFor(a);
    expect(digestsFor(a)).toHaveLength(1);
    expect(toA?.parsed.subject).toBe('Your daily activity: 5 new');
    expect(toA?.parsed.text).toContain('- a1');
    expect(toA?.parsed.text).toContain('- a3');
    expect(toA?.parsed.text).not.toContain('- a4');
    expect(toA?.parsed.text).toContain('and 2 more not listed');
    expect(toA?.parsed.html).toContain('a2');
    expect(digestsFor(b)).toHaveLength(1);

    const after = await call(getDigest, request('digests/activity', { digest: 'activity' }, undefined, 'GET'));
    expect(after.jsonBody).toMatchObject({
      pendingRecipients: 0,
      pendingItems: 0,
      lastRun: { status: 'completed', recipients: 2, items: 6 },
    });
    // Nothing pending: the next run sends nothing.
    await runAndDeliver();
    expect(digestsFor(a)).toHaveLength(1);
  });

  it('a digest is bulk mail: List-Unsubscribe for its list digest-activity; a suppressed recipient gets none, recorded suppressed, items consumed', async () => {
    await runAndDeliver();
    const to = someone('listed');
    const off = someone('unsubscribed');
    await postItems('activity', {
      items: [
        { recipient: to, item: activity('kept') },
        { recipient: off, item: activity('suppressed') },
      ],
    });
    await rt.suppressions.add({
      address: off,
      list: digestList('activity'),
      source: 'api',
      createdAt: new Date().toISOString(),
    });
    const report = await rt.digests.run('activity');
    expect(report.outcome).toBe('completed');
    await drainOutbox(rt);

    const [message] = digestsFor(to);
    expect(message, 'the listed recipient got a digest').toBeDefined();
    const header = (name: string) =>
      message!.parsed.headers
        .find((h) => h.key === name)
        ?.value?.toString()
        .replace(/\s+/g, ' ');
    expect(header('list-unsubscribe-post')).toBe('List-Unsubscribe=One-Click');
    expect(header('list-unsubscribe')).toMatch(
      /^<http:\/\/127\.0\.0\.1:7071\/api\/unsubscribe\?t=[A-Za-z0-9_.-]+>, <mailto:[^>]+>$/,
    );
    expect(digestsFor(off)).toHaveLength(0);
    expect(await rt.digests.store.countItems('activity', off)).toBe(0);
    const key = digestIdempotencyKey('activity', off, report.run!.periodEnd!);
    const claim = await new IdempotencyStore(rt.storage.idempotencyTable).claim(rt.config.sender, key, {
      id: 'probe',
      payloadHash: 'probe',
      createdAt: new Date().toISOString(),
    });
    expect(claim.created).toBe(false);
    const record = await rt.status.get(claim.created ? '' : claim.existing.id);
    expect(record).toMatchObject({ source: 'digest', status: 'suppressed' });
  });

  it('the outbox record is a digest: source digest, template digest-activity, a key without the address', async () => {
    const to = someone('rec');
    await postItems('activity', { recipient: to, item: activity('r') });
    const report = await rt.digests.run('activity');
    const key = digestIdempotencyKey('activity', to, report.run!.periodEnd!);
    expect(key).not.toContain(to);
    // The key was claimed by the digest's accept: claiming it again answers with its message.
    const claim = await new IdempotencyStore(rt.storage.idempotencyTable).claim(rt.config.sender, key, {
      id: 'probe',
      payloadHash: 'probe',
      createdAt: new Date().toISOString(),
    });
    expect(claim.created).toBe(false);
    const id = claim.created ? '' : claim.existing.id;
    const record = await rt.status.get(id);
    expect(record).toMatchObject({ source: 'digest', template: 'digest-activity' });
    await drainOutbox(rt);
  });

  it('a rerun of the same period after part of the items were deleted sends nothing again and deletes the rest', async () => {
    await runAndDeliver();
    const to = someone('rerun');
    await postItems('activity', { items: ['x1', 'x2', 'x3'].map((t) => ({ recipient: to, item: activity(t) })) });
    // A runner that dies after retiring the first item: the outbox entry exists, two items are left.
    const failing = new DigestRunner({
      config: rt.config,
      store: Object.assign(Object.create(rt.digests.store) as typeof rt.digests.store, {
        retireItems: async (...args: Parameters<typeof rt.digests.store.retireItems>) => {
          const [digest, recipient, sent, sentAt, expired] = args;
          await rt.digests.store.retireItems(digest, recipient, sent.slice(0, 1), sentAt, expired);
          throw new Error('killed while deleting');
        },
      }),
      outbox: rt.outbox,
    });
    await expect(failing.run('activity')).rejects.toThrow('killed while deleting');
    expect(await rt.digests.store.countItems('activity', to)).toBe(2);
    // The run record still holds the lease: another run now is busy.
    expect((await rt.digests.run('activity')).outcome).toBe('busy');
    // Its lease runs out: the next run takes it over with the same period.
    const record = await rt.digests.store.getRun('activity');
    await rt.digests.store.updateRun(record!, { leaseUntil: new Date(Date.now() - 1).toISOString() });
    const resumed = await rt.digests.run('activity');
    expect(resumed.outcome).toBe('completed');
    expect(resumed.run?.periodEnd).toBe(record?.periodEnd);
    expect(await rt.digests.store.countItems('activity', to)).toBe(0);
    await drainOutbox(rt);
    expect(digestsFor(to)).toHaveLength(1);
    expect(digestsFor(to)[0]?.parsed.text).toContain('- x3');
  });

  it('items received after the period end wait for the next run; two runs at once make one digest per recipient', async () => {
    await runAndDeliver();
    const to = someone('late');
    await postItems('activity', { recipient: to, item: activity('first') });
    // Two runs at once: one of them holds the lease, the other is busy.
    const [one, two] = await Promise.all([rt.digests.run('activity'), rt.digests.run('activity')]);
    expect([one.outcome, two.outcome].sort()).toEqual(['busy', 'completed']);
    // An item stored with a Timestamp after the period end stays.
    const periodEnd = Date.parse((one.run ?? two.run)!.periodEnd!);
    await postItems('activity', { recipient: to, item: activity('second') });
    const { items } = await rt.digests.store.items('activity', to);
    expect(items.length).toBe(1);
    expect(items.every((i) => i.receivedMs > periodEnd)).toBe(true);
    await drainOutbox(rt);
    expect(digestsFor(to)).toHaveLength(1);
    expect(digestsFor(to)[0]?.parsed.text).not.toContain('second');
    await runAndDeliver();
    expect(digestsFor(to)).toHaveLength(2);
    expect(digestsFor(to)[1]?.parsed.text).toContain('- second');
    expect(digestsFor(to)[1]?.parsed.text).not.toContain('- first');
  });

  it('records DigestRun telemetry with counts and no address', async () => {
    await runAndDeliver();
    const to = someone('tele');
    await postItems('activity', { items: ['t1', 't2'].map((t) => ({ recipient: to, item: activity(t) })) });
    await runAndDeliver();
    await mailer.telemetry.flush();
    const events = sandbox.ingestion.events('DigestRun');
    const last = events[events.length - 1];
    expect(last?.properties).toMatchObject({ digest: 'activity', recipients: '1', items: '2', omitted: '0' });
    expect(JSON.stringify(events)).not.toContain('@example.com');
  });

  it('the items partition is per digest and recipient (no scan needed to read one recipient)', () => {
    expect(itemsPartition('activity', 'A+b/c#d?e@Example.com')).toBe('item~activity~a%2Bb%2Fc%23d%3Fe%40example.com');
  });
});
