/**
 * Digest storage in the table MailDigestItems. Every read is by partition (a key range), never a table scan:
 *
 * - Recipients index `digest~<digest>`: one row per recipient with pending items, row key the address lower-cased
 *   and URI-encoded (Table keys refuse `/ \ # ?`, which an address may hold). A run reads it in pages.
 * - Items `item~<digest>~<encoded recipient>`: one partition per digest and recipient, row key a hash of the item's
 *   idempotency key (or of its content), so that a redelivered item is the same row and stored once. When it was
 *   received is the storage service's own `Timestamp` of the insert (items are never updated): a run takes the items
 *   committed before its run record was, by the service's clock (see digestRun.ts).
 * - Run record `run~<digest>`, row `run`: the digest's current or last run, written under its ETag.
 *
 * Intake writes the item, then upserts its recipient's index row (every write changes the row's ETag): a run that
 * drops an index row does so only with the ETag it read before it read the items, so an item stored meanwhile keeps
 * (or re-creates) its index row.
 */
import { odata, type TableClient, type TableEntity, type TableEntityResult } from '@azure/data-tables';
import { catchStatus } from '../storage/storageClients';
import {
  deleteEntity,
  insertEntity,
  insertValue,
  readEntity,
  replaceWithChanges,
  type Changes,
} from '../storage/tableEntity';
import type { DigestItemInput } from './digestRequest';

/** Rows read per page of the recipients index or of a recipient's items. */
export const DIGEST_PAGE_SIZE = 1_000;
/** Entities per entity group transaction (the Table service's limit). */
const TRANSACTION_SIZE = 100;

export const RUN_ROW = 'run';

/** How a recipient is written in row and partition keys. */
export function recipientKey(recipient: string): string {
  return encodeURIComponent(recipient.toLowerCase());
}

export function indexPartition(digest: string): string {
  return `digest~${digest}`;
}

export function itemsPartition(digest: string, recipient: string): string {
  return `item~${digest}~${recipientKey(recipient)}`;
}

export function runPartition(digest: string): string {
  return `run~${digest}`;
}

/** A pending recipient, as the index lists it. */
export interface PendingRecipient {
  recipient: string;
  etag: string;
}

/** A stored item, as a run reads it. */
export interface StoredItem {
  rowKey: string;
  /** When the service committed it (ISO 8601, the service's clock). */
  receivedAt: string;
  /** Milliseconds since the epoch of receivedAt. */
  receivedMs: number;
  /** The item's JSON as stored. */
  json: string;
}

export type RunStatus = 'running' | 'completed';

/** The run record of a digest: the current run, or the last one. */
export interface DigestRunRecord {
  digest: string;
  status: RunStatus;
  runId: string;
  startedAt: string;
  /** A run whose lease ran out (its instance died) is taken over by the next run, with the same period. */
  leaseUntil: string;
  /** The end of the previous period; absent for a digest's first run. */
  periodStart?: string;
  /** Fixed once per run: items received up to it are in this run's digests. Kept by a run taken over. */
  periodEnd?: string;
  recipients: number;
  items: number;
  omitted: number;
  /** Recipients whose digest could not be rendered or accepted (their items stay pending). */
  failed: number;
  completedAt?: string;
  durationMs?: number;
}

function runToEntity(r: DigestRunRecord): TableEntity {
  return { partitionKey: runPartition(r.digest), rowKey: RUN_ROW, ...r };
}

const RUN_FIELDS = [
  'digest',
  'status',
  'runId',
  'startedAt',
  'leaseUntil',
  'periodStart',
  'periodEnd',
  'recipients',
  'items',
  'omitted',
  'failed',
  'completedAt',
  'durationMs',
] as const;

function runFromEntity(e: Record<string, unknown> & { etag: string }): DigestRunRecord & { etag: string } {
  const out: Record<string, unknown> = { etag: e.etag };
  for (const field of RUN_FIELDS) if (e[field] !== undefined && e[field] !== null) out[field] = e[field];
  return out as unknown as DigestRunRecord & { etag: string };
}

export class DigestStore {
  constructor(private readonly table: TableClient) {}

  /**
   * Stores `input` for `digest`: the item (once: a redelivery finds its row), then its recipient's index row.
   * Returns false when the item was already stored.
   */
  async addItems(digest: string, recipient: string, inputs: readonly DigestItemInput[], keys: readonly string[]) {
    const partitionKey = itemsPartition(digest, recipient);
    const stored = await Promise.all(
      inputs.map(async (input, i) => {
        const etag = await insertEntity(this.table, {
          partitionKey,
          rowKey: keys[i] as string,
          item: JSON.stringify(input.item),
        });
        return etag !== undefined;
      }),
    );
    // After the items, always (a redelivery too): an item never lies in storage without its index row for long.
    await this.table.upsertEntity(
      { partitionKey: indexPartition(digest), rowKey: recipientKey(recipient), recipient },
      'Replace',
    );
    return stored;
  }

