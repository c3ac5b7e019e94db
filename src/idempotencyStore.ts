/** Idempotency keys in Table storage: the first request with a key claims it with an insert-only write; later ones find its message. */
import { createHash } from 'node:crypto';
import type { TableClient } from '@azure/data-tables';
import { storageStatusCode } from './storage';

const ROW_KEY = 'key';

/** What a key is bound to: the message it created and the hash of the request that created it. */
export interface IdempotencyClaim {
  id: string;
  payloadHash: string;
  createdAt: string;
}

type Entity = { partitionKey: string; rowKey: string; messageId: string; payloadHash: string; createdAt: string };

/**
 * Keys are scoped to the mailbox (MAIL_SENDER): the same key from two deployments sending as different mailboxes
 * never collides, while any caller of one deployment shares one key space. The key itself is hashed so that no
 * caller-chosen text becomes a PartitionKey (which forbids / \ # ? and control characters).
 */
export function idempotencyPartition(mailbox: string, key: string): string {
  return createHash('sha256').update(`${mailbox.toLowerCase()}\n${key}`).digest('hex');
}

export class IdempotencyStore {
  constructor(private readonly table: TableClient) {}

  /**
   * Claims `key` for `claim.id`. Returns `{ created: true }` when this call claimed it, or the existing claim.
   * The insert is atomic in storage, so of two concurrent first requests exactly one wins.
   */
  async claim(
    mailbox: string,
    key: string,
    claim: IdempotencyClaim,
  ): Promise<{ created: true } | { created: false; existing: IdempotencyClaim }> {
    const partitionKey = idempotencyPartition(mailbox, key);
    try {
      await this.table.createEntity<Entity>({
        partitionKey,
        rowKey: ROW_KEY,
        messageId: claim.id,
        payloadHash: claim.payloadHash,
        createdAt: claim.createdAt,
      });
      return { created: true };
    } catch (error) {
      if (storageStatusCode(error) !== 409) throw error;
    }
    const entity = await this.table.getEntity<Entity>(partitionKey, ROW_KEY);
    return {
      created: false,
      existing: { id: entity.messageId, payloadHash: entity.payloadHash, createdAt: entity.createdAt },
    };
  }
}
