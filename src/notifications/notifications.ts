/**
 * Batch notifications: a batch fans out into one outbox message per recipient, in chunks.
 *
 * Ids and keys. A batch's id is the one it gives, a UUID for POST /api/notifications, or for a queue message without
 * one `q-` + a hash of its content, so that every redelivery of a message is the same batch. Each recipient's outbox
 * idempotency key is its own `idempotencyKey`, else `nb-` + hash(batchId, lower-cased address). Running any part of
 * the fan-out again therefore finds the outbox messages it created before: no duplicates, whatever is redelivered.
 *
 * Chunks. One invocation fans out at most `chunkSize` recipients (bounded concurrency against storage), records the
 * progress in the batch summary, then enqueues a continuation `{ batchId, offset }` that references the batch in
 * mail-batches. The batch is stored there in chunks (see batchBlobStore.ts), with every recipient's address, key
 * and duplicate decided once when it is stored, so a continuation reads the batch fields and its own chunk only. A chunk is processed only by a message whose offset equals the summary's; the progress write is
 * ETag-guarded, so of two copies fanning out the same chunk exactly one records it (its counts, its rejections) and
 * enqueues the next continuation; the other stops.
 *
 * Write order per chunk, and what a crash between two writes leaves:
 *
 * 1. outbox messages of the chunk — a crash: the message is redelivered, finds the same offset, and re-runs the
 *    chunk (idempotent).
 * 2. the batch blobs, if a continuation will need them and the batch came inline on the queue.
 * 3. progress (offset = next, counts, rejections; ETag) — a crash after it: the redelivered message finds an offset
 *    past its own and no continuation on record, so it enqueues the continuation itself.
 * 4. continuation message, then 5. `continuation = next` on the summary — a crash between 4 and 5 can enqueue the
 *    continuation twice; the two copies race for the same chunk and one of them stops at step 3.
 *
 * Every batch is listed in the retention index (BatchStore.indexForRetention) before anything else of it is written,
 * so that the retention timer finds whatever a batch leaves behind.
 */

import { type BatchStatus, type Rejection, type StoredSummary } from './batchStore';
import { MailError, type ClassifiedError } from '../errors';
import { enqueueBatchReference, parseNotificationMessage } from './batchQueue';
import {
  BATCH_ID,
  batchContentHash,
  deriveBatchId,
  parseNotificationBatch,
  type NotificationCategory,
} from './batchRequest';
import { prepareRecipients } from './recipientPreparation';
import type { MailStatus } from '../outbox/statusStore';
import { LOST_RACE, MAX_RACES, retryLostRaces } from '../storage/etagRetry';
import { BatchLedger, TERMINAL, type FanoutContext, type FanoutOutcome, type NotificationsDeps } from './batchLedger';
import { Fanout } from './fanout';

export {
  DEFAULT_CHUNK_SIZE,
  DEFAULT_CONCURRENCY,
  type BatchSchedule,
  type FanoutContext,
  type FanoutOutcome,
  type FanoutProgress,
  type NotificationsDeps,
} from './batchLedger';

export interface SubmitResult {
  batchId: string;
  summary: StoredSummary;
  /** True when an earlier request with this batchId and the same content created the batch. */
  replayed: boolean;
}

/** What GET /api/notifications/{batchId} shows. */
export interface BatchView {
  batchId: string;
  status: BatchStatus;
  template?: string;
  category?: NotificationCategory;
  total: number;
  /** Recipients fanned out so far (accepted or rejected). */
  processed: number;
  accepted: number;
  rejected: number;
  rejections: Rejection[];
  /** Rejections counted in `rejected` but not listed. */
  rejectionsOmitted?: number;
  /** The batch's outbox messages by status. */
  counts: Record<MailStatus, number>;
  createdAt: string;
  completedAt?: string;
  error?: ClassifiedError;
}

/** Notification batches: accepted over HTTP, fanned out from the queue (see fanout.ts), poisoned, and reported on. */
export class Notifications extends BatchLedger {
  private readonly fanout: Fanout;

  constructor(deps: NotificationsDeps) {
    super(deps);
    this.fanout = new Fanout(deps);
  }

  /**
   * Accepts a POST /api/notifications body: stores the batch in mail-batches, creates its summary and enqueues a
   * reference on mail-notifications. Throws MailError INVALID_MESSAGE, TEMPLATE_NOT_FOUND or SENDER_NOT_ALLOWED
   * (details naming the field), or IDEMPOTENCY_CONFLICT when the batchId holds a different batch.
   */
  async submit(body: unknown, invocation: FanoutContext = {}): Promise<SubmitResult> {
    const { batchId: given, batch } = parseNotificationBatch(body, this.rules(false));
    await this.deps.storage.ensureResources();
    const batchId = given ?? this.newId();
    const contentHash = batchContentHash(batch);
    const existing = await this.summaries.get(batchId);
    if (existing) return this.replay(existing, contentHash);
    // Index, blobs, summary, queue message: a reference never exists without the batch it points at.
    const createdAt = this.iso();
    await this.summaries.indexForRetention(batchId, createdAt);
    const put = await this.payloads.put(
      this.header(batchId, contentHash, batch),
      prepareRecipients(batchId, batch.recipients),
    );
    if (!put.written && put.contentHash !== contentHash) throw this.conflict(batchId);
    const created = await this.summaries.create(
      this.newSummary(batchId, 'http', batch, contentHash, 'accepted', true, createdAt),
    );
    if (!created) {
      const again = await this.summaries.get(batchId);
      if (!again) throw new Error(`Batch summary ${batchId} was reported to exist but cannot be read`);
      return this.replay(again, contentHash);
    }
    this.trackAccepted(created, invocation);
    await enqueueBatchReference(this.deps.storage.notificationsQueue, batchId, 0);
    this.log(invocation).info('notification batch accepted', { batchId, recipients: created.total });
    return { batchId, summary: created, replayed: false };
  }

