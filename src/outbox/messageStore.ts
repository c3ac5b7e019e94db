/** Rendered outbox messages in Blob storage (`mail-payloads/<id>.json`), so that queue messages carry only an id (Azure caps them at 64 KB). */
import type { ContainerClient } from '@azure/storage-blob';
import type { MailMessage } from '../message';
import { downloadJson, uploadJson } from '../storage/jsonBlob';

const FORMAT_VERSION = 1;

/** What the worker needs to send: the validated, rendered message. */
export interface StoredMessage {
  message: MailMessage;
}

interface PayloadJson {
  version: number;
  message: Omit<MailMessage, 'attachments'> & {
    attachments: Array<{ filename: string; contentType?: string; contentBase64: string }>;
  };
}

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
    const { message } = payload;
    const json: PayloadJson = {
      version: FORMAT_VERSION,
      message: {
        ...message,
        attachments: message.attachments.map((a) => ({
          filename: a.filename,
          ...(a.contentType ? { contentType: a.contentType } : {}),
          contentBase64: a.content.toString('base64'),
        })),
      },
    };
    return uploadJson(this.container.getBlockBlobClient(MessageStore.blobName(id)), json, { ifAbsent: true });
  }

  /** Deletes the payload (retention). True when it existed. */
  async delete(id: string): Promise<boolean> {
    return (await this.container.getBlockBlobClient(MessageStore.blobName(id)).deleteIfExists()).succeeded;
  }

  /** The payload, or undefined when the blob does not exist. */
  async get(id: string): Promise<StoredMessage | undefined> {
    const json = await downloadJson(this.container.getBlockBlobClient(MessageStore.blobName(id)));
    if (json === undefined) return undefined;
    const { message } = json as PayloadJson;
    return {
      message: {
        ...message,
        attachments: message.attachments.map((a) => ({
          filename: a.filename,
          ...(a.contentType ? { contentType: a.contentType } : {}),
          content: Buffer.from(a.contentBase64, 'base64'),
        })),
      },
    };
  }
}
