/** Idempotency keys in Table storage: the first request with a key claims it with an insert-only write; later ones find its message. */
import { createHash } from 'node:crypto';
import type { TableClient } from '@azure/data-tables';
import { deleteEntity, insertEntity, readEntity } from '../storage/tableEntity';

const ROW_KEY = 'key';
/** Claims of a key that keeps being freed under us before we give up to the caller's retry. */
const MAX_CLAIM_TRIES = 3;

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
   * Claims `key` for `claim.id`. Returns `{ created: true }` when this call claimed it, or the existing claim (with
   * the ETag that {@link release} needs). The insert is atomic in storage, so of two concurrent first requests
   * exactly one wins.
   */
  async claim(
    mailbox: string,
    key: string,
    claim: IdempotencyClaim,
  ): Promise<{ created: true } | { created: false; existing: IdempotencyClaim & { etag: string } }> {
    const partitionKey = idempotencyPartition(mailbox, key);
    const claimed: Entity = {
      partitionKey,
      rowKey: ROW_KEY,
      messageId: claim.id,
      payloadHash: claim.payloadHash,
      createdAt: claim.createdAt,
    };
    for (let tryNo = 1; ; tryNo++) {
      if ((await insertEntity(this.table, claimed)) !== undefined) return { created: true };
      const entity = await readEntity<Entity>(this.table, partitionKey, ROW_KEY);
      // Released between our insert and this read: the key is free again, so try to claim it once more.
      if (!entity) {
        if (tryNo >= MAX_CLAIM_TRIES) throw new Error('The idempotency key was claimed and freed repeatedly; retry');
        continue;
      }
      return {
        created: false,
        existing: {
          id: entity.messageId,
          payloadHash: entity.payloadHash,
          createdAt: entity.createdAt,
          etag: entity.etag,
        },
      };
    }
  }

  /**
   * Frees `key` if it still belongs to message `id` (retention, or an expired claim found by a new request).
   * Returns true when this call deleted it.
   */
  async release(mailbox: string, key: string, id: string, etag?: string): Promise<boolean> {
    const partitionKey = idempotencyPartition(mailbox, key);
    let tag = etag;
    if (tag === undefined) {
      const entity = await readEntity<Entity>(this.table, partitionKey, ROW_KEY);
      if (!entity || entity.messageId !== id) return false;
      tag = entity.etag;
    }
    return deleteEntity(this.table, partitionKey, ROW_KEY, tag);
  }
}
