/** The summary of each notification batch in Table storage `MailBatches`: progress, counts and rejected recipients, ETag-guarded. */
import { odata, type TableClient } from '@azure/data-tables';
import type { ClassifiedError } from '../errors';
import type { NotificationCategory } from './batchRequest';
import {
  MAX_STRING_PROPERTY_CHARS,
  parseErrorProperty,
  parseJsonProperty,
  presentFields,
} from '../storage/entityFields';
import { deleteEntity, insertValue, readEntity, replaceWithChanges, type Changes } from '../storage/tableEntity';

export const BATCH_STATUSES = ['accepted', 'fanning-out', 'complete', 'failed'] as const;
export type BatchStatus = (typeof BATCH_STATUSES)[number];
/** `http`: POST /api/notifications; `queue`: a batch written to mail-notifications. */
export type BatchSource = 'http' | 'queue';
/** Rejected recipients listed one by one; the rest are counted in `rejected` only (the entity stays small). */
export const MAX_LISTED_REJECTIONS = 100;
/** The rejection list is split into parts this long, each within a Table string property. */
const PART_CHARS = MAX_STRING_PROPERTY_CHARS;
/** Longest field path and reason kept per rejection. */
const MAX_FIELD_CHARS = 120;
const MAX_REASON_CHARS = 300;
const ROW_KEY = 'batch';
/**
 * The retention index: one row per batch in this partition, keyed `<createdAt>~<batchId>`, so that the retention
 * timer finds old batches with a range read of one partition. Batch ids cannot hold `~`, so no batch's own
 * partition is ever this one.
 */
const RETENTION_PARTITION = '~retention';
/** Index rows read per page. */
const INDEX_PAGE_SIZE = 100;

/** A batch as the retention index lists it. */
export interface RetentionEntry {
  batchId: string;
  createdAt: string;
  rowKey: string;
  etag: string;
}

/** A recipient rejected on its own: its index in `recipients`, the field at fault and why. */
export interface Rejection {
  index: number;
  field: string;
  reason: string;
}

export interface BatchSummary {
  batchId: string;
  status: BatchStatus;
  source: BatchSource;
  template?: string;
  category?: NotificationCategory;
  /** Recipients in the batch (0 when the batch could not be read at all). */
  total: number;
  /** Recipients that have an outbox message (new or found from an earlier run). */
  accepted: number;
  rejected: number;
  /** The first MAX_LISTED_REJECTIONS rejections, by index. */
  rejections: Rejection[];
  /** The next recipient index to fan out; recipients before it are done. */
  offset: number;
  /** The offset whose continuation message is known to be on the queue (see Notifications: crash recovery). */
  continuation?: number;
  /** The offset of the chunk a fan-out invocation is running, until `runningUntil`: a copy of it waits. */
  running?: number;
  runningUntil?: string;
  /** SHA-256 of the batch content: the same batchId with other content is a different batch. */
  contentHash?: string;
  /** True when the batch is in mail-batches/<batchId>.json (POST, or a queue batch that needed a continuation). */
  stored: boolean;
  createdAt: string;
  updatedAt: string;
  completedAt?: string;
  /** Why the batch failed as a whole. */
  error?: ClassifiedError;
}

export type StoredSummary = BatchSummary & { etag: string };

/**
 * A summary as stored: its own fields (the closed sets as plain strings, since storage does not check them), with the
 * error and the rejection list as JSON.
 */
type Entity = Omit<BatchSummary, 'batchId' | 'status' | 'source' | 'category' | 'rejections' | 'error'> & {
  partitionKey: string;
  rowKey: string;
  status: string;
  source: string;
  category?: string;
  error?: string;
  /** How many `rejections<n>` parts hold the JSON of the rejection list. */
  rejectionParts: number;
  [part: `rejections${number}`]: string;
};

const clip = (value: string, max: number) => (value.length > max ? `${value.slice(0, max - 1)}…` : value);

/** Merges `more` into `listed`, keeping the first MAX_LISTED_REJECTIONS by index, each clipped to a bounded size. */
export function listRejections(listed: readonly Rejection[], more: readonly Rejection[]): Rejection[] {
  return [...listed, ...more]
    .sort((a, b) => a.index - b.index)
    .slice(0, MAX_LISTED_REJECTIONS)
    .map((r) => ({ index: r.index, field: clip(r.field, MAX_FIELD_CHARS), reason: clip(r.reason, MAX_REASON_CHARS) }));
}

/** The optional fields a summary and its entity keep under the same name. */
const OPTIONAL_FIELDS = [
  'template',
  'category',
  'continuation',
  'running',
  'runningUntil',
  'contentHash',
  'completedAt',
] as const;

