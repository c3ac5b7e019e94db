/** Notification batches in Blob storage (`mail-batches/<batchId>.json`): batches over the 64 KB queue cap, and batches whose fan-out continues later. */
import type { ContainerClient } from '@azure/storage-blob';
import type { NotificationBatch } from './notificationRequest';
import { downloadBlob, storageStatusCode } from './storage';

const FORMAT_VERSION = 1;

/** What is stored: the validated batch and the hash that identifies its content. */
export interface StoredBatch {
  batchId: string;
  contentHash: string;
  batch: NotificationBatch;
}

export class BatchPayloadStore {
  constructor(private readonly container: ContainerClient) {}

  static blobName(batchId: string): string {
    return `${batchId}.json`;
  }

  /**
   * Writes the batch once. Returns true when this call wrote it; otherwise the content hash already stored, so the
   * caller can tell a retry of the same batch (same hash) from a different batch reusing the id.
   */
  async put(stored: StoredBatch): Promise<{ written: true } | { written: false; contentHash: string | undefined }> {
    const body = Buffer.from(JSON.stringify({ version: FORMAT_VERSION, ...stored }));
    try {
      await this.container.getBlockBlobClient(BatchPayloadStore.blobName(stored.batchId)).uploadData(body, {
        blobHTTPHeaders: { blobContentType: 'application/json' },
        conditions: { ifNoneMatch: '*' },
      });
      return { written: true };
    } catch (error) {
      const status = storageStatusCode(error);
      if (status !== 409 && status !== 412) throw error;
    }
    return { written: false, contentHash: (await this.get(stored.batchId))?.contentHash };
  }

  /** The stored batch, or undefined when there is none (or it is not a batch this app wrote). */
  async get(batchId: string): Promise<StoredBatch | undefined> {
    let buffer: Buffer;
    try {
      buffer = await downloadBlob(this.container.getBlockBlobClient(BatchPayloadStore.blobName(batchId)));
    } catch (error) {
      if (storageStatusCode(error) === 404) return undefined;
      throw error;
    }
    try {
      const json = JSON.parse(buffer.toString('utf8')) as Partial<StoredBatch> & { version?: number };
      if (json.version !== FORMAT_VERSION || !json.batch || !Array.isArray(json.batch.recipients)) return undefined;
      return { batchId, contentHash: String(json.contentHash ?? ''), batch: json.batch };
    } catch {
      return undefined;
    }
  }
}
