/**
 * Delivery of one outbox message: the only code that hands outbox messages to the sender.
 *
 * Semantics: at-least-once queue delivery, completed idempotently.
 * - `sent`, `failed`, `suppressed`: acknowledged without sending.
 * - `sending` under a live lease: another worker owns it. This copy is re-enqueued to reappear when the lease ends
 *   and acknowledged, rather than thrown back to the host: a throw would cost a dequeue (towards the poison queue)
 *   for a message nothing is wrong with, and would come back after host.json's visibilityTimeout instead of when
 *   the lease ends.
 * - `sending` under an expired lease: the worker died after taking it; this delivery takes over.
 * - Otherwise the lease is taken by an ETag-guarded write (`sending`, attempts + 1, leaseUntil); of two workers
 *   only one wins it, the other re-reads and sees the live lease.
 *
 * Invariant shared with the outbox: whenever a record is `queued`/`scheduled` with `dueAt` in the future, a queue
 * message becomes visible at `dueAt`. So a copy that arrives well before `dueAt` (a duplicate from a replayed or
 * repaired accept) is dropped, and a deferral enqueues its retry before it records the new `dueAt`.
 *
 * The one duplicate that cannot be prevented: the server answers 250 and the process dies (or storage fails)
 * before `sent` is written. The lease then expires and the next delivery sends the message again.
 */
import { MailError } from './errors';
import { silentLogger, type Logger } from './logger';
import { enqueueOutbox } from './outboxQueue';
import type { PayloadStore } from './payloadStore';
import type { MailSender, SendResult } from './sender';
import { TERMINAL_STATUSES, type RecordChanges, type StatusStore, type StoredRecord } from './statusStore';
import type { StorageClients } from './storage';
import type { Telemetry } from './telemetry';

/** How long a worker owns a `sending` record: above the sender's worst case (token, connect, greeting, 60 s socket timeout). */
export const DEFAULT_LEASE_MS = 5 * 60 * 1000;
/** Send attempts (transient failures included) before a message is failed with "retries exhausted". */
export const DEFAULT_MAX_ATTEMPTS = 8;
/** Back-off after a transient failure: 30 s, doubling per attempt, at most 1 h (with up to 10 % jitter). */
export const BACKOFF_BASE_SECONDS = 30;
export const BACKOFF_MAX_SECONDS = 60 * 60;
/** A copy arriving this much before its record's dueAt is a duplicate (queue visibility is accurate to about a second). */
const EARLY_TOLERANCE_MS = 2_000;
/** Re-reads after a lost ETag race before giving up to the host's retry. */
const MAX_RACES = 5;
/** Re-tries of the `sent` write: losing it means the one unavoidable duplicate. */
const SENT_WRITE_TRIES = 3;

export interface DeliverDeps {
  sender: Pick<MailSender, 'send'>;
  status: StatusStore;
  payloads: PayloadStore;
  storage: Pick<StorageClients, 'outboxQueue'>;
  telemetry?: Telemetry;
  logger?: Logger;
  now?: () => number;
  leaseMs?: number;
  maxAttempts?: number;
  /** Seconds to wait before attempt `attempt + 1`, after `attempt` failed transiently. */
  backoffSeconds?: (attempt: number) => number;
}

export interface DeliveryContext {
  /** The queue trigger's dequeueCount (1 on first delivery); absent when delivering inline. */
  dequeueCount?: number;
  /** host.json extensions.queues.maxDequeueCount. */
  maxDequeueCount?: number;
  invocationId?: string;
  /** `?wait=true`: delivered in the accepting request, before its (held) queue message is due. */
  inline?: boolean;
}

export type DeliverOutcome =
  | { outcome: 'sent'; record: StoredRecord; result: SendResult }
  /** Already `sent`, `failed` or `suppressed`: nothing to do. */
  | { outcome: 'completed'; record: StoredRecord }
  /** Another worker holds the lease, or the record is not due yet: this copy was re-enqueued or dropped. */
  | { outcome: 'waiting'; record: StoredRecord; reason: 'lease' | 'not-due'; retryInSeconds?: number }
  | { outcome: 'deferred'; record: StoredRecord; error: MailError; retryInSeconds: number }
  | { outcome: 'failed'; record: StoredRecord; error: MailError }
  | { outcome: 'missing' };

