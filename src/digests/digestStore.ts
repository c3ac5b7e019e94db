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
import {
  odata,
  type TableClient,
  type TableEntity,
  type TableEntityResult,
  type TransactionAction,
} from '@azure/data-tables';
import { catchStatus } from '../storage/storageClients';
import {
  deleteEntity,
  insertEntity,
  insertValue,
  readEntity,
  replaceEntity,
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

/** The run journal of a period: one row per recipient whose digest a run of that period accepted. */
export function donePartition(digest: string, periodEnd: string): string {
  return `done~${digest}~${periodEnd}`;
}

/** A recipient's index row as stored. */
interface IndexRow {
  recipient: string;
  /** Items pending; absent on rows written before the counts. */
  items?: number;
  /** The row is kept (with no items pending) until the recipient's tombstones run out. */
  tombstonesUntil?: string;
}

function indexEntity(digest: string, recipient: string): TableEntity<IndexRow> {
  return { partitionKey: indexPartition(digest), rowKey: recipientKey(recipient), recipient };
}

/** Replaces the entity if nobody has written or deleted it since `etag` was read; undefined otherwise (412, 404). */
async function replaceOrGone(table: TableClient, entity: TableEntity, etag: string): Promise<string | undefined> {
  return catchStatus(() => replaceEntity(table, entity, etag), [404], undefined);
}

/** A pending recipient, as the index lists it. */
export interface PendingRecipient {
  recipient: string;
  etag: string;
  /** Items pending, as counted by intake and runs; absent on rows written before the counts. */
  items?: number;
  /** Set when the recipient has no items pending but tombstones kept until then (ISO 8601). */
  tombstonesUntil?: string;
}

/** What is left of an item sent in a digest: its row key (the idempotency key's hash), for the retention period. */
export interface Tombstone {
  rowKey: string;
  etag: string;
  /** The periodEnd of the digest it was in. */
  sentAt: string;
}

/** A stored item, as a run reads it. */
export interface StoredItem {
  rowKey: string;
  etag: string;
  /** When the service committed it (ISO 8601, the service's clock). */
  receivedAt: string;
  /** Milliseconds since the epoch of receivedAt. */
  receivedMs: number;
  /** The item's JSON as stored. */
  json: string;
}

/** `failed`: the run could not send anything (a configuration error, in `errorCode` and `error`). */
export type RunStatus = 'running' | 'completed' | 'failed';

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
  /** A failed run: the error's code (e.g. UNSUBSCRIBE_NOT_CONFIGURED) and message, which name the setting. */
  errorCode?: string;
  error?: string;
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
  'errorCode',
  'error',
] as const;

function runFromEntity(e: Record<string, unknown> & { etag: string }): DigestRunRecord & { etag: string } {
  const out: Record<string, unknown> = { etag: e.etag };
  for (const field of RUN_FIELDS) if (e[field] !== undefined && e[field] !== null) out[field] = e[field];
  return out as unknown as DigestRunRecord & { etag: string };
}

export class DigestStore {
  constructor(private readonly table: TableClient) {}

  /**
   * Stores `inputs` for `digest` and `recipient` (their row keys `keys`, distinct): the items in transactions of 100
   * (an item already there, or its tombstone, fails its transaction, which is then written item by item so that each
   * duplicate is told apart), then adds the new ones to the recipient's index row. True for each item newly stored.
   */
  async addItems(
    digest: string,
    recipient: string,
    inputs: readonly DigestItemInput[],
    keys: readonly string[],
  ): Promise<boolean[]> {
    const partitionKey = itemsPartition(digest, recipient);
    const stored: boolean[] = new Array<boolean>(inputs.length).fill(false);
    for (let i = 0; i < inputs.length; i += TRANSACTION_SIZE) {
      const entities = inputs.slice(i, i + TRANSACTION_SIZE).map((input, k) => ({
        partitionKey,
        rowKey: keys[i + k] as string,
        item: JSON.stringify(input.item),
      }));
      const all = await catchStatus(
        async () => {
          await this.table.submitTransaction(entities.map((e) => ['create', e]));
          return true;
        },
        [409],
        false,
      );
      for (let k = 0; k < entities.length; k++) {
        stored[i + k] = all || (await insertEntity(this.table, entities[k] as TableEntity)) !== undefined;
      }
    }
    // After the items, always (a redelivery too): an item never lies in storage without its index row for long, and
    // every intake changes the row's ETag, which a run dropping the row relies on.
    await this.countRecipient(digest, recipient, stored.filter(Boolean).length);
    return stored;
  }

