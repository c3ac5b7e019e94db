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
 * mail-batches. The batch is stored there in chunks (see batchPayloadStore.ts), with every recipient's address, key
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
import { randomUUID } from 'node:crypto';
import { BatchPayloadStore, type BatchFields, type BatchHeader, type PreparedRecipient } from './batchBlobStore';
import {
  BatchStore,
  listRejections,
  type BatchStatus,
  type BatchSource,
  type BatchSummary,
  type Rejection,
  type StoredSummary,
  type SummaryChanges,
} from './batchStore';
import type { Config } from '../config';
import { MailError, type ClassifiedError, type FieldProblem } from '../errors';
import { silentLogger, type Logger } from '../logger';
import { enqueueBatchReference, encodeNotificationMessage, parseNotificationMessage } from './batchQueue';
import {
  BATCH_ID,
  batchContentHash,
  deriveBatchId,
  parseNotificationBatch,
  type BatchRules,
  type NotificationBatch,
  type NotificationCategory,
} from './batchRequest';
import type { Outbox } from '../outbox/outbox';
import { MAX_VISIBILITY_SECONDS } from '../outbox/outboxQueue';
import type { SendRequest } from '../outbox/sendRequest';
import { prepareRecipients } from './recipientPreparation';
import type { MailStatus, StatusStore } from '../outbox/statusStore';
import { NOTIFICATIONS_POISON_QUEUE, type StorageClients } from '../storage/storageClients';
import type { Telemetry } from '../telemetry';
import type { TemplateRenderer } from '../templates/templateRenderer';

/** Recipients per invocation: 500 × 4 storage writes at 16 in flight is seconds, far inside functionTimeout (10 min). */
export const DEFAULT_CHUNK_SIZE = 500;
/** Recipients accepted at once (each is 4 sequential storage writes: claim, payload, record, queue message). */
export const DEFAULT_CONCURRENCY = 16;
/** Re-reads after a lost ETag race before giving up to the host's retry. */
const MAX_RACES = 5;
const TERMINAL: ReadonlySet<BatchStatus> = new Set(['complete', 'failed']);

/**
 * Pacing for a whole batch: asked once per chunk for `count` send slots; recipient i of the chunk becomes due
 * at `startAt + i * intervalMs` (epoch milliseconds), or at the batch's sendAt when that is later.
 */
export type BatchSchedule = (count: number) => Promise<{ startAt: number; intervalMs: number }>;

export interface NotificationsDeps {
  config: Pick<Config, 'allowedFrom'>;
  renderer: Pick<TemplateRenderer, 'has'>;
  outbox: Pick<Outbox, 'render' | 'acceptRequest'>;
  status: Pick<StatusStore, 'countByBatch'>;
  storage: Pick<
    StorageClients,
    'notificationsQueue' | 'notificationsPoisonQueue' | 'batches' | 'batchTable' | 'ensureResources'
  >;
  telemetry?: Telemetry;
  logger?: Logger;
  now?: () => number;
  newId?: () => string;
  chunkSize?: number;
  concurrency?: number;
  schedule?: BatchSchedule;
}

/** The queue trigger's metadata, for logs and telemetry. */
export interface FanoutContext {
  dequeueCount?: number;
  invocationId?: string;
}

export type FanoutOutcome =
  | { outcome: 'fanned-out'; batchId: string; offset: number; next: number; status: BatchStatus }
  /** Nothing to do: the batch is finished, this copy is stale or lost a race, or the batchId holds another batch. */
  | { outcome: 'skipped'; batchId: string; reason: 'finished' | 'stale' | 'ahead' | 'raced' }
  /** A continuation was missing (a crash after recording progress) and has been enqueued. */
  | { outcome: 'resumed'; batchId: string; offset: number }
  /**
   * The batch cannot be fanned out (invalid, its stored copy is gone, or its batchId holds another batch: then it is
   * recorded as the failed batch `rejectedAs`, and the message goes to the poison queue); recorded as failed.
   */
  | { outcome: 'failed'; batchId: string; error: ClassifiedError; rejectedAs?: string };

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

