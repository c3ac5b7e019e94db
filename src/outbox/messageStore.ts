/**
 * Rendered outbox messages too large to keep in their status record, in Blob storage (`mail-payloads/<id>.json`); also
 * every message accepted before records carried their content inline.
 */
import type { ContainerClient } from '@azure/storage-blob';
import { downloadBlob, catchStatus } from '../storage/storageClients';
import { parseMessage, serializeMessage, type StoredMessage } from './messageContent';

export type { StoredMessage } from './messageContent';

export class MessageStore {
  constructor(private readonly container: ContainerClient) {}

  static blobName(id: string): string {
    return `${id}.json`;
  }

  /**
   * Writes the payload once. Returns false when it already exists (an idempotent retry of the same accept
   * wrote it first): payloads are immutable, so a worker never reads a half-replaced one.
   */
  async put(id: string, payload: StoredMessage): Promise<boolean> {
    return this.putText(id, serializeMessage(payload));
  }

  /** Writes content already serialized (serializeMessage) once; false when it already exists. */
  async putText(id: string, text: string): Promise<boolean> {
    return catchStatus(
      async () => {
        await this.container.getBlockBlobClient(MessageStore.blobName(id)).uploadData(Buffer.from(text), {
          blobHTTPHeaders: { blobContentType: 'application/json' },
          conditions: { ifNoneMatch: '*' },
        });
        return true;
      },
      [409, 412],
      false,
    );
  }

  /** Deletes the payload (retention). True when it existed. */
  async delete(id: string): Promise<boolean> {
    return (await this.container.getBlockBlobClient(MessageStore.blobName(id)).deleteIfExists()).succeeded;
  }

  /** The payload, or undefined when the blob does not exist. Content that is not JSON throws a SyntaxError. */
  async get(id: string): Promise<StoredMessage | undefined> {
    const buffer = await catchStatus(
      () => downloadBlob(this.container.getBlockBlobClient(MessageStore.blobName(id))),
      [404],
      undefined,
    );
    return buffer && parseMessage(buffer.toString('utf8'));
  }
}