  /** Adds `added` to the recipient's pending count in its index row (created when absent), under its ETag. */
  private async countRecipient(digest: string, recipient: string, added: number): Promise<void> {
    for (;;) {
      const row = await readEntity<IndexRow>(this.table, indexPartition(digest), recipientKey(recipient));
      if (!row) {
        const entity = { ...indexEntity(digest, recipient), items: added };
        if ((await insertEntity(this.table, entity)) !== undefined) return;
        continue;
      }
      // A row from before the counts has none: count the partition once.
      const before = typeof row.items === 'number' ? row.items : await this.countItems(digest, recipient);
      const entity = { ...row, ...indexEntity(digest, recipient), items: before + added };
      delete (entity as { etag?: string }).etag;
      if ((await replaceEntity(this.table, entity, row.etag)) !== undefined) return;
    }
  }

  /** The index rows of `digest`, a page at a time: pending recipients, and those whose tombstones are still kept. */
  async *pendingRecipients(digest: string, pageSize = DIGEST_PAGE_SIZE): AsyncGenerator<PendingRecipient[]> {
    const pages = this.table
      .listEntities<IndexRow>({
        queryOptions: {
          filter: odata`PartitionKey eq ${indexPartition(digest)}`,
          select: ['recipient', 'items', 'tombstonesUntil'],
        },
      })
      .byPage({ maxPageSize: pageSize });
    for await (const page of pages) {
      yield page.map((e) => ({
        recipient: e.recipient,
        etag: e.etag,
        ...(typeof e.items === 'number' ? { items: e.items } : {}),
        ...(typeof e.tombstonesUntil === 'string' ? { tombstonesUntil: e.tombstonesUntil } : {}),
      }));
    }
  }

  /** Every row of a recipient's partition: its items and its tombstones (pages read one after the other). */
  async items(digest: string, recipient: string): Promise<{ items: StoredItem[]; tombstones: Tombstone[] }> {
    const items: StoredItem[] = [];
    const tombstones: Tombstone[] = [];
    const pages = this.table
      .listEntities<{ item?: string; sentAt?: string }>({
        queryOptions: { filter: odata`PartitionKey eq ${itemsPartition(digest, recipient)}` },
      })
      .byPage({ maxPageSize: DIGEST_PAGE_SIZE });
    for await (const page of pages) {
      for (const e of page as Array<TableEntityResult<{ item?: string; sentAt?: string }>>) {
        const rowKey = e.rowKey ?? '';
        if (typeof e.item !== 'string') {
          tombstones.push({ rowKey, etag: e.etag, sentAt: String(e.sentAt ?? '') });
          continue;
        }
        const receivedAt = String(e.timestamp ?? '');
        items.push({ rowKey, etag: e.etag, receivedAt, receivedMs: Date.parse(receivedAt), json: e.item });
      }
    }
    return { items, tombstones };
  }

  /** How many items a recipient has pending (tombstones not counted). */
  async countItems(digest: string, recipient: string): Promise<number> {
    let n = 0;
    const pages = this.table
      .listEntities<{ sentAt?: string }>({
        queryOptions: { filter: odata`PartitionKey eq ${itemsPartition(digest, recipient)}`, select: ['sentAt'] },
      })
      .byPage({ maxPageSize: DIGEST_PAGE_SIZE });
    for await (const page of pages) n += page.filter((e) => typeof e.sentAt !== 'string').length;
    return n;
  }

  /**
   * Turns the items `sent` in a digest into tombstones (their idempotency keys kept, without their content), in
   * transactions of 100, each row under the ETag the run read, and deletes the tombstones `expired` one by one under
   * theirs (a transaction deletes unconditionally: an item stored again under an expired key must not go with it).
   * Returns how many of `sent` this call turned into tombstones: an item an overlapping run got to first is not.
   */
  async retireItems(
    digest: string,
    recipient: string,
    sent: readonly StoredItem[],
    sentAt: string,
    expired: readonly Tombstone[],
  ): Promise<number> {
    const partitionKey = itemsPartition(digest, recipient);
    let retired = 0;
    for (let i = 0; i < sent.length; i += TRANSACTION_SIZE) {
      const slice = sent.slice(i, i + TRANSACTION_SIZE);
      const all = await catchStatus(
        async () => {
          await this.table.submitTransaction(
            slice.map((item): TransactionAction => [
              'update',
              { partitionKey, rowKey: item.rowKey, sentAt },
              'Replace',
              { etag: item.etag },
            ]),
          );
          return true;
        },
        [404, 412],
        false,
      );
      if (all) {
        retired += slice.length;
        continue;
      }
      // One of them was changed by an overlapping run: the rest one by one, each under its own ETag.
      for (const item of slice) {
        const entity = { partitionKey, rowKey: item.rowKey, sentAt };
        if ((await replaceOrGone(this.table, entity, item.etag)) !== undefined) retired++;
      }
    }
    for (const t of expired) await deleteEntity(this.table, partitionKey, t.rowKey, t.etag);
    return retired;
  }