type CodedRejection = Rejection & { code: string };
type Prepared = { index: number; request: SendRequest } | { rejection: CodedRejection };

/** What one fan-out invocation works on: the batch fields and the prepared recipients from its offset on. */
interface Chunk {
  fields: BatchFields;
  total: number;
  /** Recipients [offset, offset + recipients.length). */
  recipients: PreparedRecipient[];
}

/** Where a chunk comes from: the queue message itself (a producer's batch), or the stored batch in mail-batches. */
interface ChunkSource {
  /** The chunk starting at `offset`, or undefined when the stored batch is gone or is another batch. */
  chunk(offset: number): Promise<Chunk | undefined>;
  /** Stores the whole batch, so that a continuation can read it (only for a batch that came inline). */
  store?: () => Promise<{ written: true } | { written: false; contentHash: string | undefined }>;
}

const problem = (path: string, message: string): MailError =>
  new MailError('INVALID_MESSAGE', `Invalid notification batch: ${path}: ${message}`, {
    details: [{ path, message }],
  });

/** The batch without its recipients. */
function fieldsOf(batch: NotificationBatch): BatchFields {
  const { recipients: _recipients, ...fields } = batch;
  return fields;
}

/** Runs `task(0…count-1)` with at most `limit` in flight; stops starting new ones after a failure and rethrows it. */
async function runBounded(count: number, limit: number, task: (i: number) => Promise<void>): Promise<void> {
  let next = 0;
  let failure: { error: unknown } | undefined;
  const worker = async () => {
    while (!failure && next < count) {
      const i = next++;
      try {
        await task(i);
      } catch (error) {
        failure ??= { error };
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, count) }, worker));
  if (failure) throw failure.error;
}

/** The batch-level field a recipient's problem belongs to: its address, its data, its key. */
function recipientField(index: number, path: string | undefined, gaveKey: boolean): string {
  const at = `recipients[${index}]`;
  if (!path || path === '(body)') return at;
  if (path === 'to' || path.startsWith('to[')) return `${at}.to`;
  if (path === 'data' || path.startsWith('data.') || path.startsWith('data[')) return `${at}.${path}`;
  // The only thing that grows one recipient's message is its data.
  if (path === 'attachments') return `${at}.data`;
  if (path === 'idempotencyKey') return gaveKey ? `${at}.idempotencyKey` : `${at}.to`;
  return `${at}.${path}`;
}

/** Fans notification batches out into the outbox, and reports on them. */
export class Notifications {
  private readonly summaries: BatchStore;
  private readonly payloads: BatchPayloadStore;
  private readonly logger: Logger;
  private readonly now: () => number;
  private readonly newId: () => string;
  private readonly chunkSize: number;
  private readonly concurrency: number;

  constructor(private readonly deps: NotificationsDeps) {
    this.summaries = new BatchStore(deps.storage.batchTable);
    this.payloads = new BatchPayloadStore(deps.storage.batches);
    this.logger = deps.logger ?? silentLogger;
    this.now = deps.now ?? Date.now;
    this.newId = deps.newId ?? randomUUID;
    this.chunkSize = Math.max(1, deps.chunkSize ?? DEFAULT_CHUNK_SIZE);
    this.concurrency = Math.max(1, deps.concurrency ?? DEFAULT_CONCURRENCY);
  }

  private rules(allowPastSendAt: boolean): BatchRules {
    return {
      now: this.now(),
      hasTemplate: (name) => this.deps.renderer.has(name),
      allowedFrom: this.deps.config.allowedFrom,
      allowPastSendAt,
    };
  }

  private iso(): string {
    return new Date(this.now()).toISOString();
  }

  // -------------------------------------------------------------------------------------------------------------
  // POST /api/notifications

