/** Status records of outbox messages in Table storage, with ETag-guarded transitions so that concurrent workers cannot both move a record. */
import { odata, type TableClient } from '@azure/data-tables';
import type { ClassifiedError, SmtpReply } from '../errors';
import type { OutboxSource } from '../message';
import { batchPartition, idOfRecord, recordKeys, SINGLE_ROW_KEY, uuidv7Floor } from './messageIds';
import {
  MAX_STRING_PROPERTY_CHARS,
  parseErrorProperty,
  parseJsonProperty,
  presentFields,
} from '../storage/entityFields';
import { splitContent } from './messageContent';
import { catchStatus } from '../storage/storageClients';
import { deleteEntity, insertValue, readEntity, replaceWithChanges, type Changes } from '../storage/tableEntity';

export const MAIL_STATUSES = ['queued', 'scheduled', 'sending', 'sent', 'failed', 'suppressed'] as const;
export type MailStatus = (typeof MAIL_STATUSES)[number];
/** Statuses no delivery changes any more. */
export const TERMINAL_STATUSES: ReadonlySet<MailStatus> = new Set(['sent', 'failed', 'suppressed']);
/**
 * Why a `queued` message is waiting for a later attempt: a transient failure's back-off (`retry`), one of the
 * mailbox's limits as this app keeps them (`rate`, `daily`, `connections`, `contention`), or Exchange saying the
 * mailbox is over a limit now (`exchange-daily-quota`: 554 5.2.0; `exchange-concurrency`: 432 4.3.2).
 */
export const WAIT_REASONS = [
  'retry',
  'rate',
  'daily',
  'connections',
  'contention',
  'exchange-daily-quota',
  'exchange-concurrency',
] as const;
export type WaitReason = (typeof WAIT_REASONS)[number];

/** A message's status as stored. Dates are ISO 8601 strings. */
export interface StatusRecord {
  id: string;
  status: MailStatus;
  source: OutboxSource;
  batchId?: string;
  template?: string;
  /** Bulk mail: the list it belongs to. Delivery checks the suppressions of this list before it sends. */
  list?: string;
  attempts: number;
  createdAt: string;
  scheduledFor?: string;
  /** When the message is next expected to be dequeued (accept, deferral): finds records whose queue message was lost. */
  dueAt: string;
  sentAt?: string;
  messageId?: string;
  smtp?: { code: number; response: string };
  error?: ClassifiedError;
  /** SHA-256 of the canonical request: an idempotent replay must match it. */
  payloadHash: string;
  idempotencyKey?: string;
  /** While `sending`: the worker holding the lease owns the record until then. */
  leaseUntil?: string;
  /** When the record reached `sent`, `failed` or `suppressed`: retention counts from here. */
  completedAt?: string;
  /** While `queued` after a deferral: why it waits until `dueAt`. */
  waitReason?: WaitReason;
  /** Deferrals because Exchange said the mailbox is over a limit, in a row: spaces out the next probe. */
  throttles?: number;
  /** `sent`, but Exchange refused these recipients (the first MAX_LISTED_REFUSALS; `refusedCount` counts all). */
  refused?: Refusal[];
  refusedCount?: number;
  /** The operation id (W3C trace id) of the invocation that accepted it: joins its delivery to the accepting request. */
  acceptOperationId?: string;
  /**
   * The rendered message as JSON (messageContent.ts), when it is small enough to live in the record; absent when it
   * is in the payload blob (a large message, or one accepted before records held their content).
   */
  content?: string;
}

/** A recipient Exchange refused while it accepted the message for the others. */
export interface Refusal {
  address: string;
  smtp?: SmtpReply;
}

/** Refused recipients listed one by one in a record; the rest are counted in `refusedCount` (the entity stays small). */
export const MAX_LISTED_REFUSALS = 100;
const MAX_REFUSAL_RESPONSE_CHARS = 200;

/** The JSON of a record's refusals fits one Table property (32K characters) with room to spare. */
const MAX_REFUSALS_JSON_CHARS = 28_000;

/**
 * The refusals as a record keeps them: the first MAX_LISTED_REFUSALS, each reply clipped, as many as fit one Table
 * property; `refusedCount` counts them all.
 */