/** 30 s × 2^(attempt−1), capped at 1 h, plus up to 10 % jitter so that a burst of failures does not retry in step. */
export function defaultBackoffSeconds(attempt: number): number {
  const base = Math.min(BACKOFF_MAX_SECONDS, BACKOFF_BASE_SECONDS * 2 ** Math.max(0, attempt - 1));
  return Math.round(base * (1 + Math.random() * 0.1));
}

/**
 * Delivers outbox message `id`. Resolves when the queue message may be acknowledged (whatever the mail outcome);
 * rejects only when storage fails, so that the host retries and, after maxDequeueCount, poisons it.
 */
export async function deliver(id: string, context: DeliveryContext, deps: DeliverDeps): Promise<DeliverOutcome> {
  const logger = deps.logger ?? silentLogger;
  const now = deps.now ?? Date.now;
  const leaseMs = deps.leaseMs ?? DEFAULT_LEASE_MS;
  const iso = (ms: number) => new Date(ms).toISOString();

  let leased: StoredRecord | undefined;
  for (let race = 0; race < MAX_RACES && !leased; race++) {
    const record = await deps.status.get(id);
    if (!record) {
      // Records are written before their queue message, so retrying cannot make one appear.
      logger.warn('outbox message has no status record; dropped', { id, dequeueCount: context.dequeueCount });
      return { outcome: 'missing' };
    }
    if (TERMINAL_STATUSES.has(record.status)) return { outcome: 'completed', record };
    const at = now();
    if (record.status === 'sending' && record.leaseUntil && Date.parse(record.leaseUntil) > at) {
      const retryInSeconds = Math.ceil((Date.parse(record.leaseUntil) - at) / 1000) + 1;
      await enqueueOutbox(deps.storage.outboxQueue, id, retryInSeconds);
      logger.info('outbox message is being sent by another worker; re-enqueued for when its lease ends', {
        id,
        retryInSeconds,
      });
      return { outcome: 'waiting', record, reason: 'lease', retryInSeconds };
    }
    if (record.status !== 'sending' && !context.inline && Date.parse(record.dueAt) > at + EARLY_TOLERANCE_MS) {
      // Its own queue message becomes visible at dueAt; this one is a duplicate.
      logger.debug('outbox message arrived before it was due; dropped as a duplicate', { id, dueAt: record.dueAt });
      return { outcome: 'waiting', record, reason: 'not-due' };
    }
    if (record.status === 'sending')
      logger.warn('taking over an expired sending lease', { id, lease: record.leaseUntil });
    leased = await deps.status.transition(record, {
      status: 'sending',
      attempts: record.attempts + 1,
      leaseUntil: iso(at + leaseMs),
    });
  }
  if (!leased)
    throw new Error(`Outbox message ${id}: lost the status record race ${MAX_RACES} times; the host retries`);

  const attempt = leased.attempts;
  const payload = await deps.payloads.get(id);
  if (!payload) {
    const error = new MailError('PAYLOAD_MISSING', `The payload blob of message ${id} does not exist`);
    return fail(leased, error);
  }

  let result: SendResult;
  try {
    result = await deps.sender.send(payload.message, {
      id,
      source: leased.source,
      attempt,
      ...(leased.template ? { template: leased.template } : {}),
      ...(leased.batchId ? { batchId: leased.batchId } : {}),
      ...(context.invocationId ? { invocationId: context.invocationId } : {}),
    });
  } catch (thrown) {
    if (!(thrown instanceof MailError)) throw thrown;
    const maxAttempts = deps.maxAttempts ?? DEFAULT_MAX_ATTEMPTS;
    if (!thrown.transient) return fail(leased, thrown);
    if (attempt >= maxAttempts) {
      const exhausted = new MailError(thrown.code, `retries exhausted: ${thrown.message}`, {
        cause: thrown,
        ...(thrown.smtp ? { smtp: thrown.smtp } : {}),
        transient: false,
      });
      return fail(leased, exhausted);
    }
    return defer(leased, thrown);
  }

  const sentChanges: RecordChanges = {
    status: 'sent',
    sentAt: iso(now()),
    messageId: result.messageId,
    smtp: result.smtp,
    leaseUntil: undefined,
    error: undefined,
  };
  // The message is out: record it, re-reading after a lost race (our lease ran out and another worker took over)
  // or a failed write whose effect is unknown.
  let current: StoredRecord | undefined = leased;
  for (let tryNo = 1; tryNo <= SENT_WRITE_TRIES + MAX_RACES; tryNo++) {
    try {
      current ??= await deps.status.get(id);
      if (!current) break;
      if (current.status === 'sent') return { outcome: 'sent', record: current, result };
      const written = await deps.status.transition(current, sentChanges);
      if (written) return { outcome: 'sent', record: written, result };
    } catch (error) {
      if (tryNo >= SENT_WRITE_TRIES) throw error;
    }
    current = undefined;
  }
  throw new Error(`Outbox message ${id} was sent but its status record could not be updated`);

  async function fail(record: StoredRecord, error: MailError): Promise<DeliverOutcome> {
    const written = await deps.status.transition(record, {
      status: 'failed',
      error: error.toJSON(),
      leaseUntil: undefined,
    });
    logger.warn('outbox message failed', { id, code: error.code, attempt: record.attempts });
    return { outcome: 'failed', record: written ?? record, error };
  }

  async function defer(record: StoredRecord, error: MailError): Promise<DeliverOutcome> {
    const retryInSeconds = (deps.backoffSeconds ?? defaultBackoffSeconds)(record.attempts);
    // Enqueue before recording dueAt (see the invariant above).
    await enqueueOutbox(deps.storage.outboxQueue, id, retryInSeconds);
    const written = await deps.status.transition(record, {
      status: 'queued',
      error: error.toJSON(),
      dueAt: iso(now() + retryInSeconds * 1000),
      leaseUntil: undefined,
    });
    deps.telemetry?.trackEvent('MailDeferred', {
      id,
      source: record.source,
      attempt: record.attempts,
      errorCode: error.code,
      transient: true,
      ...(record.template ? { template: record.template } : {}),
      ...(record.batchId ? { batchId: record.batchId } : {}),
      ...(error.smtp ? { smtpCode: error.smtp.code } : {}),
      ...(context.invocationId ? { invocationId: context.invocationId } : {}),
    });
    logger.info('outbox message deferred after a transient failure', {
      id,
      code: error.code,
      attempt: record.attempts,
      retryInSeconds,
    });
    return { outcome: 'deferred', record: written ?? record, error, retryInSeconds };
  }
}