  /**
   * Accepts a POST /api/notifications body: stores the batch in mail-batches, creates its summary and enqueues a
   * reference on mail-notifications. Throws MailError INVALID_MESSAGE, TEMPLATE_NOT_FOUND or SENDER_NOT_ALLOWED
   * (details naming the field), or IDEMPOTENCY_CONFLICT when the batchId holds a different batch.
   */
  async submit(body: unknown): Promise<SubmitResult> {
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
    this.trackAccepted(created);
    await enqueueBatchReference(this.deps.storage.notificationsQueue, batchId, 0);
    this.logger.info('notification batch accepted', { batchId, recipients: created.total });
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

  // -------------------------------------------------------------------------------------------------------------
  // Queue mail-notifications

  /**
   * Handles one mail-notifications message: a batch (from a producer) or a reference `{ batchId, offset }`. Resolves
   * when the message may be acknowledged — an invalid batch included, which is recorded as failed with its reason,
   * since retrying cannot fix it. Rejects only when storage fails, so that the host retries and finally poisons it.
   */
  async handleMessage(message: unknown, context: FanoutContext = {}): Promise<FanoutOutcome> {
    await this.deps.storage.ensureResources();
    const parsed = parseNotificationMessage(message);
    if (parsed.kind === 'unreadable') {
      return this.recordInvalid(
        deriveBatchId(parsed.text),
        problem('(message)', 'the queue message is not a JSON object (base64-encoded or plain JSON)'),
      );
    }
    if (parsed.kind === 'reference') return this.continueStored(parsed.batchId, parsed.offset, context);
    return this.startInline(parsed.content, context);
  }

  private async startInline(content: Record<string, unknown>, context: FanoutContext): Promise<FanoutOutcome> {
    const given = typeof content.batchId === 'string' && BATCH_ID.test(content.batchId) ? content.batchId : undefined;
    let batch: NotificationBatch;
    try {
      batch = parseNotificationBatch(content, this.rules(true)).batch;
    } catch (error) {
      if (error instanceof MailError && !error.transient) {
        return this.recordInvalid(given ?? deriveBatchId(content), error);
      }
      throw error;
    }
    const batchId = given ?? deriveBatchId(content);
    const contentHash = batchContentHash(batch);
    let prepared: PreparedRecipient[] | undefined;
    const source: ChunkSource = {
      chunk: async (offset) => {
        prepared ??= prepareRecipients(batchId, batch.recipients);
        return {
          fields: fieldsOf(batch),
          total: batch.recipients.length,
          recipients: prepared.slice(offset, offset + this.chunkSize),
        };
      },
      store: () => {
        prepared ??= prepareRecipients(batchId, batch.recipients);
        return this.payloads.put(this.header(batchId, contentHash, batch), prepared);
      },
    };
    for (let race = 0; race < MAX_RACES; race++) {
      let summary = await this.summaries.get(batchId);
      if (!summary) {
        const createdAt = this.iso();
        await this.summaries.indexForRetention(batchId, createdAt);
        summary = await this.summaries.create(
          this.newSummary(batchId, 'queue', batch, contentHash, 'fanning-out', false, createdAt),
        );
        if (!summary) continue; // another copy created it first: read theirs
        this.trackAccepted(summary, context);
      }
      if (summary.contentHash !== contentHash) return this.rejectConflict(batchId, content, context);
      return this.advance(summary, 0, source, context);
    }
    throw new Error(`Batch ${batchId}: lost the summary race ${MAX_RACES} times; the host retries`);
  }

  private async continueStored(batchId: string, offset: number, context: FanoutContext): Promise<FanoutOutcome> {
    const summary = await this.summaries.get(batchId);
    if (!summary) {
      return this.recordInvalid(
        batchId,
        problem(
          'batchId',
          `no batch ${batchId} is stored: a message with only batchId and offset continues a stored batch; a new batch needs template and recipients`,
        ),
      );
    }
    let header: BatchHeader | undefined;
    const source: ChunkSource = {
      chunk: async (from) => {
        header ??= await this.payloads.header(batchId);
        if (!header || header.contentHash !== summary.contentHash) return undefined;
        const index = Math.floor(from / header.chunkSize);
        const recipients = await this.payloads.chunk(batchId, index);
        if (!recipients) return undefined;
        const skip = from - index * header.chunkSize;
        return { fields: header.batch, total: header.total, recipients: recipients.slice(skip) };
      },
    };
    return this.advance(summary, offset, source, context);
  }

  /** Runs the chunk at `offset` if it is the batch's next one; otherwise decides what this copy is (see top). */
  private async advance(
    summary: StoredSummary,
    offset: number,
    source: ChunkSource,
    context: FanoutContext,
  ): Promise<FanoutOutcome> {
    const batchId = summary.batchId;
    if (TERMINAL.has(summary.status)) return { outcome: 'skipped', batchId, reason: 'finished' };
    if (offset < summary.offset) {
      if (summary.continuation === summary.offset) return { outcome: 'skipped', batchId, reason: 'stale' };
      // Progress was recorded but its continuation never was: the invocation died in between. Enqueue it here.
      await this.enqueueContinuation(summary, summary.offset);
      this.logger.warn('re-enqueued the missing continuation of a notification batch', {
        batchId,
        offset: summary.offset,
      });
      return { outcome: 'resumed', batchId, offset: summary.offset };
    }
    if (offset > summary.offset) {
      // Continuations are enqueued after the progress they continue is recorded, so this is no copy of ours.
      this.logger.warn('a notification continuation is ahead of its batch; ignored', {
        batchId,
        offset,
        recorded: summary.offset,
      });
      return { outcome: 'skipped', batchId, reason: 'ahead' };
    }

    const chunk = await source.chunk(offset);
    if (!chunk) {
      return this.failBatch(
        summary,
        new MailError('PAYLOAD_MISSING', `The stored batch mail-batches/${batchId}/ is missing or not this batch`, {
          hint: 'The batch blobs were deleted (by hand or by a lifecycle rule shorter than the fan-out) or replaced. Send the recipients not yet processed again as a new batch.',
        }),
      );
    }
    const result = await this.fanOutChunk(batchId, chunk, offset, context);
    const next = offset + result.processed;
    const done = next >= chunk.total;
    let stored = summary.stored;
    if (!done && !stored && source.store) {
      // The continuation reads the batch from the blobs: write them before the progress that the continuation follows.
      const put = await source.store();
      if (!put.written && put.contentHash !== summary.contentHash) {
        return this.failBatch(
          summary,
          new MailError('INVALID_MESSAGE', `mail-batches/${batchId}/ holds a different batch`, {
            details: [{ path: 'batchId', message: 'already used for a different batch' }],
          }),
        );
      }
      stored = true;
    }
    return this.recordProgress(summary, offset, result, next, done, stored, context);
  }

  /** Step 3: the ETag-guarded progress write; the copy that wins it reports the chunk and enqueues the next one. */
  private async recordProgress(
    initial: StoredSummary,
    offset: number,
    chunk: { accepted: number; rejections: CodedRejection[] },
    next: number,
    done: boolean,
    stored: boolean,
    context: FanoutContext,
  ): Promise<FanoutOutcome> {
    const batchId = initial.batchId;
    let current = initial;
    for (let race = 0; race < MAX_RACES; race++) {
      const at = this.iso();
      const accepted = current.accepted + chunk.accepted;
      const status: BatchStatus = done ? (accepted > 0 ? 'complete' : 'failed') : 'fanning-out';
      const changes: SummaryChanges = {
        status,
        offset: next,
        accepted,
        rejected: current.rejected + chunk.rejections.length,
        rejections: listRejections(current.rejections, chunk.rejections),
        stored,
        continuation: undefined,
        updatedAt: at,
        ...(done ? { completedAt: at } : {}),
        ...(status === 'failed'
          ? {
              error: new MailError('INVALID_MESSAGE', 'Every recipient of the batch was rejected; see rejections', {
                details: [{ path: 'recipients', message: 'every recipient was rejected' }],
              }).toJSON(),
            }
          : {}),
      };
      const written = await this.summaries.update(current, changes);
      if (written) {
        for (const r of chunk.rejections) {
          this.deps.telemetry?.trackEvent('NotificationRecipientRejected', {
            batchId,
            index: r.index,
            errorCode: r.code,
            source: 'notification',
            ...(written.template ? { template: written.template } : {}),
            ...(context.invocationId ? { invocationId: context.invocationId } : {}),
          });
        }
        this.logger.info('notification batch chunk fanned out', {
          batchId,
          offset,
          next,
          total: written.total,
          accepted: chunk.accepted,
          rejected: chunk.rejections.length,
        });
        if (!done) await this.enqueueContinuation(written, next);
        return { outcome: 'fanned-out', batchId, offset, next, status };
      }
      const reread = await this.summaries.get(batchId);
      if (!reread || reread.offset !== offset || TERMINAL.has(reread.status)) {
        return { outcome: 'skipped', batchId, reason: 'raced' };
      }
      current = reread; // only the marker or another field moved: the chunk is still ours to record
    }
    throw new Error(`Batch ${batchId}: lost the summary race ${MAX_RACES} times; the host retries`);
  }

  /** Steps 4 and 5: enqueue the continuation at `next`, then note on the summary that it exists. */
  private async enqueueContinuation(summary: StoredSummary, next: number): Promise<void> {
    await enqueueBatchReference(this.deps.storage.notificationsQueue, summary.batchId, next);
    let current: StoredSummary | undefined = summary;
    for (let race = 0; race < MAX_RACES && current; race++) {
      if (current.offset !== next || current.continuation === next || TERMINAL.has(current.status)) return;
      if (await this.summaries.update(current, { continuation: next, updatedAt: this.iso() })) return;
      current = await this.summaries.get(summary.batchId);
    }
  }

  /** Fans out the chunk's recipients: prepares each, reserves pacing, accepts into the outbox. */
  private async fanOutChunk(
    batchId: string,
    chunk: Chunk,
    offset: number,
    context: FanoutContext,
  ): Promise<{ processed: number; accepted: number; rejections: CodedRejection[] }> {
    const count = Math.min(this.chunkSize, chunk.recipients.length, chunk.total - offset);
    const rejections: CodedRejection[] = [];
    const ready: Array<{ index: number; request: SendRequest }> = [];
    for (let i = 0; i < count; i++) {
      const prepared = this.prepare(chunk.fields, offset + i, chunk.recipients[i] as PreparedRecipient);
      if ('rejection' in prepared) rejections.push(prepared.rejection);
      else ready.push(prepared);
    }
    // Slots only for the recipients that will be accepted, so that a rejected one wastes none.
    const slots = this.deps.schedule && ready.length > 0 ? await this.deps.schedule(ready.length) : undefined;
    let accepted = 0;
    await runBounded(ready.length, this.concurrency, async (j) => {
      const { index, request } = ready[j] as { index: number; request: SendRequest };
      const holdSeconds = slots ? this.holdSeconds(slots.startAt + j * slots.intervalMs) : 0;
      try {
        await this.deps.outbox.acceptRequest(request, {
          source: 'notification',
          batchId,
          ...(holdSeconds > 0 ? { holdSeconds } : {}),
        });
        accepted += 1;
      } catch (error) {
        const rejection = this.rejectionOf(index, chunk.recipients[index - offset], error);
        if (!rejection) throw error;
        rejections.push(rejection);
      }
    });
    if (context.dequeueCount && context.dequeueCount > 1) {
      this.logger.info('notification chunk re-run after a failed attempt', {
        batchId,
        offset,
        dequeueCount: context.dequeueCount,
      });
    }
    return { processed: count, accepted, rejections: rejections.sort((a, b) => a.index - b.index) };
  }

  /** Seconds until `dueAt` (epoch ms), at most as long as a queue message can stay invisible. */
  private holdSeconds(dueAt: number): number {
    return Math.min(MAX_VISIBILITY_SECONDS, Math.max(0, (dueAt - this.now()) / 1000));
  }

  /** Builds recipient `index`'s send request and renders it once, so that a bad one is rejected before pacing. */
  private prepare(fields: BatchFields, index: number, recipient: PreparedRecipient): Prepared {
    const reject = (field: string, reason: string): Prepared => ({
      rejection: { index, field, reason, code: 'INVALID_MESSAGE' },
    });
    if (!recipient.address || recipient.key === undefined) {
      return reject(`recipients[${index}].to`, recipient.addressError ?? 'is not a valid email address');
    }
    if (recipient.duplicateOf !== undefined) {
      const what = recipient.idempotencyKey !== undefined ? 'idempotencyKey' : 'to';
      return reject(
        `recipients[${index}].${what}`,
        `duplicate of recipients[${recipient.duplicateOf}] (the same ${what === 'to' ? 'address' : 'idempotencyKey'}): sent once`,
      );
    }
    const request: SendRequest = {
      ...(fields.from ? { from: fields.from } : {}),
      to: [recipient.address],
      cc: [],
      bcc: [],
      content: {
        kind: 'template',
        template: fields.template,
        // The recipient's top-level keys replace the shared ones.
        data: { ...fields.data, ...recipient.data },
        ...(fields.subject !== undefined ? { subject: fields.subject } : {}),
      },
      attachments: [],
      headers: {},
      idempotencyKey: recipient.key,
      ...(fields.sendAt ? { sendAt: new Date(fields.sendAt) } : {}),
    };
    try {
      this.deps.outbox.render(request);
    } catch (error) {
      const rejection = this.rejectionOf(index, recipient, error);
      if (!rejection) throw error;
      return { rejection };
    }
    return { index, request };
  }

  /** A recipient's own problem as a rejection; undefined for anything else (storage), which must be thrown. */
  private rejectionOf(
    index: number,
    recipient: PreparedRecipient | undefined,
    error: unknown,
  ): CodedRejection | undefined {
    if (!(error instanceof MailError) || error.transient) return undefined;
    const gaveKey = recipient?.idempotencyKey !== undefined;
    const detail: FieldProblem | undefined = error.details?.[0];
    const field = recipientField(index, detail?.path, gaveKey);
    let reason = detail?.message ?? error.message;
    if (error.code === 'IDEMPOTENCY_CONFLICT') {
      reason = gaveKey
        ? 'idempotencyKey was already used for a different message'
        : 'a different message for this address already exists in this batch';
    }
    return { index, field, reason, code: error.code };
  }

  // -------------------------------------------------------------------------------------------------------------
  // Failures

  /** The error for a queue batch whose batchId already holds a different batch, recorded as `rejectedAs`. */
  private conflictOnQueue(batchId: string, rejectedAs: string): MailError {
    return new MailError(
      'IDEMPOTENCY_CONFLICT',
      `Batch ${batchId} already exists with different content: this queue message was not fanned out (recorded as batch ${rejectedAs}, and moved to ${NOTIFICATIONS_POISON_QUEUE})`,
      {
        details: [{ path: 'batchId', message: 'already used for a different batch' }],
        hint: 'Reuse a batchId only to retry the same batch; give a new batch a new batchId (or none). The message is in the poison queue as it was sent.',
      },
    );
  }

  /**
   * A queue batch reusing the batchId of a different batch, as the HTTP path's 409: it is recorded as a failed batch
   * of its own (its content's derived id, which the log names), counted as `BatchRejected`, and moved to the poison
   * queue as it was sent. The batch that owns the batchId is not touched.
   */
  private async rejectConflict(
    batchId: string,
    content: Record<string, unknown>,
    context: FanoutContext,
  ): Promise<FanoutOutcome> {
    const rejectedAs = deriveBatchId(content);
    const error = this.conflictOnQueue(batchId, rejectedAs);
    await this.recordInvalid(rejectedAs, error);
    await this.deps.storage.notificationsPoisonQueue.sendMessage(encodeNotificationMessage(content), {
      messageTimeToLive: -1,
    });
    this.deps.telemetry?.trackEvent('BatchRejected', {
      batchId,
      source: 'notification',
      errorCode: error.code,
      ...(context.invocationId ? { invocationId: context.invocationId } : {}),
    });
    this.logger.error('a queue batch reuses the batchId of a different batch; rejected to the poison queue', {
      batchId,
      rejectedAs,
      invocationId: context.invocationId,
    });
    return { outcome: 'failed', batchId, error: error.toJSON(), rejectedAs };
  }

  /** Records a batch that cannot be fanned out at all as failed, unless its batchId already holds a batch. */
  private async recordInvalid(batchId: string, error: MailError): Promise<FanoutOutcome> {
    const at = this.iso();
    await this.summaries.indexForRetention(batchId, at);
    const created = await this.summaries.create({
      batchId,
      status: 'failed',
      source: 'queue',
      total: 0,
      accepted: 0,
      rejected: 0,
      rejections: [],
      offset: 0,
      stored: false,
      createdAt: at,
      updatedAt: at,
      completedAt: at,
      error: error.toJSON(),
    });
    // Paths only: the messages may quote the caller's values.
    const fields = (error.details ?? []).slice(0, 10).map((d) => d.path);
    if (created) this.logger.error('notification batch is invalid; recorded as failed', { batchId, fields });
    else this.logger.warn('invalid notification message for an existing batch; ignored', { batchId, fields });
    return { outcome: 'failed', batchId, error: error.toJSON() };
  }

  private async failBatch(summary: StoredSummary, error: MailError): Promise<FanoutOutcome> {
    let current: StoredSummary | undefined = summary;
    for (let race = 0; race < MAX_RACES && current && !TERMINAL.has(current.status); race++) {
      const at = this.iso();
      const written = await this.summaries.update(current, {
        status: 'failed',
        error: error.toJSON(),
        completedAt: at,
        updatedAt: at,
      });
      if (written) break;
      current = await this.summaries.get(summary.batchId);
    }
    this.logger.error('notification batch failed', { batchId: summary.batchId, code: error.code });
    return { outcome: 'failed', batchId: summary.batchId, error: error.toJSON() };
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
        await this.recordInvalid(rejectedAs, this.conflictOnQueue(batchId, rejectedAs));
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
    for (let race = 0; race < MAX_RACES; race++) {
      const summary = await this.summaries.get(batchId);
      if (!summary) {
        await this.recordInvalid(batchId, error);
        continue;
      }
      if (TERMINAL.has(summary.status)) return summary;
      const now = this.iso();
      const written = await this.summaries.update(summary, {
        status: 'failed',
        error: error.toJSON(),
        completedAt: now,
        updatedAt: now,
      });
      if (written) {
        this.logger.error('notification batch poisoned', { batchId, dequeueCount: context.dequeueCount });
        return written;
      }
    }
    throw new Error(`Batch ${batchId}: lost the summary race ${MAX_RACES} times while poisoning`);
  }

  // -------------------------------------------------------------------------------------------------------------
  // GET /api/notifications/{batchId}

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

  // -------------------------------------------------------------------------------------------------------------

  private newSummary(
    batchId: string,
    source: BatchSource,
    batch: NotificationBatch,
    contentHash: string,
    status: BatchStatus,
    stored: boolean,
    createdAt: string,
  ): BatchSummary {
    const at = createdAt;
    return {
      batchId,
      status,
      source,
      template: batch.template,
      category: batch.category,
      total: batch.recipients.length,
      accepted: 0,
      rejected: 0,
      rejections: [],
      offset: 0,
      contentHash,
      stored,
      createdAt: at,
      updatedAt: at,
    };
  }

  /** The content hash of a queue batch, or undefined when it is not a valid batch. */
  private contentHashOf(content: Record<string, unknown>): string | undefined {
    try {
      return batchContentHash(parseNotificationBatch(content, this.rules(true)).batch);
    } catch {
      return undefined;
    }
  }

  /** The header of batch `batchId` as stored in mail-batches. */
  private header(batchId: string, contentHash: string, batch: NotificationBatch): BatchHeader {
    return { batchId, contentHash, chunkSize: this.chunkSize, total: batch.recipients.length, batch: fieldsOf(batch) };
  }

  private trackAccepted(summary: BatchSummary, context: FanoutContext = {}): void {
    this.deps.telemetry?.trackEvent('BatchAccepted', {
      batchId: summary.batchId,
      source: 'notification',
      ...(summary.template ? { template: summary.template } : {}),
      recipientCount: summary.total,
      ...(context.invocationId ? { invocationId: context.invocationId } : {}),
    });
  }
}
