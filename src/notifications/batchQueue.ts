/**
 * The mail-notifications queue's messages. A producer writes a whole batch (at most 64 KB, the queue cap); the app
 * itself writes references `{ batchId, offset }` to a batch stored in mail-batches (POST /api/notifications, and the
 * continuation of a batch whose fan-out goes on in a later invocation). Base64 JSON, as host.json's
 * `messageEncoding: "base64"` expects; plain JSON is read too.
 */
import type { QueueClient } from '@azure/storage-queue';
import { canonicalJsonIterative } from '../canonicalJson';
import { inspectJson } from '../inputBounds';
import { BATCH_ID } from './batchRequest';

/** Never expire: a continuation must not vanish behind a long backlog (the default TTL is 7 days). */
const NEVER_EXPIRES = -1;
/**
 * A queue message is at most 64 KiB (the Storage limit), so its text is at most this many UTF-16 units; longer text
 * cannot have come from the queue and is not decoded or parsed.
 */
export const MAX_QUEUE_MESSAGE_CHARS = 64 * 1024;

/** What a queue message turned out to be. */
export type NotificationMessage =
  /** A batch written by a producer (validated later: a bad one is recorded as a failed batch). */
  | { kind: 'batch'; content: Record<string, unknown> }
  /** A reference to a stored batch: fan out from `offset`. */
  | { kind: 'reference'; batchId: string; offset: number }
  /** Not a JSON object at all; `text` is the message as received. */
  | { kind: 'unreadable'; text: string };

const REFERENCE_KEYS = new Set(['batchId', 'offset']);

/** Encodes a batch or a reference for the queue (base64 JSON). */
export function encodeNotificationMessage(value: unknown): string {
  return Buffer.from(JSON.stringify(value)).toString('base64');
}

/**
 * Reads the trigger's payload: the host hands over decoded JSON (an object) or text; a raw queue text may still be
 * base64. An object with only `batchId` and `offset` is a reference; any other object is a batch, whose depth and
 * size parseNotificationBatch bounds before anything recurses into it (a too-deep one is recorded as failed).
 */
export function parseNotificationMessage(value: unknown): NotificationMessage {
  let candidate = value;
  if (Buffer.isBuffer(candidate)) candidate = candidate.toString('utf8');
  if (typeof candidate === 'string') {
    const raw = candidate;
    if (raw.length > MAX_QUEUE_MESSAGE_CHARS) return { kind: 'unreadable', text: raw };
    const text = raw.trim().startsWith('{') ? raw : Buffer.from(raw, 'base64').toString('utf8');
    try {
      candidate = JSON.parse(text);
    } catch {
      return { kind: 'unreadable', text: raw };
    }
  }
  if (candidate === null || typeof candidate !== 'object' || Array.isArray(candidate)) {
    if (typeof value === 'string') return { kind: 'unreadable', text: value };
    // An array the host parsed may be too deep for JSON.stringify (a RangeError would send it to the poison queue).
    const deep = inspectJson(candidate, { maxValues: Infinity }).problem !== undefined;
    return { kind: 'unreadable', text: deep ? canonicalJsonIterative(candidate) : (JSON.stringify(candidate) ?? '') };
  }
  const object = candidate as Record<string, unknown>;
  const keys = Object.keys(object);
  if (keys.includes('batchId') && keys.every((k) => REFERENCE_KEYS.has(k))) {
    const { batchId, offset = 0 } = object;
    if (typeof batchId === 'string' && BATCH_ID.test(batchId) && Number.isSafeInteger(offset) && Number(offset) >= 0) {
      return { kind: 'reference', batchId, offset: Number(offset) };
    }
  }
  return { kind: 'batch', content: object };
}

/** Sends a reference to stored batch `batchId`, to fan out from `offset`. */
export async function enqueueBatchReference(queue: QueueClient, batchId: string, offset: number): Promise<void> {
  await queue.sendMessage(encodeNotificationMessage({ batchId, offset }), { messageTimeToLive: NEVER_EXPIRES });
}
