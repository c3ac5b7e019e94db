/**
 * Outbox message ids and where their status records live.
 *
 * - A single message (HTTP) gets a UUIDv7: 48 bits of creation time in milliseconds first, so ids sort by
 *   creation time as strings. Its record is the one row of partition `<id>`, and "every record created before T" is a
 *   PartitionKey range, which the retention timer reads without scanning the table.
 * - A message of a notification batch gets `<batchId>~<32 hex>`, the hex derived from the batch and the recipient's
 *   idempotency key, so that running the same fan-out again names the same message. Its record is row `<32 hex>` of
 *   partition `batch~<batchId>`: counting a batch's messages by status reads that partition only.
 */
import { createHash, randomBytes } from 'node:crypto';

/** Prefix of the partitions holding a notification batch's records; no UUIDv7 id (first hex digit 0) sorts after it. */
export const BATCH_PARTITION_PREFIX = 'batch~';
/** The row of a single message's record. */
export const SINGLE_ROW_KEY = 'status';

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
/** Batch ids are [A-Za-z0-9._-]{1,100} (no `~`), so the last `~` of a batch message id ends its batch id. */
const BATCH_MESSAGE_ID = /^[A-Za-z0-9._-]{1,100}~[0-9a-f]{32}$/;

/** True for an id this app hands out: a UUID or a batch message id. Fixed-shape classes only: linear time. */
export function isMessageId(value: string): boolean {
  return value.length <= 133 && (UUID.test(value) || BATCH_MESSAGE_ID.test(value));
}

/** A UUIDv7 (RFC 9562): time-ordered, 74 random bits. `now` is epoch milliseconds. */
export function uuidv7(now: number = Date.now()): string {
  const bytes = randomBytes(16);
  let ms = Math.max(0, Math.floor(now));
  for (let i = 5; i >= 0; i--) {
    bytes[i] = ms % 256;
    ms = Math.floor(ms / 256);
  }
  bytes[6] = 0x70 | ((bytes[6] as number) & 0x0f);
  bytes[8] = 0x80 | ((bytes[8] as number) & 0x3f);
  const hex = bytes.toString('hex');
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

/**
 * The smallest id string of a UUIDv7 created at `time` (epoch ms): every UUIDv7 created earlier sorts below it.
 * The retention timer's PartitionKey bound.
 */
export function uuidv7Floor(time: number): string {
  const hex = Math.max(0, Math.floor(time)).toString(16).padStart(12, '0').slice(-12);
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}`;
}

/** The id of recipient `key`'s message in batch `batchId`: the same every time the batch fans out. */
export function batchMessageId(batchId: string, key: string): string {
  return `${batchId}~${createHash('sha256').update(`${batchId}\n${key}`).digest('hex').slice(0, 32)}`;
}

/** Where the record of message `id` lives. */
export function recordKeys(id: string): { partitionKey: string; rowKey: string } {
  const tilde = id.lastIndexOf('~');
  if (tilde > 0) return { partitionKey: `${BATCH_PARTITION_PREFIX}${id.slice(0, tilde)}`, rowKey: id.slice(tilde + 1) };
  return { partitionKey: id, rowKey: SINGLE_ROW_KEY };
}

/** The id of the record stored at (`partitionKey`, `rowKey`): the inverse of {@link recordKeys}. */
export function idOfRecord(partitionKey: string, rowKey: string): string {
  return partitionKey.startsWith(BATCH_PARTITION_PREFIX)
    ? `${partitionKey.slice(BATCH_PARTITION_PREFIX.length)}~${rowKey}`
    : partitionKey;
}

/** The partition of batch `batchId`'s records. */
export function batchPartition(batchId: string): string {
  return `${BATCH_PARTITION_PREFIX}${batchId}`;
}

/** The local part of the Message-ID of message `id`: the UUID itself, or a batch message id's 32 hex digits. */
export function messageIdLocalPart(id: string): string {
  const tilde = id.lastIndexOf('~');
  return tilde >= 0 ? id.slice(tilde + 1) : id;
}
