/**
 * The bookkeeping of digests against Azurite and the sandbox's Exchange: bulk intake in entity group transactions,
 * exact pending counts in GET past 1,000 recipients, a run's counts after a takeover, tombstones that keep a sent
 * item from being stored again for the retention period, and a run without List-Unsubscribe configured.
 */
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import type { ApiRequest, ApiResponse } from '../../src/api/apiTypes';
import { getDigest, postDigestItems, postDigestRun } from '../../src/api/digests';
import { runApi, type ApiHandler } from '../../src/api/runApi';
import type { AppServices } from '../../src/appServices';
import { DigestRunner } from '../../src/digests/digestRun';
import { Digests } from '../../src/digests/digests';
import type { DigestView } from '../../src/digests/digests';
import { drainOutbox } from '../support/hostDriver';
import type { Sandbox } from '../support/sandboxMailer';
import { startApp, startStack, type Stack } from '../support/stack';

const BASE = 'http://127.0.0.1:7071/api';
const HUGE = 1_000_000_000;
const DAY_MS = 24 * 60 * 60 * 1000;

let stack: Stack;
let sandbox: Sandbox;
let rt: AppServices;

beforeAll(async () => {
  stack = await startStack(
    { MAIL_PACING: 'off', MAIL_DIGEST_MAX_ITEMS: '3' },
    { sandbox: { smtpLimits: { ratePerMinute: HUGE, dailyRecipients: HUGE } } },
  );
  ({ sandbox, app: rt } = stack);
});

afterAll(async () => {
  await stack?.close();
});

beforeEach(() => {
  sandbox.smtp.reset();
});

function request(path: string, params: Record<string, string>, body?: unknown, method = 'POST'): ApiRequest {
  const url = `${BASE}/${path}`;
  const text = body === undefined ? undefined : JSON.stringify(body);
  return {
    method,
    url,
    headers: new Headers(text !== undefined ? { 'content-type': 'application/json' } : {}),
    query: new URL(url).searchParams,
    params,
    body: text !== undefined ? new Response(text).body : null,
  };
}

const call = (app: AppServices, handler: ApiHandler, req: ApiRequest): Promise<ApiResponse> =>
  runApi(handler, req, () => app);
const postItems = (body: unknown, app = rt) =>
  call(app, postDigestItems, request('digests/activity/items', { digest: 'activity' }, body));
const view = async (app = rt) =>
  (await call(app, getDigest, request('digests/activity', { digest: 'activity' }, undefined, 'GET')))
    .jsonBody as DigestView;

let n = 0;
const someone = (name: string) => `${name}.${Date.now()}.${++n}@example.com`;
const activity = (title: string) => ({ title });
const digestsFor = (recipient: string) => sandbox.smtp.messages.filter((m) => m.envelope.to.includes(recipient));

/** Runs the digest (nothing else holds it here) and delivers what it accepted. */
async function runAndDeliver(digests: Digests = rt.digests): Promise<void> {
  expect((await digests.run('activity')).outcome).toBe('completed');
  await drainOutbox(rt);
}

/** The recipient's index row as a run reads it. */
async function indexRow(recipient: string) {
  for await (const page of rt.digests.store.pendingRecipients('activity')) {
    const row = page.find((r) => r.recipient === recipient.toLowerCase());
    if (row) return row;
  }
  return undefined;
}