export function listRefusals(refused: readonly Refusal[]): Refusal[] {
  const listed: Refusal[] = [];
  let chars = 2;
  for (const r of refused.slice(0, MAX_LISTED_REFUSALS)) {
    const entry: Refusal = {
      address: r.address,
      ...(r.smtp ? { smtp: { ...r.smtp, response: r.smtp.response.slice(0, MAX_REFUSAL_RESPONSE_CHARS) } } : {}),
    };
    chars += JSON.stringify(entry).length + 1;
    if (chars > MAX_REFUSALS_JSON_CHARS) break;
    listed.push(entry);
  }
  return listed;
}

/** A stored record with the ETag that guards its next transition. */
export type StoredRecord = StatusRecord & { etag: string };

/** What GET /api/messages/{id} shows: no hashes, keys or leases. */
export interface StatusView {
  id: string;
  status: MailStatus;
  source: OutboxSource;
  batchId?: string;
  /** Bulk mail: the list its recipient can unsubscribe from (and, when `suppressed`, was suppressed from). */
  list?: string;
  attempts: number;
  createdAt: string;
  scheduledFor?: string;
  sentAt?: string;
  messageId?: string;
  /** Sent, but these recipients were refused by Exchange (the caller's own addresses; `refusedCount` counts all). */
  refused?: Refusal[];
  refusedCount?: number;
  /** While queued after a deferral: why, and until when (no attempt is spent waiting for a limit). */
  waiting?: { reason: WaitReason; until: string };
  error?: ClassifiedError;
}

/** The public view of a record. */
export function statusView(record: StatusRecord): StatusView {
  return {
    id: record.id,
    status: record.status,
    source: record.source,
    ...(record.batchId !== undefined ? { batchId: record.batchId } : {}),
    ...(record.list !== undefined ? { list: record.list } : {}),
    attempts: record.attempts,
    createdAt: record.createdAt,
    ...(record.scheduledFor !== undefined ? { scheduledFor: record.scheduledFor } : {}),
    ...(record.sentAt !== undefined ? { sentAt: record.sentAt } : {}),
    ...(record.messageId !== undefined ? { messageId: record.messageId } : {}),
    ...(record.refusedCount ? { refused: record.refused ?? [], refusedCount: record.refusedCount } : {}),
    ...(record.status === 'queued' && record.waitReason !== undefined
      ? { waiting: { reason: record.waitReason, until: record.dueAt } }
      : {}),
    ...(record.error !== undefined ? { error: record.error } : {}),
  };
}

type Entity = {
  partitionKey: string;
  rowKey: string;
  status: string;
  source: string;
  attempts: number;
  createdAt: string;
  dueAt: string;
  payloadHash: string;
  batchId?: string;
  template?: string;
  list?: string;
  scheduledFor?: string;
  sentAt?: string;
  messageId?: string;
  smtpCode?: number;
  smtpResponse?: string;
  /** ClassifiedError as JSON: Table storage has no nested values. */
  error?: string;
  idempotencyKey?: string;
  leaseUntil?: string;
  completedAt?: string;
  waitReason?: string;
  throttles?: number;
  /** JSON of Refusal[]. */
  refused?: string;
  refusedCount?: number;
  acceptOperationId?: string;
  /** The inline content, cut into string properties `content0`, `content1`, … (each under the 32K limit). */
  [contentPart: `content${number}`]: string | undefined;
};

/** Property name of inline content part `i`. */
const contentProperty = (i: number) => `content${i}` as const;

/** Rows per page when the retention timer reads records. */
const PAGE_SIZE = 100;

/** SMTP replies and messages are far shorter than a Table property holds, but never fail a write on it. */
const clip = (value: string) =>
  value.length > MAX_STRING_PROPERTY_CHARS ? value.slice(0, MAX_STRING_PROPERTY_CHARS) : value;

/** The optional fields a record and its entity keep under the same name. */
const OPTIONAL_FIELDS = [
  'batchId',
  'template',
  'list',
  'scheduledFor',
  'sentAt',
  'messageId',
  'idempotencyKey',
  'leaseUntil',
  'completedAt',
  'waitReason',
  'throttles',
  'refusedCount',
  'acceptOperationId',
] as const;

