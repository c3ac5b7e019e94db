/** The outbox queue's messages: `{ id }` only, base64-encoded JSON as host.json's `messageEncoding: "base64"` expects. */
import type { QueueClient } from '@azure/storage-queue';
import { isMessageId } from './messageIds';

/**
 * Must equal host.json `extensions.queues.maxDequeueCount` (a test compares them): after this many failed dequeues the
 * host moves a message to `mail-outbox-poison`.
 */
export const OUTBOX_MAX_DEQUEUE_COUNT = 5;
/** Azure Storage queues hide a message for at most 7 days. */
export const MAX_VISIBILITY_SECONDS = 7 * 24 * 60 * 60;
/** Never expire: a message scheduled 7 days ahead would otherwise expire (default TTL 7 days) as it becomes visible. */
const NEVER_EXPIRES = -1;
/**
 * `{ id }` is at most about 150 characters of JSON, 200 in base64: a longer text is no message of ours, and is dropped before it is
 * decoded or parsed (whatever its depth or size).
 */
export const MAX_OUTBOX_MESSAGE_CHARS = 1024;

export interface OutboxMessage {
  id: string;
}

/** Encodes `{ id }` for the queue. */
export function encodeOutboxMessage(message: OutboxMessage): string {
  return Buffer.from(JSON.stringify({ id: message.id })).toString('base64');
}

/**
 * Reads the trigger's payload: the host hands over the decoded JSON (an object) or text; a raw queue text may still
 * be base64. Returns undefined for anything that is not `{ id: <message id> }` (see messageIds.ts).
 */
export function parseOutboxMessage(value: unknown): OutboxMessage | undefined {
  let candidate = value;
  if (Buffer.isBuffer(candidate)) {
    if (candidate.length > MAX_OUTBOX_MESSAGE_CHARS) return undefined;
    candidate = candidate.toString('utf8');
  }
  if (typeof candidate === 'string') {
    if (candidate.length > MAX_OUTBOX_MESSAGE_CHARS) return undefined;
    const text = candidate.trim().startsWith('{') ? candidate : Buffer.from(candidate, 'base64').toString('utf8');
    try {
      candidate = JSON.parse(text);
    } catch {
      return undefined;
    }
  }
  // Only `id` is read, never walked: an object the host parsed, however deep, costs nothing more here.
  if (candidate === null || typeof candidate !== 'object' || Array.isArray(candidate)) return undefined;
  const id = (candidate as { id?: unknown }).id;
  return typeof id === 'string' && isMessageId(id) ? { id } : undefined;
}

/** Sends `{ id }` to `queue`, invisible for `delaySeconds` (clamped to 0…7 days). */
export async function enqueueOutbox(queue: QueueClient, id: string, delaySeconds = 0): Promise<void> {
  const visibilityTimeout = Math.max(0, Math.min(MAX_VISIBILITY_SECONDS, Math.ceil(delaySeconds)));
  await queue.sendMessage(encodeOutboxMessage({ id }), {
    ...(visibilityTimeout > 0 ? { visibilityTimeout } : {}),
    messageTimeToLive: NEVER_EXPIRES,
  });
}