describe('bulk intake', () => {
  it('stores a recipient’s items in transactions of 100; a redelivered bulk, or one holding an old item, stores each once', async () => {
    await runAndDeliver();
    const [to, other] = [someone('bulk'), someone('bulk-other')];
    const items = [
      ...Array.from({ length: 250 }, (_, i) => ({ recipient: to, item: activity(`b${i}`), idempotencyKey: `b-${i}` })),
      ...Array.from({ length: 3 }, (_, i) => ({ recipient: other, item: activity(`o${i}`) })),
    ];
    expect((await postItems({ items })).jsonBody).toMatchObject({ accepted: 253, duplicates: 0 });
    expect((await postItems({ items })).jsonBody).toMatchObject({ accepted: 0, duplicates: 253 });
    // A transaction with one item already stored fails as a whole: its new items are still stored, once.
    const mixed = [...items.slice(0, 99), { recipient: to, item: activity('new'), idempotencyKey: 'b-new' }];
    expect((await postItems({ items: mixed })).jsonBody).toMatchObject({ accepted: 1, duplicates: 99 });
    expect(await rt.digests.store.countItems('activity', to)).toBe(251);
    expect((await indexRow(to))?.items).toBe(251);
    expect((await indexRow(other))?.items).toBe(3);
  });
});

describe('tombstones', () => {
  it('an item re-sent after its digest went out is a duplicate until the retention period ends, then new again', async () => {
    await runAndDeliver();
    const to = someone('tomb');
    const item = { recipient: to, item: activity('once'), idempotencyKey: 'order-1' };
    await postItems(item);
    await runAndDeliver();
    expect(digestsFor(to)).toHaveLength(1);
    // The row stays for the tombstone, with nothing pending: GET does not count it.
    const row = await indexRow(to);
    expect(row?.items).toBe(0);
    expect(Date.parse(row?.tombstonesUntil ?? '')).toBeGreaterThan(Date.now() + rt.config.retentionMs - DAY_MS);
    expect((await postItems(item)).jsonBody).toMatchObject({ accepted: 0, duplicates: 1 });
    expect((await view()).pendingItems).toBe(0);
    await runAndDeliver();
    expect(digestsFor(to)).toHaveLength(1);
    // A run after the retention period deletes the tombstone and the row; the item is then new again.
    const later = new Digests({
      config: rt.config,
      renderer: rt.renderer,
      outbox: rt.outbox,
      storage: rt.storage,
      now: () => Date.now() + rt.config.retentionMs + DAY_MS,
    });
    await runAndDeliver(later);
    expect(await indexRow(to)).toBeUndefined();
    expect((await postItems(item)).jsonBody).toMatchObject({ accepted: 1, duplicates: 0 });
    await runAndDeliver();
    expect(digestsFor(to)).toHaveLength(2);
  });
});

describe('run counts', () => {
  it('a count that drifted (a run died between retiring items and counting them) is set right by the next run', async () => {
    await runAndDeliver();
    const to = someone('drift');
    await postItems({ items: ['d1', 'd2'].map((t) => ({ recipient: to, item: activity(t) })) });
    const dying = new DigestRunner({
      config: rt.config,
      store: Object.assign(Object.create(rt.digests.store) as typeof rt.digests.store, {
        settleRecipient: () => Promise.reject(new Error('killed before the count')),
      }),
      outbox: rt.outbox,
    });
    await expect(dying.run('activity')).rejects.toThrow('killed before the count');
    expect((await indexRow(to))?.items).toBe(2); // too high: both items are tombstones now
    const record = await rt.digests.store.getRun('activity');
    await rt.digests.store.updateRun(record!, { leaseUntil: new Date(Date.now() - 1).toISOString() });
    await runAndDeliver();
    expect((await indexRow(to))?.items).toBe(0);
    expect(digestsFor(to)).toHaveLength(1);
  });

  it('a run taken over after its instance died counts the recipients the dead run completed', async () => {
    // Regression: the counts of a run taken over left out what its predecessor did after its last checkpoint.
    await runAndDeliver();
    const recipients = [someone('take-a'), someone('take-b'), someone('take-c')];
    await postItems({
      items: recipients.flatMap((to, i) =>
        Array.from({ length: i + 1 }, (_, k) => ({ recipient: to, item: activity(`${i}-${k}`) })),
      ),
    });
    // A runner that dies after retiring the items of one recipient: the other two are accepted but keep their items.
    let retired = 0;
    const dying = new DigestRunner({
      config: rt.config,
      store: Object.assign(Object.create(rt.digests.store) as typeof rt.digests.store, {
        retireItems: async (...args: Parameters<typeof rt.digests.store.retireItems>) => {
          if (retired++ > 0) throw new Error('killed');
          return rt.digests.store.retireItems(...args);
        },
      }),
      outbox: rt.outbox,
    });
    await expect(dying.run('activity')).rejects.toThrow('killed');
    const record = await rt.digests.store.getRun('activity');
    expect(record?.recipients).toBe(0); // no checkpoint was written
    await rt.digests.store.updateRun(record!, { leaseUntil: new Date(Date.now() - 1).toISOString() });
    const resumed = await rt.digests.run('activity');
    expect(resumed.outcome).toBe('completed');
    expect(resumed.run).toMatchObject({ recipients: 3, items: 6, failed: 0 });
    for (const to of recipients) expect((await indexRow(to))?.items).toBe(0);
    await drainOutbox(rt);
    for (const to of recipients) expect(digestsFor(to)).toHaveLength(1);
  });
});

