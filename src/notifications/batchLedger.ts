/**
 * What every part of the notification subsystem shares: the batch summaries and blobs, the settings, and the writes
 * each part makes on a batch (a new summary, a batch recorded as invalid or failed, the BatchAccepted event).
 */
import { randomUUID } from 'node:crypto';
import { BatchBlobStore, type BatchFields, type BatchHeader } from './batchBlobStore';
import {
  BatchStore,
  type BatchStatus,
  type BatchSource,
  type BatchSummary,
  type StoredSummary,
  type SummaryChanges,
} from './batchStore';
import type { Config } from '../config';
import { MailError, type ClassifiedError } from '../errors';
import { invocationTelemetry, type Invocation } from '../invocation';
import { silentLogger, type Logger } from '../logger';
import { batchContentHash, parseNotificationBatch, type BatchRules, type NotificationBatch } from './batchRequest';
import type { Outbox } from '../outbox/outbox';
import type { StatusStore } from '../outbox/statusStore';
import { LOST_RACE, MAX_RACES, retryLostRaces } from '../storage/etagRetry';
import { NOTIFICATIONS_POISON_QUEUE, type StorageClients } from '../storage/storageClients';
import type { UnsubscribeLinks } from '../suppression/unsubscribeLinks';
import type { Telemetry } from '../telemetry';
import type { TemplateRenderer } from '../templates/templateRenderer';

/** Recipients per invocation: 500 queue messages and 5 record transactions are seconds, far inside functionTimeout (10 min). */
export const DEFAULT_CHUNK_SIZE = 500;
/** Queue messages (and suppression reads of bulk mail) of a chunk in flight at once; the records go in transactions of 100. */
export const DEFAULT_CONCURRENCY = 32;
export const TERMINAL: ReadonlySet<BatchStatus> = new Set(['complete', 'failed']);

/**
 * Pacing for a whole batch: asked once per chunk for `count` send slots; recipient i of the chunk becomes due
 * at `startAt + i * intervalMs` (epoch milliseconds), or at the batch's sendAt when that is later.
 */
export type BatchSchedule = (count: number) => Promise<{ startAt: number; intervalMs: number }>;

export interface NotificationsDeps {
  config: Pick<Config, 'allowedFrom'>;
  renderer: Pick<TemplateRenderer, 'has'>;
  outbox: Pick<Outbox, 'render' | 'acceptBatch'>;
  status: Pick<StatusStore, 'countByBatch'>;
  storage: Pick<
    StorageClients,
    'notificationsQueue' | 'notificationsPoisonQueue' | 'batches' | 'batchTable' | 'ensureResources'
  >;
  /** Whether bulk mail can carry unsubscribe links; without it, bulk batches are refused. */
  unsubscribe?: Pick<UnsubscribeLinks, 'configured'>;
  telemetry?: Telemetry;
  logger?: Logger;
  now?: () => number;
  newId?: () => string;
  chunkSize?: number;
  concurrency?: number;
  schedule?: BatchSchedule;
}

/** The invocation (queue trigger or HTTP request) working on a batch, and the queue trigger's dequeueCount. */
export interface FanoutContext extends Invocation {
  dequeueCount?: number;
  /** Told after each chunk's progress is recorded: counts and the batch id only, never an address. */
  onChunk?: (progress: FanoutProgress) => void;
}

/** How far a batch's fan-out is, after one chunk: recipients processed so far (accepted + rejected) of the total. */
export interface FanoutProgress {
  batchId: string;
  processed: number;
  total: number;
  accepted: number;
  rejected: number;
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

export const problem = (path: string, message: string): MailError =>
  new MailError('INVALID_MESSAGE', `Invalid notification batch: ${path}: ${message}`, {
    details: [{ path, message }],
  });

/** The batch without its recipients. */
export function fieldsOf(batch: NotificationBatch): BatchFields {
  const { recipients: _recipients, ...fields } = batch;
  return fields;
}

/** The batch records and the writes on them that submitting, fanning out and poisoning all make. */
export class BatchLedger {
  protected readonly summaries: BatchStore;
  protected readonly payloads: BatchBlobStore;
  protected readonly logger: Logger;
  protected readonly now: () => number;
  protected readonly newId: () => string;
  protected readonly chunkSize: number;
  protected readonly concurrency: number;