  /**
   * Settles a recipient's index row after a run took `retired` of its items: the count set to what is left, or the
   * row dropped when nothing is left to send or to remember. `seen` is what the run read (the row's ETag before the
   * items, and how many items were left); a row written since (an intake) is read again and its count lowered.
   */
  async settleRecipient(
    digest: string,
    recipient: string,
    seen: { etag: string; left: number; tombstonesUntil?: string },
    retired: number,
  ): Promise<void> {
    let row: (IndexRow & { etag: string }) | undefined = { recipient, etag: seen.etag };
    for (let first = true; row; first = false) {
      // Under the ETag of the read, the count is what the run read: a count that drifted (an intake or a run that
      // died between its items and its count) is set right. Once an intake wrote the row, its count less `retired`.
      const left = first
        ? seen.left
        : typeof row.items === 'number'
          ? Math.max(row.items - retired, 0)
          : await this.countItems(digest, recipient);
      if (left === 0 && seen.tombstonesUntil === undefined) {
        // Nothing to send or remember: the row goes, unless an intake wrote it since the run read it.
        if (await deleteEntity(this.table, indexPartition(digest), recipientKey(recipient), row.etag)) return;
      } else {
        const entity: TableEntity = {
          ...indexEntity(digest, recipient),
          items: left,
          ...(seen.tombstonesUntil !== undefined ? { tombstonesUntil: seen.tombstonesUntil } : {}),
        };
        if ((await replaceOrGone(this.table, entity, row.etag)) !== undefined) return;
      }
      row = await readEntity<IndexRow>(this.table, indexPartition(digest), recipientKey(recipient));
    }
    // No row any more: another run dropped it (an intake since would have written it again).
  }

  /**
   * Notes in the run journal of `periodEnd` that `recipient`'s digest was accepted, with its counts. The first note
   * wins (insert): a run that takes over a recipient its predecessor already noted does not count it twice.
   */
  async noteDone(
    digest: string,
    periodEnd: string,
    recipient: string,
    counts: { items: number; omitted: number },
  ): Promise<boolean> {
    const entity = { partitionKey: donePartition(digest, periodEnd), rowKey: recipientKey(recipient), ...counts };
    return (await insertEntity(this.table, entity)) !== undefined;
  }

  /** The sums of a period's journal: what every run of the period accepted, a crashed one's work included. */
  async doneTotals(digest: string, periodEnd: string): Promise<{ recipients: number; items: number; omitted: number }> {
    const totals = { recipients: 0, items: 0, omitted: 0 };
    const pages = this.table
      .listEntities<{ items: number; omitted: number }>({
        queryOptions: {
          filter: odata`PartitionKey eq ${donePartition(digest, periodEnd)}`,
          select: ['items', 'omitted'],
        },
      })
      .byPage({ maxPageSize: DIGEST_PAGE_SIZE });
    for await (const page of pages) {
      for (const e of page) {
        totals.recipients++;
        totals.items += Number(e.items) || 0;
        totals.omitted += Number(e.omitted) || 0;
      }
    }
    return totals;
  }

  /** Deletes a period's journal, a page at a time in transactions of 100 (its totals are in the run record). */
  async clearDone(digest: string, periodEnd: string): Promise<void> {
    const partitionKey = donePartition(digest, periodEnd);
    for (;;) {
      const pages = this.table
        .listEntities({ queryOptions: { filter: odata`PartitionKey eq ${partitionKey}`, select: ['RowKey'] } })
        .byPage({ maxPageSize: DIGEST_PAGE_SIZE });
      const first = await pages.next();
      const rows = first.done ? [] : first.value;
      if (rows.length === 0) return;
      for (let i = 0; i < rows.length; i += TRANSACTION_SIZE) {
        const slice = rows.slice(i, i + TRANSACTION_SIZE);
        await catchStatus(
          () => this.table.submitTransaction(slice.map((e) => ['delete', { partitionKey, rowKey: e.rowKey ?? '' }])),
          [404],
          undefined,
        );
      }
    }
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