  /** The pending recipients of `digest`, a page at a time. */
  async *pendingRecipients(digest: string, pageSize = DIGEST_PAGE_SIZE): AsyncGenerator<PendingRecipient[]> {
    const pages = this.table
      .listEntities<{ recipient: string }>({
        queryOptions: { filter: odata`PartitionKey eq ${indexPartition(digest)}`, select: ['recipient'] },
      })
      .byPage({ maxPageSize: pageSize });
    for await (const page of pages) {
      yield page.map((e) => ({ recipient: e.recipient, etag: e.etag }));
    }
  }

  /** Every item of a recipient (pages read one after the other; a recipient's items are few). */
  async items(digest: string, recipient: string): Promise<StoredItem[]> {
    const out: StoredItem[] = [];
    const pages = this.table
      .listEntities<{ item: string }>({
        queryOptions: { filter: odata`PartitionKey eq ${itemsPartition(digest, recipient)}` },
      })
      .byPage({ maxPageSize: DIGEST_PAGE_SIZE });
    for await (const page of pages) {
      for (const e of page as Array<TableEntityResult<{ item: string }>>) {
        const receivedAt = String(e.timestamp ?? '');
        out.push({ rowKey: e.rowKey ?? '', receivedAt, receivedMs: Date.parse(receivedAt), json: e.item });
      }
    }
    return out;
  }

  /** How many items a recipient has pending (row keys only). */
  async countItems(digest: string, recipient: string): Promise<number> {
    let n = 0;
    const pages = this.table
      .listEntities({
        queryOptions: { filter: odata`PartitionKey eq ${itemsPartition(digest, recipient)}`, select: ['RowKey'] },
      })
      .byPage({ maxPageSize: DIGEST_PAGE_SIZE });
    for await (const page of pages) n += page.length;
    return n;
  }

  /** True when a recipient has any item left. */
  async hasItems(digest: string, recipient: string): Promise<boolean> {
    const pages = this.table
      .listEntities({
        queryOptions: { filter: odata`PartitionKey eq ${itemsPartition(digest, recipient)}`, select: ['RowKey'] },
      })
      .byPage({ maxPageSize: 1 });
    for await (const page of pages) return page.length > 0;
    return false;
  }

  /** Deletes the items by row key, in transactions of 100; an item already gone (another run) is no error. */
  async deleteItems(digest: string, recipient: string, rowKeys: readonly string[]): Promise<void> {
    const partitionKey = itemsPartition(digest, recipient);
    for (let i = 0; i < rowKeys.length; i += TRANSACTION_SIZE) {
      const slice = rowKeys.slice(i, i + TRANSACTION_SIZE);
      const done = await catchStatus(
        async () => {
          await this.table.submitTransaction(slice.map((rowKey) => ['delete', { partitionKey, rowKey }]));
          return true;
        },
        [404],
        false,
      );
      if (!done) {
        // One of them was deleted by an overlapping run: delete the rest one by one.
        for (const rowKey of slice) await deleteEntity(this.table, partitionKey, rowKey, '*');
      }
    }
  }

  /** Drops a recipient's index row if nobody has written it since `etag` was read. */
  dropRecipient(digest: string, recipient: string, etag: string): Promise<boolean> {
    return deleteEntity(this.table, indexPartition(digest), recipientKey(recipient), etag);
  }

  async getRun(digest: string): Promise<(DigestRunRecord & { etag: string }) | undefined> {
    const e = await readEntity<Record<string, unknown>>(this.table, runPartition(digest), RUN_ROW);
    return e ? runFromEntity(e) : undefined;
  }

  /** The run record's Timestamp: when the service committed its last write (its own clock). */
  async runTimestamp(digest: string): Promise<string> {
    const e = await this.table.getEntity(runPartition(digest), RUN_ROW);
    return String(e.timestamp);
  }

  createRun(record: DigestRunRecord): Promise<(DigestRunRecord & { etag: string }) | undefined> {
    return insertValue(this.table, record, runToEntity);
  }

  updateRun(
    current: DigestRunRecord & { etag: string },
    changes: Changes<DigestRunRecord>,
  ): Promise<(DigestRunRecord & { etag: string }) | undefined> {
    return replaceWithChanges(this.table, current, changes, runToEntity);
  }
}