function toEntity(record: StatusRecord): Entity {
  return {
    ...recordKeys(record.id),
    status: record.status,
    source: record.source,
    attempts: record.attempts,
    createdAt: record.createdAt,
    dueAt: record.dueAt,
    payloadHash: record.payloadHash,
    ...presentFields(record, OPTIONAL_FIELDS),
    ...(record.refused ? { refused: JSON.stringify(listRefusals(record.refused)) } : {}),
    ...(record.smtp ? { smtpCode: record.smtp.code, smtpResponse: clip(record.smtp.response) } : {}),
    ...(record.error ? { error: clip(JSON.stringify(record.error)) } : {}),
    ...(record.content !== undefined
      ? Object.fromEntries(splitContent(record.content).map((part, i) => [contentProperty(i), part]))
      : {}),
  };
}

/** The inline content of `entity`: its parts joined, or undefined when it has none. */
function contentOf(entity: Entity): string | undefined {
  if (typeof entity.content0 !== 'string') return undefined;
  const parts: string[] = [];
  for (let i = 0; typeof entity[contentProperty(i)] === 'string'; i++) parts.push(entity[contentProperty(i)] as string);
  return parts.join('');
}

function fromEntity(entity: Entity & { etag: string }): StoredRecord {
  const error = parseErrorProperty(entity.error, true);
  const content = contentOf(entity);
  return {
    id: idOfRecord(entity.partitionKey, entity.rowKey),
    status: entity.status as MailStatus,
    source: entity.source as OutboxSource,
    attempts: entity.attempts,
    createdAt: entity.createdAt,
    dueAt: entity.dueAt,
    payloadHash: entity.payloadHash,
    ...presentFields(entity, OPTIONAL_FIELDS),
    ...(entity.refused ? { refused: parseRefusals(entity.refused) } : {}),
    ...(entity.smtpCode !== undefined && entity.smtpCode !== null
      ? { smtp: { code: entity.smtpCode, response: entity.smtpResponse ?? '' } }
      : {}),
    ...(error ? { error } : {}),
    ...(content !== undefined ? { content } : {}),
    etag: entity.etag,
  } as StoredRecord;
}

function parseRefusals(text: string): Refusal[] {
  // A list clipped at the property limit is no JSON: the count still says how many.
  const value = parseJsonProperty<unknown>(text, []);
  return Array.isArray(value) ? (value as Refusal[]) : [];
}

/** The fields a transition may change; `undefined` removes an optional field. */
export type RecordChanges = Changes<Omit<StatusRecord, 'id' | 'source' | 'createdAt' | 'payloadHash' | 'content'>>;

/** Entities one Table transaction may hold (one partition), and the request size it must stay under (4 MiB). */
const TRANSACTION_MAX_ENTITIES = 100;
const TRANSACTION_MAX_BYTES = 3.5 * 1024 * 1024;

/** Reads and moves status records. Every method but `create` and `get` is guarded by the record's ETag. */
export class StatusStore {
  constructor(private readonly table: TableClient) {}

  /** Creates the record. Returns undefined (and writes nothing) when a record with this id already exists. */
  async create(record: StatusRecord): Promise<StoredRecord | undefined> {
    return insertValue(this.table, record, toEntity);
  }