function toEntity(summary: BatchSummary): Entity {
  const json = JSON.stringify(summary.rejections);
  const parts: Record<string, string> = {};
  let count = 0;
  for (let at = 0; at < json.length; at += PART_CHARS) parts[`rejections${count++}`] = json.slice(at, at + PART_CHARS);
  return {
    partitionKey: summary.batchId,
    rowKey: ROW_KEY,
    status: summary.status,
    source: summary.source,
    total: summary.total,
    accepted: summary.accepted,
    rejected: summary.rejected,
    offset: summary.offset,
    stored: summary.stored,
    createdAt: summary.createdAt,
    updatedAt: summary.updatedAt,
    ...presentFields(summary, OPTIONAL_FIELDS),
    ...(summary.error ? { error: clip(JSON.stringify(summary.error), PART_CHARS) } : {}),
    rejectionParts: count,
    ...parts,
  };
}

function fromEntity(entity: Entity & { etag: string }): StoredSummary {
  let json = '';
  for (let i = 0; i < (entity.rejectionParts ?? 0); i++) json += entity[`rejections${i}`] ?? '';
  const error = parseErrorProperty(entity.error, false);
  return {
    batchId: entity.partitionKey,
    status: entity.status as BatchStatus,
    source: entity.source as BatchSource,
    total: entity.total,
    accepted: entity.accepted,
    rejected: entity.rejected,
    rejections: parseJsonProperty<Rejection[]>(json, []),
    offset: entity.offset,
    stored: entity.stored === true,
    createdAt: entity.createdAt,
    updatedAt: entity.updatedAt,
    ...presentFields(entity, OPTIONAL_FIELDS),
    ...(error ? { error } : {}),
    etag: entity.etag,
  } as StoredSummary;
}

/** The fields an update may change; `undefined` removes an optional field. */
export type SummaryChanges = Changes<Omit<BatchSummary, 'batchId' | 'source' | 'createdAt'>>;

/** Reads and writes batch summaries. Every write but `create` is guarded by the summary's ETag. */
export class BatchStore {
  constructor(private readonly table: TableClient) {}

  /** Creates the summary. Returns undefined (and writes nothing) when the batch already has one. */
  async create(summary: BatchSummary): Promise<StoredSummary | undefined> {
    return insertValue(this.table, summary, toEntity);
  }

  /**
   * Lists batch `batchId` in the retention index (idempotent). Written before the batch's blobs and summary, so that
   * whatever a crash leaves of a batch is still found and purged.
   */
  async indexForRetention(batchId: string, createdAt: string): Promise<void> {
    await this.table.upsertEntity(
      { partitionKey: RETENTION_PARTITION, rowKey: `${createdAt}~${batchId}`, batchId, createdAt },
      'Replace',
    );
  }

  /** Batches indexed as created before `before` (epoch ms), a page at a time: one partition's key range. */
  async *indexedBefore(before: number): AsyncIterable<RetentionEntry[]> {
    const filter = odata`PartitionKey eq ${RETENTION_PARTITION} and RowKey lt ${new Date(before).toISOString()}`;
    const pages = this.table
      .listEntities<{ batchId: string; createdAt: string }>({ queryOptions: { filter } })
      .byPage({ maxPageSize: INDEX_PAGE_SIZE });
    for await (const page of pages) {
      yield page.map((e) => ({
        batchId: e.batchId,
        createdAt: e.createdAt,
        rowKey: e.rowKey as string,
        etag: e.etag,
      }));
    }
  }

  /** Removes a batch from the retention index once it is purged. */
  async unindex(entry: RetentionEntry): Promise<boolean> {
    return deleteEntity(this.table, RETENTION_PARTITION, entry.rowKey, entry.etag);
  }

  /** Deletes the summary if nobody has written it since `current` was read. */
  async delete(current: StoredSummary): Promise<boolean> {
    return deleteEntity(this.table, current.batchId, ROW_KEY, current.etag);
  }

  /** The summary, or undefined when there is none. */
  async get(batchId: string): Promise<StoredSummary | undefined> {
    const entity = await readEntity<Entity>(this.table, batchId, ROW_KEY);
    return entity && fromEntity(entity);
  }

  /**
   * Applies `changes` if nobody has written the summary since `current` was read. Returns the new summary, or
   * undefined when the ETag no longer matches (412: re-read and decide again).
   */
  async update(current: StoredSummary, changes: SummaryChanges): Promise<StoredSummary | undefined> {
    // Replace, not merge: a shorter rejection list must not leave stale parts behind.
    return replaceWithChanges(this.table, current, changes, toEntity);
  }
}
