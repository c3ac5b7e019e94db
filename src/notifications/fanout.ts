/**
 * The fan-out of a notification batch, one chunk per invocation: the queue message's batch or a stored one, each
 * recipient prepared and accepted into the outbox, the progress recorded under the summary's ETag, the next chunk
 * enqueued. (The write order and what a crash leaves are in notifications.ts.)
 */
import { type BatchFields, type BatchHeader, type PreparedRecipient } from './batchBlobStore';
import {
  listRejections,
  type BatchStatus,
  type Rejection,
  type StoredSummary,
  type SummaryChanges,
} from './batchStore';
import { MailError, type FieldProblem } from '../errors';
import { invocationTelemetry } from '../invocation';
import { enqueueBatchReference, encodeNotificationMessage, parseNotificationMessage } from './batchQueue';
import {
  BATCH_ID,
  batchContentHash,
  deriveBatchId,
  parseNotificationBatch,
  type NotificationBatch,
} from './batchRequest';
import { MAX_VISIBILITY_SECONDS } from '../outbox/outboxQueue';
import type { Rendered } from '../outbox/outbox';
import type { SendRequest } from '../outbox/sendRequest';
import { prepareRecipients } from './recipientPreparation';
import { BatchLedger, TERMINAL, fieldsOf, problem, type FanoutContext, type FanoutOutcome } from './batchLedger';
import { LOST_RACE, MAX_RACES, retryLostRaces } from '../storage/etagRetry';

type CodedRejection = Rejection & { code: string };

/**
 * How long an invocation holds the chunk it fans out: well above the slowest chunk measured (seconds), well below
 * the host's retries of a message whose invocation died (5 dequeues, 30 s apart).
 */
const CHUNK_LEASE_MS = 60_000;
type Prepared = { index: number; request: SendRequest; rendered: Rendered } | { rejection: CodedRejection };

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