/**
 * Handles a message the host moved to `mail-outbox-poison`: marks its record `failed` with reason "poison: …",
 * unless it already has an outcome. A record still under a live lease is left to its worker.
 */
export async function markPoisoned(
  id: string,
  context: { dequeueCount?: number },
  deps: Pick<DeliverDeps, 'status' | 'logger' | 'now' | 'telemetry'>,
): Promise<StoredRecord | undefined> {
  const logger = deps.logger ?? silentLogger;
  const now = deps.now ?? Date.now;
  for (let race = 0; race < MAX_RACES; race++) {
    const record = await deps.status.get(id);
    if (!record || TERMINAL_STATUSES.has(record.status)) return record;
    if (record.status === 'sending' && record.leaseUntil && Date.parse(record.leaseUntil) > now()) return record;
    const last = record.error ? `; last error: ${record.error.code}: ${record.error.message}` : '';
    const error = new MailError(
      'POISON_MESSAGE',
      `poison: the outbox worker failed on this message too many times without an outcome (attempts ${record.attempts})${last}`,
    );
    const written = await deps.status.transition(record, {
      status: 'failed',
      error: error.toJSON(),
      leaseUntil: undefined,
    });
    if (written) {
      logger.error('outbox message poisoned', { id, dequeueCount: context.dequeueCount });
      deps.telemetry?.trackEvent('MailFailed', {
        id,
        source: record.source,
        attempt: record.attempts,
        errorCode: error.code,
        transient: false,
      });
      return written;
    }
  }
  throw new Error(`Outbox message ${id}: lost the status record race ${MAX_RACES} times while poisoning`);
}