  constructor(protected readonly deps: NotificationsDeps) {
    this.summaries = new BatchStore(deps.storage.batchTable);
    this.payloads = new BatchBlobStore(deps.storage.batches);
    this.logger = deps.logger ?? silentLogger;
    this.now = deps.now ?? Date.now;
    this.newId = deps.newId ?? randomUUID;
    this.chunkSize = Math.max(1, deps.chunkSize ?? DEFAULT_CHUNK_SIZE);
    this.concurrency = Math.max(1, deps.concurrency ?? DEFAULT_CONCURRENCY);
  }

  protected rules(allowPastSendAt: boolean): BatchRules {
    return {
      now: this.now(),
      hasTemplate: (name) => this.deps.renderer.has(name),
      allowedFrom: this.deps.config.allowedFrom,
      allowPastSendAt,
      bulkAllowed: this.deps.unsubscribe?.configured ?? false,
    };
  }

  protected iso(): string {
    return new Date(this.now()).toISOString();
  }

  /** The error for a queue batch whose batchId already holds a different batch, recorded as `rejectedAs`. */
  protected conflictOnQueue(batchId: string, rejectedAs: string): MailError {
    return new MailError(
      'IDEMPOTENCY_CONFLICT',
      `Batch ${batchId} already exists with different content: this queue message was not fanned out (recorded as batch ${rejectedAs}, and moved to ${NOTIFICATIONS_POISON_QUEUE})`,
      {
        details: [{ path: 'batchId', message: 'already used for a different batch' }],
        hint: 'Reuse a batchId only to retry the same batch; give a new batch a new batchId (or none). The message is in the poison queue as it was sent.',
      },
    );
  }

  /** Records a batch that cannot be fanned out at all as failed, unless its batchId already holds a batch. */
  protected async recordInvalid(
    batchId: string,
    error: MailError,
    context: FanoutContext = {},
  ): Promise<FanoutOutcome> {
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
    if (created) this.log(context).error('notification batch is invalid; recorded as failed', { batchId, fields });
    else this.log(context).warn('invalid notification message for an existing batch; ignored', { batchId, fields });
    return { outcome: 'failed', batchId, error: error.toJSON() };
  }

  protected async failBatch(
    summary: StoredSummary,
    error: MailError,
    context: FanoutContext = {},
  ): Promise<FanoutOutcome> {
    let current: StoredSummary | undefined = summary;
    await retryLostRaces({
      maxRaces: MAX_RACES,
      attempt: async () => {
        if (!current || TERMINAL.has(current.status)) return;
        if (await this.summaries.update(current, this.failedChanges(error))) return;
        current = await this.summaries.get(summary.batchId);
        return LOST_RACE;
      },
      exhausted: () => undefined,
    });
    this.log(context).error('notification batch failed', { batchId: summary.batchId, code: error.code });
    return { outcome: 'failed', batchId: summary.batchId, error: error.toJSON() };
  }

  /** The changes that record a batch as failed now, for `error`. */
  protected failedChanges(error: MailError): SummaryChanges {
    const at = this.iso();
    return { status: 'failed', error: error.toJSON(), completedAt: at, updatedAt: at };
  }

  protected newSummary(
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
  protected contentHashOf(content: Record<string, unknown>): string | undefined {
    try {
      return batchContentHash(parseNotificationBatch(content, this.rules(true)).batch);
    } catch {
      return undefined;
    }
  }

  /** The header of batch `batchId` as stored in mail-batches. */
  protected header(batchId: string, contentHash: string, batch: NotificationBatch): BatchHeader {
    return { batchId, contentHash, chunkSize: this.chunkSize, total: batch.recipients.length, batch: fieldsOf(batch) };
  }

  protected trackAccepted(summary: BatchSummary, context: FanoutContext = {}): void {
    this.deps.telemetry?.trackEvent('BatchAccepted', {
      batchId: summary.batchId,
      source: 'notification',
      ...(summary.template ? { template: summary.template } : {}),
      recipientCount: summary.total,
      ...invocationTelemetry(context),
    });
  }

  /** The logger for work in `context`: its invocation's, else the process logger. */
  protected log(context: FanoutContext): Logger {
    return context.logger ?? this.logger;
  }
}