/** Fans a batch out into the outbox, a chunk at a time. */
export class Fanout extends BatchLedger {
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
        context,
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
        return this.recordInvalid(given ?? deriveBatchId(content), error, context);
      }
      throw error;
    }
    const batchId = given ?? deriveBatchId(content);
    const contentHash = batchContentHash(batch);
    let prepared: PreparedRecipient[] | undefined;
    const source: ChunkSource = {
      // The batch is in memory: nothing to wait for.
      chunk: (offset) => {
        prepared ??= prepareRecipients(batchId, batch.recipients);
        return Promise.resolve({
          fields: fieldsOf(batch),
          total: batch.recipients.length,
          recipients: prepared.slice(offset, offset + this.chunkSize),
        });
      },
      store: () => {
        prepared ??= prepareRecipients(batchId, batch.recipients);
        return this.payloads.put(this.header(batchId, contentHash, batch), prepared);
      },
    };
    return retryLostRaces({
      maxRaces: MAX_RACES,
      attempt: async () => {
        let summary = await this.summaries.get(batchId);
        if (!summary) {
          const createdAt = this.iso();
          await this.summaries.indexForRetention(batchId, createdAt);
          summary = await this.summaries.create(
            this.newSummary(batchId, 'queue', batch, contentHash, 'fanning-out', false, createdAt),
          );
          if (!summary) return LOST_RACE; // another copy created it first: read theirs
          this.trackAccepted(summary, context);
        }
        if (summary.contentHash !== contentHash) return this.rejectConflict(batchId, content, context);
        return this.advance(summary, 0, source, context);
      },
      exhausted: () => {
        throw new Error(`Batch ${batchId}: lost the summary race ${MAX_RACES} times; the host retries`);
      },
    });
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
        context,
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
    initial: StoredSummary,
    offset: number,
    source: ChunkSource,
    context: FanoutContext,
  ): Promise<FanoutOutcome> {
    let summary = initial;
    const batchId = summary.batchId;
    if (TERMINAL.has(summary.status)) return { outcome: 'skipped', batchId, reason: 'finished' };
    if (offset < summary.offset) {
      if (summary.continuation === summary.offset) return { outcome: 'skipped', batchId, reason: 'stale' };
      // Progress was recorded but its continuation never was: the invocation died in between. Enqueue it here.
      await this.enqueueContinuation(summary, summary.offset);
      this.log(context).warn('re-enqueued the missing continuation of a notification batch', {
        batchId,
        offset: summary.offset,
      });
      return { outcome: 'resumed', batchId, offset: summary.offset };
    }
    if (offset > summary.offset) {
      // Continuations are enqueued after the progress they continue is recorded, so this is no copy of ours.
      this.log(context).warn('a notification continuation is ahead of its batch; ignored', {
        batchId,
        offset,
        recorded: summary.offset,
      });
      return { outcome: 'skipped', batchId, reason: 'ahead' };
    }

    const held = await this.holdChunk(summary, offset, context);
    if ('outcome' in held) return held;
    summary = held;
    const chunk = await source.chunk(offset);
    if (!chunk) {
      return this.failBatch(
        summary,
        new MailError('PAYLOAD_MISSING', `The stored batch mail-batches/${batchId}/ is missing or not this batch`, {
          hint: 'The batch blobs were deleted (by hand or by a lifecycle rule shorter than the fan-out) or replaced. Send the recipients not yet processed again as a new batch.',
        }),
        context,
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
          context,
        );
      }
      stored = true;
    }
    return this.recordProgress(summary, offset, result, next, done, stored, context);
  }

  /**
   * Takes the chunk at `offset` for this invocation (an ETag-guarded write on the summary, held CHUNK_LEASE_MS), so
   * that two copies of one message running at once do not both write its outbox messages. A copy that finds the
   * chunk taken stops: the holder's own queue message is the one that finishes it, should the holder die. A
   * redelivered copy (dequeueCount > 1) that finds it taken throws instead, so that the host tries it again after
   * the lease: it may be the holder's own message, back after the holder died.
   */
  private async holdChunk(
    summary: StoredSummary,
    offset: number,
    context: FanoutContext,
  ): Promise<StoredSummary | FanoutOutcome> {
    const batchId = summary.batchId;
    let current: StoredSummary | undefined = summary;
    for (let race = 0; race < MAX_RACES; race++) {
      if (!current || current.offset !== offset || TERMINAL.has(current.status)) {
        return { outcome: 'skipped', batchId, reason: 'raced' };
      }
      const at = this.now();
      if (current.running === offset && current.runningUntil && Date.parse(current.runningUntil) > at) {
        if ((context.dequeueCount ?? 1) > 1) {
          throw new Error(
            `Batch ${batchId}: chunk ${offset} is being fanned out by another invocation; the host retries`,
          );
        }
        return { outcome: 'skipped', batchId, reason: 'raced' };
      }
      const written = await this.summaries.update(current, {
        running: offset,
        runningUntil: new Date(at + CHUNK_LEASE_MS).toISOString(),
        updatedAt: new Date(at).toISOString(),
      });
      if (written) return written;
      current = await this.summaries.get(batchId);
    }
    throw new Error(`Batch ${batchId}: lost the summary race ${MAX_RACES} times; the host retries`);
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
    return retryLostRaces({
      maxRaces: MAX_RACES,
      attempt: async () => {
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
          running: undefined,
          runningUntil: undefined,
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
              ...invocationTelemetry(context),
            });
          }
          this.log(context).info('notification batch chunk fanned out', {
            batchId,
            offset,
            next,
            total: written.total,
            accepted: chunk.accepted,
            rejected: chunk.rejections.length,
          });
          context.onChunk?.({
            batchId,
            processed: next,
            total: written.total,
            accepted: written.accepted,
            rejected: written.rejected,
          });
          if (!done) await this.enqueueContinuation(written, next);
          return { outcome: 'fanned-out', batchId, offset, next, status };
        }
        const reread = await this.summaries.get(batchId);
        if (!reread || reread.offset !== offset || TERMINAL.has(reread.status)) {
          return { outcome: 'skipped', batchId, reason: 'raced' };
        }
        current = reread; // only the marker or another field moved: the chunk is still ours to record
        return LOST_RACE;
      },
      exhausted: () => {
        throw new Error(`Batch ${batchId}: lost the summary race ${MAX_RACES} times; the host retries`);
      },
    });
  }

  /** Steps 4 and 5: enqueue the continuation at `next`, then note on the summary that it exists. */
  private async enqueueContinuation(summary: StoredSummary, next: number): Promise<void> {
    await enqueueBatchReference(this.deps.storage.notificationsQueue, summary.batchId, next);
    let current: StoredSummary | undefined = summary;
    await retryLostRaces({
      maxRaces: MAX_RACES,
      attempt: async () => {
        if (!current || current.offset !== next || current.continuation === next || TERMINAL.has(current.status)) {
          return;
        }
        if (await this.summaries.update(current, { continuation: next, updatedAt: this.iso() })) return;
        current = await this.summaries.get(summary.batchId);
        return LOST_RACE;
      },
      exhausted: () => undefined,
    });
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
    const ready: Array<{ index: number; request: SendRequest; rendered: Rendered }> = [];
    for (let i = 0; i < count; i++) {
      const prepared = this.prepare(chunk.fields, offset + i, chunk.recipients[i] as PreparedRecipient);
      if ('rejection' in prepared) rejections.push(prepared.rejection);
      else ready.push(prepared);
    }
    // Slots only for the recipients that will be accepted, so that a rejected one wastes none.
    const slots = this.deps.schedule && ready.length > 0 ? await this.deps.schedule(ready.length) : undefined;
    // One write for each record (Table transactions of 100) and one queue message each; the key is the record's.
    const results = await this.deps.outbox.acceptBatch(
      ready.map(({ request, rendered }, j) => {
        const holdSeconds = slots ? this.holdSeconds(slots.startAt + j * slots.intervalMs) : 0;
        return { request, rendered, ...(holdSeconds > 0 ? { holdSeconds } : {}) };
      }),
      {
        source: 'notification',
        batchId,
        concurrency: this.concurrency,
        invocation: context,
        // Bulk mail: suppressions checked and List-Unsubscribe set by the outbox, per recipient.
        ...(chunk.fields.category === 'bulk' ? { list: chunk.fields.list ?? chunk.fields.template } : {}),
      },
    );
    let accepted = 0;
    results.forEach((result, j) => {
      const { index } = ready[j] as { index: number };
      if (!(result instanceof MailError)) {
        accepted += 1;
        return;
      }
      const rejection = this.rejectionOf(index, chunk.recipients[index - offset], result);
      if (!rejection) throw result;
      rejections.push(rejection);
    });
    if (context.dequeueCount && context.dequeueCount > 1) {
      this.log(context).info('notification chunk re-run after a failed attempt', {
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
    let rendered: Rendered;
    try {
      rendered = this.deps.outbox.render(request);
    } catch (error) {
      const rejection = this.rejectionOf(index, recipient, error);
      if (!rejection) throw error;
      return { rejection };
    }
    return { index, request, rendered };
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
    await this.recordInvalid(rejectedAs, error, context);
    await this.deps.storage.notificationsPoisonQueue.sendMessage(encodeNotificationMessage(content), {
      messageTimeToLive: -1,
    });
    this.deps.telemetry?.trackEvent('BatchRejected', {
      batchId,
      source: 'notification',
      errorCode: error.code,
      ...invocationTelemetry(context),
    });
    this.log(context).error('a queue batch reuses the batchId of a different batch; rejected to the poison queue', {
      batchId,
      rejectedAs,
      invocationId: context.invocationId,
    });
    return { outcome: 'failed', batchId, error: error.toJSON(), rejectedAs };
  }
}
