/**
 * Retention: deletes what the outbox keeps once it is old enough, in bounded pages, without scanning any table.
 *
 * A message's status record, its idempotency key and its payload blob go MAIL_RETENTION_DAYS after the message's
 * final state (`sent`, `failed`, `suppressed`); a notification batch's summary, blobs and retention index row go
 * once every message of the batch has. What is still pending is kept, however old.
 *
 * Finding them reads key ranges only: single messages have UUIDv7 ids, so "created before the cutoff" is a
 * PartitionKey range of MailStatus; batches are listed by creation time in one partition of MailBatches, and a
 * batch's messages are one partition of MailStatus. Each run stops after a number of deletions and a time budget;
 * the timer's next run carries on.
 */
import type { BatchBlobStore } from '../notifications/batchBlobStore';
import type { BatchStore, RetentionEntry } from '../notifications/batchStore';
import type { Config } from '../config';
import type { IdempotencyStore } from './idempotencyStore';
import type { Invocation } from '../invocation';
import { silentLogger, type Logger } from '../logger';
import type { MessageStore } from './messageStore';
import { TERMINAL_STATUSES, type StatusStore, type StoredRecord } from './statusStore';
import type { StorageClients } from '../storage/storageClients';

/** Deletions (records and batches) one run makes at most; the next run carries on. */
export const RETENTION_MAX_DELETIONS_PER_RUN = 20_000;
/** How long one run may take: well inside functionTimeout (10 min). */
export const RETENTION_RUN_BUDGET_MS = 4 * 60 * 1000;
/** Records purged at once. */
const PURGE_CONCURRENCY = 16;
const BATCH_TERMINAL = new Set(['complete', 'failed']);

export interface RetentionDeps {
  config: Pick<Config, 'retentionMs' | 'sender'>;
  storage: Pick<StorageClients, 'ensureResources'>;
  status: StatusStore;
  payloads: MessageStore;
  idempotency: IdempotencyStore;
  batches: BatchStore;
  batchBlobs: BatchBlobStore;
  logger?: Logger;
  now?: () => number;
}

/** What one run did. */
export interface RetentionReport {
  /** Status records deleted (with their payloads and keys). */
  messages: number;
  keys: number;
  payloads: number;
  /** Batches deleted (summary, blobs, index row). */
  batches: number;
  batchBlobs: number;
  /** Records and batches past the cutoff kept because they are not final yet (or became final since). */
  kept: number;
  /** False when the run stopped at its budget: the next run carries on. */
  complete: boolean;
}

export class Retention {
  private readonly logger: Logger;
  private readonly now: () => number;

  constructor(private readonly deps: RetentionDeps) {
    this.logger = deps.logger ?? silentLogger;
    this.now = deps.now ?? Date.now;
  }

  /** Deletes everything past retention, up to `maxDeletions` and `budgetMs`. */
  async run(
    options: { maxDeletions?: number; budgetMs?: number; invocation?: Invocation } = {},
  ): Promise<RetentionReport> {
    await this.deps.storage.ensureResources();
    const started = this.now();
    const cutoff = started - this.deps.config.retentionMs;
    const maxDeletions = options.maxDeletions ?? RETENTION_MAX_DELETIONS_PER_RUN;
    const deadline = started + (options.budgetMs ?? RETENTION_RUN_BUDGET_MS);
    const report: RetentionReport = {
      messages: 0,
      keys: 0,
      payloads: 0,
      batches: 0,
      batchBlobs: 0,
      kept: 0,
      complete: true,
    };
    const spent = () => report.messages + report.batches >= maxDeletions || this.now() > deadline;

    messages: for await (const page of this.deps.status.createdBefore(cutoff)) {
      await this.purgeRecords(page, cutoff, report);
      if (spent()) {
        report.complete = false;
        break messages;
      }
    }
    if (report.complete) {
      batches: for await (const page of this.deps.batches.indexedBefore(cutoff)) {
        for (const entry of page) {
          await this.purgeBatch(entry, cutoff, report);
          if (spent()) {
            report.complete = false;
            break batches;
          }
        }
      }
    }
    if (report.messages + report.batches > 0 || !report.complete) {
      (options.invocation?.logger ?? this.logger).info('retention run', {
        ...report,
        cutoff: new Date(cutoff).toISOString(),
      });
    }
    return report;
  }

  private async purgeRecords(records: StoredRecord[], cutoff: number, report: RetentionReport): Promise<number> {
    let kept = 0;
    let next = 0;
    const worker = async () => {
      while (next < records.length) {
        const record = records[next++] as StoredRecord;
        if (!(await this.purgeRecord(record, cutoff, report))) kept++;
      }
    };
    await Promise.all(Array.from({ length: Math.min(PURGE_CONCURRENCY, records.length) }, worker));
    report.kept += kept;
    return kept;
  }

  /** Deletes a final record older than the cutoff, with its key and payload; false when it must be kept. */
  private async purgeRecord(record: StoredRecord, cutoff: number, report: RetentionReport): Promise<boolean> {
    if (!TERMINAL_STATUSES.has(record.status)) return false;
    const final = Date.parse(record.completedAt ?? record.sentAt ?? record.createdAt);
    if (!(final < cutoff)) return false;
    const { idempotency, payloads, status, config } = this.deps;
    // Key and payload first: a record deleted first would leave them with nothing pointing at them.
    if (
      record.idempotencyKey !== undefined &&
      (await idempotency.release(config.sender, record.idempotencyKey, record.id))
    ) {
      report.keys++;
    }
    // Inline content goes with the record; only a message without it has a blob (large, or from before).
    if (record.content === undefined && (await payloads.delete(record.id))) report.payloads++;
    if (!(await status.delete(record))) return false;
    report.messages++;
    return true;
  }

  /** Purges a batch's final messages; once none is left and the batch itself is final, the batch too. */
  private async purgeBatch(entry: RetentionEntry, cutoff: number, report: RetentionReport): Promise<void> {
    const { batches, batchBlobs, status } = this.deps;
    let remaining = 0;
    for await (const page of status.ofBatch(entry.batchId)) remaining += await this.purgeRecords(page, cutoff, report);
    const summary = await batches.get(entry.batchId);
    const finished =
      !summary ||
      (BATCH_TERMINAL.has(summary.status) &&
        Date.parse(summary.completedAt ?? summary.updatedAt ?? summary.createdAt) < cutoff);
    if (remaining > 0 || !finished) {
      if (finished) return; // its pending messages were counted as kept
      report.kept++;
      return;
    }
    report.batchBlobs += await batchBlobs.delete(entry.batchId);
    if (summary && !(await batches.delete(summary))) return; // it moved: decide again next run
    await batches.unindex(entry);
    report.batches++;
  }
}