  /**
   * Creates records of one partition (a batch's) in Table transactions of up to 100: all of a transaction or none
   * of it is written. A transaction refused because one of its records exists already (a chunk run again) is
   * written one record at a time instead. Returns, in order, each record as created, or undefined when it existed
   * (nothing written for it).
   */
  async createMany(records: readonly StatusRecord[]): Promise<Array<StoredRecord | undefined>> {
    const results: Array<StoredRecord | undefined> = new Array<StoredRecord | undefined>(records.length);
    let start = 0;
    while (start < records.length) {
      const partitionKey = recordKeys((records[start] as StatusRecord).id).partitionKey;
      const entities: Entity[] = [];
      let bytes = 0;
      let end = start;
      while (end < records.length && entities.length < TRANSACTION_MAX_ENTITIES) {
        const entity = toEntity(records[end] as StatusRecord);
        // UTF-8 takes at most 3 bytes per UTF-16 code unit: a bound without encoding the entity twice.
        const size = JSON.stringify(entity).length * 3;
        if (entity.partitionKey !== partitionKey || (entities.length > 0 && bytes + size > TRANSACTION_MAX_BYTES))
          break;
        entities.push(entity);
        bytes += size;
        end += 1;
      }
      // A transaction refused as a whole (409: a record exists; or any other refusal of one of its entities) is
      // written one record at a time, which tells existing records from real errors.
      const written = await catchStatus(
        async () => (await this.table.submitTransaction(entities.map((e) => ['create', e]))).subResponses,
        [400, 409, 413],
        undefined,
      );
      if (written && written.length === entities.length) {
        written.forEach((response, i) => {
          results[start + i] = { ...(records[start + i] as StatusRecord), etag: response.etag ?? '' };
        });
      } else {
        await Promise.all(
          records.slice(start, end).map(async (record, i) => {
            results[start + i] = await this.create(record);
          }),
        );
      }
      start = end;
    }
    return results;
  }

  /** The record, or undefined when there is none. */
  async get(id: string): Promise<StoredRecord | undefined> {
    const { partitionKey, rowKey } = recordKeys(id);
    const entity = await readEntity<Entity>(this.table, partitionKey, rowKey);
    return entity && fromEntity(entity);
  }

  /** Deletes the record if nobody has written it since `current` was read. False when it moved (412) or is gone. */
  async delete(current: StoredRecord): Promise<boolean> {
    const { partitionKey, rowKey } = recordKeys(current.id);
    return deleteEntity(this.table, partitionKey, rowKey, current.etag);
  }

  /**
   * Applies `changes` to `current` if nobody has moved the record since it was read. Returns the new record, or
   * undefined when the ETag no longer matches (412: another worker moved it; re-read and decide again).
   */
  async transition(current: StoredRecord, changes: RecordChanges): Promise<StoredRecord | undefined> {
    return replaceWithChanges(this.table, current, changes, toEntity);
  }

  /**
   * How many records of notification batch `batchId` are in each status. A batch's records are one partition of their
   * own, so this reads that partition (`status` only, 1,000 rows a page) and nothing else, however large the table.
   */
  async countByBatch(batchId: string): Promise<Record<MailStatus, number>> {
    const counts = Object.fromEntries(MAIL_STATUSES.map((s) => [s, 0])) as Record<MailStatus, number>;
    const entities = this.table.listEntities<{ status: string }>({
      queryOptions: { filter: odata`PartitionKey eq ${batchPartition(batchId)}`, select: ['status'] },
    });
    for await (const entity of entities) {
      const status = entity.status as MailStatus;
      if (Object.hasOwn(counts, status)) counts[status] += 1;
    }
    return counts;
  }

  /**
   * The records of batch `batchId`, a page at a time (the retention timer). Reads the batch's partition only.
   */
  async *ofBatch(batchId: string, pageSize = PAGE_SIZE): AsyncIterable<StoredRecord[]> {
    const pages = this.table
      .listEntities<Entity>({ queryOptions: { filter: odata`PartitionKey eq ${batchPartition(batchId)}` } })
      .byPage({ maxPageSize: pageSize });
    for await (const page of pages) yield page.map((e) => fromEntity(e as Entity & { etag: string }));
  }

  /**
   * Single-message records created before `before` (their UUIDv7 ids sort below its floor), a page at a time: a
   * PartitionKey range, so the cost is the rows in that range, not the table. Batch records (`batch~…` partitions)
   * sort above every UUIDv7 and are never part of it.
   */
  async *createdBefore(before: number, pageSize = PAGE_SIZE): AsyncIterable<StoredRecord[]> {
    const filter = odata`PartitionKey lt ${uuidv7Floor(before)} and RowKey eq ${SINGLE_ROW_KEY}`;
    const pages = this.table.listEntities<Entity>({ queryOptions: { filter } }).byPage({ maxPageSize: pageSize });
    for await (const page of pages) yield page.map((e) => fromEntity(e as Entity & { etag: string }));
  }
}