describe('without MAIL_UNSUBSCRIBE_BASE_URL', () => {
  it('a run fails naming the setting, in the POST answer, GET lastRun and DigestRun, and keeps every item', async () => {
    await runAndDeliver();
    const unconfigured = await startApp(stack, { MAIL_PACING: 'off', MAIL_UNSUBSCRIBE_BASE_URL: '' });
    try {
      const to = someone('nolinks');
      await postItems({ recipient: to, item: activity('kept') }, unconfigured.app);
      const answer = await call(
        unconfigured.app,
        postDigestRun,
        request('digests/activity/run', { digest: 'activity' }),
      );
      expect(answer.status).toBe(500);
      expect(answer.jsonBody).toMatchObject({
        outcome: 'failed',
        run: { status: 'failed', errorCode: 'UNSUBSCRIBE_NOT_CONFIGURED' },
      });
      const got = await view(unconfigured.app);
      expect(got.lastRun).toMatchObject({ status: 'failed', errorCode: 'UNSUBSCRIBE_NOT_CONFIGURED' });
      expect(got.lastRun?.error).toContain('MAIL_UNSUBSCRIBE_BASE_URL');
      expect(got.pendingItems).toBeGreaterThanOrEqual(1);
      expect(await rt.digests.store.countItems('activity', to)).toBe(1);
      await unconfigured.mailer.telemetry.flush();
      const events = sandbox.ingestion.events('DigestRun');
      expect(events[events.length - 1]?.properties).toMatchObject({
        digest: 'activity',
        errorCode: 'UNSUBSCRIBE_NOT_CONFIGURED',
      });
      expect(unconfigured.logs.join('\n')).toContain('UNSUBSCRIBE_NOT_CONFIGURED');
      // Configured again: the next run sends the item kept.
      await runAndDeliver();
      expect(digestsFor(to)).toHaveLength(1);
      expect((await view()).lastRun?.status).toBe('completed');
    } finally {
      await unconfigured.close();
    }
  });
});

describe('GET /api/digests/{digest}', () => {
  it('counts pending items exactly past 1,000 recipients, without reading their items', async () => {
    // Regression: pendingItems counted the items of the first 1,000 recipients only (pendingItemsExact: false).
    await runAndDeliver();
    expect(await view()).toMatchObject({ pendingRecipients: 0, pendingItems: 0 });
    const tag = someone('many');
    const many = Array.from({ length: 1_000 }, (_, i) => ({ recipient: `r${i}.${tag}`, item: activity('one') }));
    expect((await postItems({ items: many })).jsonBody).toMatchObject({ accepted: 1_000 });
    const last = `last.${tag}`;
    await postItems({ items: ['x', 'y', 'z'].map((t) => ({ recipient: last, item: activity(t) })) });
    const got = await view();
    expect(got).toMatchObject({ pendingRecipients: 1_001, pendingItems: 1_003, pendingItemsExact: true });
  }, 300_000);
});
