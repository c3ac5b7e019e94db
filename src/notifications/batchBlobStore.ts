/**
 * Notification batches in Blob storage, in chunks: `mail-batches/<batchId>/batch.json` holds the batch-level fields,
 * `mail-batches/<batchId>/<n>.json` the prepared recipients of chunk n, so that each fan-out invocation reads the
 * batch fields and its own chunk only, never the whole batch again.
 */
import type { ContainerClient } from '@azure/storage-blob';
import type { Address } from '../message';
import type { NotificationBatch, RecipientInput } from './batchRequest';
import { downloadJson, uploadJson } from '../storage/jsonBlob';
import { catchStatus } from '../storage/storageClients';

const FORMAT_VERSION = 2;
const HEADER_BLOB = 'batch.json';
/** Chunk blobs written at once. */
const UPLOAD_CONCURRENCY = 8;

/** One recipient, with what the fan-out needs decided once for the whole batch. */
export interface PreparedRecipient {
  to: RecipientInput['to'];
  data?: Record<string, unknown>;
  /** The idempotency key the recipient gave, if it gave one. */
  idempotencyKey?: string;
  /** The parsed address and the recipient's outbox idempotency key (its own, or derived from batch and address). */
  address?: Address;
  key?: string;
  /** Why `to` is not an address (then there is no key). */
  addressError?: string;
  /** The index of an earlier recipient with the same key: this one is a duplicate, reported and not sent. */
  duplicateOf?: number;
}

/** The batch without its recipients. */
export type BatchFields = Omit<NotificationBatch, 'recipients'>;

/** What `batch.json` holds. */
export interface BatchHeader {
  batchId: string;
  /** SHA-256 of the batch content: the same batchId with other content is a different batch. */
  contentHash: string;
  /** Recipients per chunk blob; chunk n holds recipients [n × chunkSize, (n + 1) × chunkSize). */
  chunkSize: number;
  total: number;
  batch: BatchFields;
}

export class BatchBlobStore {
  constructor(private readonly container: ContainerClient) {}

  /** The folder of batch `batchId`'s blobs. */
  static prefix(batchId: string): string {
    return `${batchId}/`;
  }

  static headerBlobName(batchId: string): string {
    return `${batchId}/${HEADER_BLOB}`;
  }

  static chunkBlobName(batchId: string, chunk: number): string {
    return `${batchId}/${chunk}.json`;
  }

  /**
   * Writes the batch: the header once (insert-only), then every chunk. Returns `written: true` unless the header
   * already holds another batch (a different content hash): then nothing is written, so that a batchId reused for
   * different content cannot overwrite the first batch's recipients. The same batch again (a retry after a crash)
   * writes its chunks again, with the same content.
   */
  async put(
    header: BatchHeader,
    recipients: readonly PreparedRecipient[],
  ): Promise<{ written: true } | { written: false; contentHash: string | undefined }> {
    const headerBlob = this.container.getBlockBlobClient(BatchBlobStore.headerBlobName(header.batchId));
    if (!(await uploadJson(headerBlob, { version: FORMAT_VERSION, ...header }, { ifAbsent: true }))) {
      const existing = await this.header(header.batchId);
      if (existing?.contentHash !== header.contentHash) return { written: false, contentHash: existing?.contentHash };
    }
    const chunks = Math.ceil(recipients.length / header.chunkSize);
    let next = 0;
    const upload = async () => {
      while (next < chunks) {
        const chunk = next++;
        const slice = recipients.slice(chunk * header.chunkSize, (chunk + 1) * header.chunkSize);
        await uploadJson(this.container.getBlockBlobClient(BatchBlobStore.chunkBlobName(header.batchId, chunk)), slice);
      }
    };
    await Promise.all(Array.from({ length: Math.min(UPLOAD_CONCURRENCY, chunks) }, upload));
    return { written: true };
  }

  /** The batch fields, or undefined when there is no batch (or not one this version wrote). */
  async header(batchId: string): Promise<BatchHeader | undefined> {
    const json = await this.read(BatchBlobStore.headerBlobName(batchId));
    if (!json || typeof json !== 'object') return undefined;
    const h = json as Partial<BatchHeader> & { version?: number };
    if (h.version !== FORMAT_VERSION || !h.batch || !Number.isSafeInteger(h.chunkSize) || !h.chunkSize)
      return undefined;
    return {
      batchId,
      contentHash: String(h.contentHash ?? ''),
      chunkSize: h.chunkSize,
      total: Number(h.total) || 0,
      batch: h.batch,
    };
  }

  /** The prepared recipients of chunk `chunk`, or undefined when the blob is missing or not a chunk. */
  async chunk(batchId: string, chunk: number): Promise<PreparedRecipient[] | undefined> {
    const json = await this.read(BatchBlobStore.chunkBlobName(batchId, chunk));
    return Array.isArray(json) ? (json as PreparedRecipient[]) : undefined;
  }

  /** Deletes every blob of batch `batchId` (retention). Returns how many were deleted. */
  async delete(batchId: string): Promise<number> {
    let deleted = 0;
    for await (const blob of this.container.listBlobsFlat({ prefix: BatchBlobStore.prefix(batchId) })) {
      const result = await catchStatus(
        async () => {
          await this.container.deleteBlob(blob.name);
          return true;
        },
        [404],
        false,
      );
      if (result) deleted++;
    }
    return deleted;
  }

  /** The parsed blob, or undefined when it is missing or not JSON (then it is no blob of this store's). */
  private async read(name: string): Promise<unknown> {
    try {
      return await downloadJson(this.container.getBlockBlobClient(name));
    } catch (error) {
      if (error instanceof SyntaxError) return undefined;
      throw error;
    }
  }
}
