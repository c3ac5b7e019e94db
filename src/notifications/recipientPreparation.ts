/** Decides, once per batch, each recipient's address, outbox idempotency key and whether it repeats an earlier one. */
import type { PreparedRecipient } from './batchBlobStore';
import { addressSchema } from '../message';
import { recipientIdempotencyKey, type RecipientInput } from './batchRequest';

/**
 * Prepares every recipient of batch `batchId`: parses its address (a bad one is rejected on its own at fan-out),
 * keys it (its own idempotencyKey, else one derived from the batch and the lower-cased address), and marks a later
 * recipient with the key of an earlier one as its duplicate. One pass over the whole batch, so that a chunk fanned
 * out later needs only its own recipients to know all of this.
 */
export function prepareRecipients(batchId: string, recipients: readonly RecipientInput[]): PreparedRecipient[] {
  const first = new Map<string, number>();
  return recipients.map((recipient, index) => {
    const base: PreparedRecipient = {
      to: recipient.to,
      ...(recipient.data !== undefined ? { data: recipient.data } : {}),
      ...(recipient.idempotencyKey !== undefined ? { idempotencyKey: recipient.idempotencyKey } : {}),
    };
    const parsed = addressSchema.safeParse(recipient.to);
    if (!parsed.success) {
      return { ...base, addressError: parsed.error.issues[0]?.message ?? 'is not a valid email address' };
    }
    const key = recipient.idempotencyKey ?? recipientIdempotencyKey(batchId, parsed.data.address);
    const earlier = first.get(key);
    if (earlier === undefined) first.set(key, index);
    return { ...base, address: parsed.data, key, ...(earlier !== undefined ? { duplicateOf: earlier } : {}) };
  });
}