  /** The same batchId again: the same content is a replay (re-enqueued if it never started), other content a 409. */
  private async replay(existing: StoredSummary, contentHash: string): Promise<SubmitResult> {
    if (existing.contentHash !== contentHash) throw this.conflict(existing.batchId);
    // A crash between the summary and the queue message leaves an accepted batch with nothing to start it.
    if (existing.status === 'accepted' && existing.offset === 0) {
      await enqueueBatchReference(this.deps.storage.notificationsQueue, existing.batchId, 0);
    }
    return { batchId: existing.batchId, summary: existing, replayed: true };
  }

  private conflict(batchId: string): MailError {
    return new MailError('IDEMPOTENCY_CONFLICT', `Batch ${batchId} already exists with different content`, {
      details: [{ path: 'batchId', message: 'already used for a different batch' }],
      hint: 'Reuse a batchId only to retry the same batch; give a new batch a new batchId (or none).',
    });
  }

  /**
   * Handles one mail-notifications message: a batch (from a producer) or a reference `{ batchId, offset }`. Resolves
   * when the message may be acknowledged — an invalid batch included, which is recorded as failed with its reason,
   * since retrying cannot fix it. Rejects only when storage fails, so that the host retries and finally poisons it.
   */
  handleMessage(message: unknown, context: FanoutContext = {}): Promise<FanoutOutcome> {
    return this.fanout.handleMessage(message, context);
  }

  /**
   * Handles a message the host moved to mail-notifications-poison: its batch becomes `failed` with reason
   * "poison: …", unless it already finished.
   */
  async markPoisoned(message: unknown, context: FanoutContext = {}): Promise<StoredSummary | undefined> {
    await this.deps.storage.ensureResources();
    const parsed = parseNotificationMessage(message);
    const batchId =
      parsed.kind === 'reference'
        ? parsed.batchId
        : parsed.kind === 'unreadable'
          ? deriveBatchId(parsed.text)
          : typeof parsed.content.batchId === 'string' && BATCH_ID.test(parsed.content.batchId)
            ? parsed.content.batchId
            : deriveBatchId(parsed.content);
    if (parsed.kind === 'batch' && batchId !== deriveBatchId(parsed.content)) {
      // A batch whose batchId holds a different batch (rejected by the fan-out, or poisoned for another reason) is not
      // that batch's poison: record it as its own failed batch and leave the other alone.
      const existing = await this.summaries.get(batchId);
      const hash = this.contentHashOf(parsed.content);
      if (existing && hash !== undefined && existing.contentHash !== hash) {
        const rejectedAs = deriveBatchId(parsed.content);
        await this.recordInvalid(rejectedAs, this.conflictOnQueue(batchId, rejectedAs), context);
        return this.summaries.get(rejectedAs);
      }
    }
    const at = parsed.kind === 'reference' ? ` at recipient ${parsed.offset}` : '';
    const error = new MailError(
      'POISON_MESSAGE',
      `poison: the fan-out failed on this batch message ${context.dequeueCount ?? 'maxDequeueCount'} times${at}`,
      {
        hint: 'notificationsFanout failed on this message maxDequeueCount times (host.json extensions.queues), usually because storage was unreachable. See its function logs; then send the recipients not yet processed (GET /api/notifications/{batchId} shows how many were) as a new batch.',
      },
    );
    return retryLostRaces({
      maxRaces: MAX_RACES,
      attempt: async () => {
        const summary = await this.summaries.get(batchId);
        if (!summary) {
          await this.recordInvalid(batchId, error, context);
          return LOST_RACE;
        }
        if (TERMINAL.has(summary.status)) return summary;
        const written = await this.summaries.update(summary, this.failedChanges(error));
        if (!written) return LOST_RACE;
        this.log(context).error('notification batch poisoned', { batchId, dequeueCount: context.dequeueCount });
        return written;
      },
      exhausted: () => {
        throw new Error(`Batch ${batchId}: lost the summary race ${MAX_RACES} times while poisoning`);
      },
    });
  }

  /** The batch's summary with its outbox messages counted by status, or undefined when there is no such batch. */
  async view(batchId: string): Promise<BatchView | undefined> {
    await this.deps.storage.ensureResources();
    const s = await this.summaries.get(batchId);
    if (!s) return undefined;
    const counts = await this.deps.status.countByBatch(batchId);
    return {
      batchId: s.batchId,
      status: s.status,
      ...(s.template !== undefined ? { template: s.template } : {}),
      ...(s.category !== undefined ? { category: s.category } : {}),
      total: s.total,
      processed: s.offset,
      accepted: s.accepted,
      rejected: s.rejected,
      rejections: s.rejections,
      ...(s.rejected > s.rejections.length ? { rejectionsOmitted: s.rejected - s.rejections.length } : {}),
      counts,
      createdAt: s.createdAt,
      ...(s.completedAt !== undefined ? { completedAt: s.completedAt } : {}),
      ...(s.error !== undefined ? { error: s.error } : {}),
    };
  }
}
