/**
 * Reads stay flat however large the tables grow: a batch's counts and a retention run make the same key-bounded
 * queries, reading as many rows, with 100,000 unrelated rows in MailStatus as with none. Its own Azurite, so that the
 * rows it adds are nobody else's.
 */
import { TableClient, TableTransaction } from '@azure/data-tables';
import type { PipelinePolicy } from '@azure/core-rest-pipeline';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { AzuriteInstance } from '../../dev/azurite';
import { BatchBlobStore } from '../../src/notifications/batchBlobStore';
import { BatchStore } from '../../src/notifications/batchStore';
import { IdempotencyStore } from '../../src/outbox/idempotencyStore';
import { batchPartition, uuidv7 } from '../../src/outbox/messageIds';
import { Notifications } from '../../src/notifications/notifications';
import { Retention } from '../../src/outbox/retention';
import type { AppServices } from '../../src/appServices';
import { StatusStore } from '../../src/outbox/statusStore';
import { BATCH_TABLE, STATUS_TABLE } from '../../src/storage/storageClients';
import { drainOutbox, pumpNotifications } from '../support/hostDriver';
import { startStack, type Stack } from '../support/stack';

const DAY_MS = 24 * 60 * 60 * 1000;
const RETENTION_DAYS = 30;

let stack: Stack;
let azurite: AzuriteInstance;
let rt: AppServices;

beforeAll(async () => {
  stack = await startStack({ MAIL_RATE_PER_MINUTE: '6000', MAIL_RETENTION_DAYS: String(RETENTION_DAYS) });
  ({ azurite, app: rt } = stack);
}, 60_000);

afterAll(async () => {
  await stack?.close();
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

describe('with 100,000 unrelated rows in MailStatus', () => {
  /** A table request as Table storage saw it: its filter, and how many entities the answer held. */
  interface Seen {
    filter: string;
    entities: number;
  }

  /** A client of `table` that records every query it sends, through the SDK's own pipeline. */
  function recorded(table: string, seen: Seen[]): TableClient {
    const policy: PipelinePolicy = {
      name: 'recordQueries',
      async sendRequest(request, next) {
        const response = await next(request);
        if (request.method === 'GET') {
          const url = new URL(request.url);
          let entities = 0;
          try {
            entities = ((JSON.parse(response.bodyAsText ?? '{}') as { value?: unknown[] }).value ?? [1]).length;
          } catch {
            entities = 0;
          }
          seen.push({ filter: url.searchParams.get('$filter') ?? `(point read ${url.pathname})`, entities });
        }
        return response;
      },
    };
    return TableClient.fromConnectionString(azurite.connectionString, table, {
      allowInsecureConnection: true,
      additionalPolicies: [{ policy, position: 'perCall' }],
    });
  }

  /** A final record created 40 days ago, for the retention run to find and delete. */
  async function plantExpired(): Promise<string> {
    const at = Date.now() - 40 * DAY_MS;
    const id = uuidv7(at);
    const iso = new Date(at).toISOString();
    await rt.status.create({
      id,
      status: 'sent',
      source: 'http',
      attempts: 1,
      createdAt: iso,
      dueAt: iso,
      sentAt: iso,
      completedAt: iso,
      payloadHash: 'x',
    });
    return id;
  }

  /**
   * Counts a batch's messages and runs retention (as of today: one planted record is past it), recording every query
   * both make.
   */
  async function measure(batchId: string): Promise<{ seen: Seen[]; counts: Record<string, number>; deleted: number }> {
    const planted = await plantExpired();
    const seen: Seen[] = [];
    const status = new StatusStore(recorded(STATUS_TABLE, seen));
    const counts = await status.countByBatch(batchId);
    const report = await retentionAt(0, {
      status,
      batches: new BatchStore(recorded(BATCH_TABLE, seen)),
    }).run();
    expect(await rt.status.get(planted)).toBeUndefined();
    return { seen, counts, deleted: report.messages + report.batches };
  }

  it('batch counts and the retention run read the same key ranges, and as much, as with an empty table', async () => {
    const n = new Notifications({
      config: rt.config,
      renderer: rt.renderer,
      outbox: rt.outbox,
      status: rt.status,
      storage: rt.storage,
    });
    const batchId = `scale-${Date.now()}`;
    await n.submit({
      batchId,
      template: 'notification',
      data: { paragraphs: ['Scale test.'] },
      recipients: ['f0', 'f1', 'f2'].map((name) => ({ to: `${name}@example.com`, data: { title: `Hi ${name}` } })),
    });
    await pumpNotifications(rt, n);
    await drainOutbox(rt);

    const before = await measure(batchId);
    expect(before.counts).toMatchObject({ sent: 3 });

    // 90,000 rows of other batches (900 partitions) and 10,000 single messages created now: none is this batch's,
    // none is past retention.
    const table = TableClient.fromConnectionString(azurite.connectionString, STATUS_TABLE, {
      allowInsecureConnection: true,
    });
    for (let p = 0; p < 900; p++) {
      const partition = batchPartition(`other-${p}`);
      const actions: TableTransaction = new TableTransaction();
      for (let r = 0; r < 100; r++) {
        actions.createEntity({ partitionKey: partition, rowKey: r.toString(16).padStart(32, '0'), status: 'sent' });
      }
      await table.submitTransaction(actions.actions);
    }
    let next = 0;
    await Promise.all(
      Array.from({ length: 32 }, async () => {
        while (next < 10_000) {
          next++;
          await table.createEntity({
            partitionKey: uuidv7(),
            rowKey: 'status',
            status: 'sent',
            createdAt: new Date().toISOString(),
          });
        }
      }),
    );

    const after = await measure(batchId);
    expect(after.counts).toEqual(before.counts);
    expect(after.deleted).toBe(1);
    expect(before.deleted).toBe(1);
    // The same queries (but for the time in the retention cutoff), reading as many entities: the cost does not
    // depend on the rows around them.
    const shape = (seen: Seen[]) =>
      seen.map((s) => ({ ...s, filter: s.filter.replace(/ lt '[^']*'/g, " lt '<cutoff>'") }));
    expect(shape(after.seen)).toEqual(shape(before.seen));
    // And each is bounded by its keys: one partition, or a PartitionKey range below the retention cutoff.
    for (const { filter } of after.seen) {
      expect(filter).toMatch(/^(\(point read |PartitionKey eq |PartitionKey lt )/);
    }
    expect(after.seen.map((s) => s.filter)).toContainEqual(`PartitionKey eq '${batchPartition(batchId)}'`);
  }, 120_000);
});
