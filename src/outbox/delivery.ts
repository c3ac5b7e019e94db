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
 * - Before SMTP, a worker that has held its lease for a while (a pacing wait, or a stall) renews it with an
 *   ETag-guarded write. If another worker took the message over meanwhile, the write fails and this worker gives
 *   the message up instead of sending it: a worker never sends on a lease it no longer holds. The renewal comes
 *   before the check that the send slot is still current, so a slow write cannot make a send late unnoticed.
 * - No record yet: the accept writes the queue message before the record, so the record may be a moment behind.
 *   Delivery waits for it briefly, then leaves the message to the host's retries; a queue message whose accept died
 *   before writing the record ends in the poison queue and is dropped (that accept was never answered).
 * - Bulk mail (a record with a `list`) whose recipient was suppressed while the message waited (a sendAt, pacing, a
 *   retry) ends `suppressed` before any pacing slot or SMTP: checked on every delivery, after the lease is taken.
 * - Exchange saying the mailbox is over a limit now (554 5.2.0 daily quota, 432 4.3.2 sessions), whoever used the
 *   mailbox up, is waited out like the app's own pacing: back to the queue, no attempt spent, the reason recorded.
 *
 * Invariant shared with the outbox: whenever a record is `queued`/`scheduled` with `dueAt` in the future, a queue
 * message becomes visible at `dueAt`. So a copy that arrives well before `dueAt` (a duplicate from a replayed or
 * repaired accept) is dropped, and a deferral enqueues its retry before it records the new `dueAt`.
 *
 * The one duplicate that cannot be prevented: the server answers 250 and the process dies (or storage fails)
 * before `sent` is written. The lease then expires and the next delivery sends the message again.
 */
import { DEFAULT_RETRY_BACKOFF_SECONDS, DEFAULT_SEND_LEASE_SECONDS } from '../config';
import { MailError, mailboxThrottleOf, type MailboxThrottle } from '../errors';
import { invocationTelemetry, type Invocation } from '../invocation';
import { silentLogger, type Logger } from '../logger';
import { allRecipients } from '../message';
import { OUTBOX_MAX_DEQUEUE_COUNT, enqueueOutbox } from './outboxQueue';
import type { Pacer } from '../pacing/pacer';
import type { MessageStore } from './messageStore';
import { parseMessage, type StoredMessage } from './messageContent';
import type { MailSender, SendResult } from '../sender/mailSender';
import {
  TERMINAL_STATUSES,
  type RecordChanges,
  type StatusStore,
  type StoredRecord,
  type WaitReason,
} from './statusStore';
import { IDLE_CLOSE_MS } from '../timeouts';
import { LOST_RACE, MAX_RACES, retryLostRaces } from '../storage/etagRetry';
import { isStorageError, type StorageClients } from '../storage/storageClients';
import type { SuppressionStore } from '../suppression/suppressionStore';
import type { Telemetry } from '../telemetry';

/** How long a worker owns a `sending` record unless MAIL_SEND_LEASE_SECONDS says otherwise. */
export const DEFAULT_LEASE_MS = DEFAULT_SEND_LEASE_SECONDS * 1000;
/** Send attempts (transient failures included) before a message is failed with "retries exhausted". */
export const DEFAULT_MAX_ATTEMPTS = 8;
/** Back-off after a transient failure at the default base (30 s, doubling per attempt): at most 1 h, with up to 10 % jitter. */
export const BACKOFF_MAX_SECONDS = 60 * 60;
/** A copy arriving this much before its record's dueAt is a duplicate (queue visibility is accurate to about a second). */
const EARLY_TOLERANCE_MS = 2_000;
/** Re-tries of the `sent` write: losing it means the one unavoidable duplicate. */
const SENT_WRITE_TRIES = 3;
/** Pauses before re-reading a record not written yet (the accept writes the queue message first): 3.3 s in all. */
const MISSING_RECORD_WAITS_MS = [300, 1_000, 2_000];
/**
 * A lease held longer than this before SMTP (a pacing wait, a stall) is renewed first, with an ETag-guarded write:
 * a fresher lease has nearly all of its MAIL_SEND_LEASE_SECONDS left, so nobody can have taken the message over.
 */
const LEASE_RECHECK_AFTER_MS = 5_000;
/** After 432 4.3.2 (another sender holds the mailbox's sessions): 10 s, doubling per throttle in a row, at most 5 min. */
export const CONCURRENCY_BACKOFF_BASE_MS = 10_000;
export const CONCURRENCY_BACKOFF_MAX_MS = 5 * 60 * 1000;
/** Without shared pacing, a mailbox Exchange refused for its daily quota is probed again after this long. */
const DEFAULT_QUOTA_PROBE_MS = 15 * 60 * 1000;

export interface DeliverDeps {
  sender: Pick<MailSender, 'send'> & Partial<Pick<MailSender, 'connectionReady'>>;
  status: StatusStore;
  payloads: MessageStore;
  storage: Pick<StorageClients, 'outboxQueue'>;
  telemetry?: Telemetry;
  logger?: Logger;
  now?: () => number;
  /** Suppressed recipients: bulk mail to them is recorded `suppressed` instead of sent. */
  suppressions?: Pick<SuppressionStore, 'suppressedFrom'>;
  /** The mailbox's shared pacing; without it messages are sent as fast as they come. */
  pacer?: Pick<Pacer, 'reserve' | 'lateToleranceMs' | 'blockForDailyQuota'>;
  /** Without a pacer: how long to wait before probing a mailbox Exchange refused for its daily quota. */
  quotaProbeMs?: number;
  leaseMs?: number;
  maxAttempts?: number;
  /** Seconds to wait before attempt `attempt + 1`, after `attempt` failed transiently. */
  backoffSeconds?: (attempt: number) => number;
  /** Milliseconds to wait after the `throttles`-th 432 4.3.2 in a row (another sender holds the mailbox's sessions). */
  concurrencyBackoffMs?: (throttles: number) => number;
  /** The host's dequeues of a message before it poisons it; default {@link OUTBOX_MAX_DEQUEUE_COUNT}. */
  maxDequeueCount?: number;
}

/** The invocation delivering (the queue trigger's, or the accepting request's with `?wait=true`): its ids and logger. */
export interface DeliveryContext extends Invocation {
  /** The queue trigger's dequeueCount (1 on first delivery); absent when delivering inline. */
  dequeueCount?: number | undefined;
  /** `?wait=true`: delivered in the accepting request, before its (held) queue message is due. */
  inline?: boolean;
}

export type DeliverOutcome =
  | { outcome: 'sent'; record: StoredRecord; result: SendResult }
  /** Already `sent`, `failed` or `suppressed`: nothing to do. */
  | { outcome: 'completed'; record: StoredRecord }
  /** Bulk mail whose recipient was suppressed while it waited: recorded `suppressed`, not sent. */
  | { outcome: 'suppressed'; record: StoredRecord }
  /**
   * Another worker holds the lease (`lease`), took it over while this one waited (`lease-lost`: not sent), or the
   * record is not due yet (`not-due`): this copy was re-enqueued or dropped.
   */
  | { outcome: 'waiting'; record: StoredRecord; reason: 'lease' | 'lease-lost' | 'not-due'; retryInSeconds?: number }
  | { outcome: 'deferred'; record: StoredRecord; error: MailError; retryInSeconds: number }
  /**
   * Over a limit (the app's pacing: rate, daily recipients, connection slots; or Exchange's: daily quota, sessions):
   * back in the queue, not counted as an attempt. `error` is Exchange's reply when Exchange refused it.
   */
  | { outcome: 'paced'; record: StoredRecord; reason: PacingReason; retryInSeconds: number; error?: MailError }
  | { outcome: 'failed'; record: StoredRecord; error: MailError }
  | { outcome: 'missing' };

/** Why a message waits without an attempt counted: a limit, the app's or Exchange's (every wait but a retry's back-off). */
export type PacingReason = Exclude<WaitReason, 'retry'>;

/** `?wait=true`: the longest an inline send waits for its pacing slot before the request is answered 202 queued. */
export const INLINE_MAX_WAIT_MS = 5_000;
/** Slots given up because this process started too late for them, before it sends late anyway. */
const MAX_LATE_SLOTS = 3;
/** A pacing deferral comes back at least this much later (queue visibility has whole seconds). */
const MIN_PACING_DELAY_SECONDS = 1;

/** 10 s × 2^(throttles−1), capped at 5 min, plus up to 10 % jitter. */
export function defaultConcurrencyBackoffMs(throttles: number): number {
  const base = Math.min(CONCURRENCY_BACKOFF_MAX_MS, CONCURRENCY_BACKOFF_BASE_MS * 2 ** Math.max(0, throttles - 1));
  return Math.round(base * (1 + Math.random() * 0.1));
}

/**
 * `baseSeconds` (30 s) × 2^(attempt−1), capped at 120 times the base (1 h), plus up to 10 % jitter so that a burst of
 * failures does not retry in step; at least 1 s (queue visibility has whole seconds).
 */
export function defaultBackoffSeconds(attempt: number, baseSeconds = DEFAULT_RETRY_BACKOFF_SECONDS): number {
  const cap = baseSeconds * (BACKOFF_MAX_SECONDS / DEFAULT_RETRY_BACKOFF_SECONDS);
  const base = Math.min(cap, baseSeconds * 2 ** Math.max(0, attempt - 1));
  return Math.max(1, Math.round(base * (1 + Math.random() * 0.1)));
}

/**
 * Delivers outbox message `id`. Resolves when the queue message may be acknowledged (whatever the mail outcome);
 * rejects only when storage fails, so that the host retries and, after maxDequeueCount, poisons it.
 */
async function deliver(id: string, context: DeliveryContext, deps: DeliverDeps): Promise<DeliverOutcome> {
  const logger = context.logger ?? deps.logger ?? silentLogger;
  /** What every event of this delivery carries: this invocation's ids, and the accepting invocation's operation id. */
  const correlation = (record: StoredRecord) => ({
    ...invocationTelemetry(context),
    ...(record.acceptOperationId ? { acceptOperationId: record.acceptOperationId } : {}),
  });
  const now = deps.now ?? Date.now;
  const leaseMs = deps.leaseMs ?? DEFAULT_LEASE_MS;
  const maxAttempts = deps.maxAttempts ?? DEFAULT_MAX_ATTEMPTS;
  const iso = (ms: number) => new Date(ms).toISOString();

  const taken = await retryLostRaces<{ leased: StoredRecord; at: number } | { done: DeliverOutcome }>({
    maxRaces: MAX_RACES,
    attempt: async (race) => {
      const record = race === 0 ? await recordWhenWritten() : await deps.status.get(id);
      if (!record) {
        const retriesLeft =
          context.dequeueCount !== undefined &&
          context.dequeueCount < (deps.maxDequeueCount ?? OUTBOX_MAX_DEQUEUE_COUNT);
        if (race === 0 && retriesLeft) {
          // Its accept may still be writing it: let the host try again after its visibility timeout.
          throw new Error(`Outbox message ${id} has no status record yet; the host retries`);
        }
        // The accept that enqueued it died before writing the record (it was never answered), or the record was
        // deleted: nothing to send.
        logger.warn('outbox message has no status record; dropped', { id, dequeueCount: context.dequeueCount });
        return { done: { outcome: 'missing' } };
      }
      if (TERMINAL_STATUSES.has(record.status)) return { done: { outcome: 'completed', record } };
      const at = now();
      if (record.status === 'sending' && record.leaseUntil && Date.parse(record.leaseUntil) > at) {
        const retryInSeconds = Math.ceil((Date.parse(record.leaseUntil) - at) / 1000) + 1;
        await enqueueOutbox(deps.storage.outboxQueue, id, retryInSeconds);
        logger.info('outbox message is being sent by another worker; re-enqueued for when its lease ends', {
          id,
          retryInSeconds,
        });
        return { done: { outcome: 'waiting', record, reason: 'lease', retryInSeconds } };
      }
      if (record.status !== 'sending' && !context.inline && Date.parse(record.dueAt) > at + EARLY_TOLERANCE_MS) {
        // Its own queue message becomes visible at dueAt; this one is a duplicate.
        logger.debug('outbox message arrived before it was due; dropped as a duplicate', { id, dueAt: record.dueAt });
        return { done: { outcome: 'waiting', record, reason: 'not-due' } };
      }
      if (record.status === 'sending')
        logger.warn('taking over an expired sending lease', { id, lease: record.leaseUntil });
      if (record.attempts >= maxAttempts) {
        // Attempts that ended without an outcome (a crash, storage failing after the lease) end here too.
        const last = record.error ? `: last error ${record.error.code}: ${record.error.message}` : '';
        return {
          done: await fail(
            record,
            new MailError('RETRIES_EXHAUSTED', `retries exhausted after ${record.attempts} attempts${last}`),
            { track: true },
          ),
        };
      }
      const leased = await deps.status.transition(record, {
        status: 'sending',
        attempts: record.attempts + 1,
        leaseUntil: iso(at + leaseMs),
        waitReason: undefined,
      });
      return leased ? { leased, at } : LOST_RACE;
    },
    exhausted: () => {
      throw new Error(`Outbox message ${id}: lost the status record race ${MAX_RACES} times; the host retries`);
    },
  });
  if ('done' in taken) return taken.done;
  const { leased } = taken;
  let leasedAt = taken.at;

  const attempt = leased.attempts;
  /** The record as this worker last wrote it: its ETag guards the next write. */
  let held = leased;
  /** Set once SMTP accepted the message: from then on the lease must never be given back for a resend. */
  let accepted = false;
  try {
    return await sendLeased(held);
  } catch (error) {
    if (accepted) throw error;
    // Storage failed (or a bug threw) while we held the lease: give it back, so that the host's retry of this
    // queue message (dequeueCount, then the poison queue) decides, instead of a live lease hiding the message.
    await deps.status
      .transition(held, { status: 'queued', leaseUntil: undefined, dueAt: iso(now()) })
      .catch(() => logger.warn('could not release the sending lease after an error; it expires on its own', { id }));
    throw error;
  }

  /** The record; when the first read finds none, re-reads a few times (the accept writes it after the queue message). */
  async function recordWhenWritten(): Promise<StoredRecord | undefined> {
    let record = await deps.status.get(id);
    for (const pause of MISSING_RECORD_WAITS_MS) {
      if (record) return record;
      await new Promise((resolve) => setTimeout(resolve, pause));
      record = await deps.status.get(id);
    }
    return record;
  }

  /**
   * After a while held (a pacing wait, a stall), renews the lease with an ETag-guarded write and returns the record
   * as now stored; undefined when another worker took the message over meanwhile. A fresh lease is left as it is.
   */
  async function renewHeldLease(): Promise<StoredRecord | undefined> {
    if (now() - leasedAt <= Math.min(LEASE_RECHECK_AFTER_MS, leaseMs / 10)) return held;
    const renewed = await deps.status.transition(held, { leaseUntil: iso(now() + leaseMs) });
    if (!renewed) return undefined;
    held = renewed;
    leasedAt = now();
    return renewed;
  }

  function leaseLost(): DeliverOutcome {
    logger.warn('the sending lease was taken over while this worker waited; not sending', {
      id,
      heldMs: now() - leasedAt,
    });
    return { outcome: 'waiting', record: held, reason: 'lease-lost' };
  }

  async function sendLeased(leased: StoredRecord): Promise<DeliverOutcome> {
    let payload: StoredMessage | undefined;
    try {
      // Inline in the record just read, or (a large message, or one accepted before records held content) a blob.
      payload = leased.content !== undefined ? parseMessage(leased.content) : await deps.payloads.get(id);
    } catch (error) {
      if (isStorageError(error)) throw error;
      return fail(
        leased,
        new MailError('PAYLOAD_INVALID', `The stored content of message ${id} cannot be read`, { cause: error }),
        { track: true },
      );
    }
    if (!payload) {
      const error = new MailError('PAYLOAD_MISSING', `The payload blob of message ${id} does not exist`);
      return fail(leased, error, { track: true });
    }

    const { suppressions } = deps;
    if (leased.list !== undefined && suppressions) {
      // Suppressed while it waited: no pacing slot, no SMTP.
      const list = leased.list;
      const checks = await Promise.all(
        allRecipients(payload.message).map((r) => suppressions.suppressedFrom(r.address, list)),
      );
      if (checks.some((c) => c !== undefined)) return suppress(leased);
    }

    if (deps.pacer) {
      // A connection first: a send slot taken by a message that then cannot connect would be lost to everyone.
      if (deps.sender.connectionReady && !(await deps.sender.connectionReady())) {
        return pace(leased, 'connections', now() + IDLE_CLOSE_MS * (1 + Math.random()));
      }
      const recipients = allRecipients(payload.message).length;
      // A send that starts well after its slot (this process stalled) could bunch up with the next ones: it gives
      // the slot up and takes a new one.
      for (let late = 0; ; late++) {
        let reservation;
        try {
          // An HTTP caller waiting on ?wait=true is answered 202 rather than held while the slot is far off.
          reservation = await deps.pacer.reserve(recipients, context.inline ? { maxWaitMs: INLINE_MAX_WAIT_MS } : {});
        } catch (error) {
          if (error instanceof MailError) return fail(leased, error, { track: true });
          throw error;
        }
        if (reservation.kind === 'defer') return pace(leased, reservation.reason, reservation.retryAt);
        const wait = reservation.at - now();
        if (wait > 0) await new Promise((resolve) => setTimeout(resolve, wait));
        // The renewal's write before the lateness check: a slow write makes the send late like any other stall.
        const renewed = await renewHeldLease();
        if (!renewed) return leaseLost();
        leased = renewed;
        if (now() - reservation.at <= deps.pacer.lateToleranceMs || late >= MAX_LATE_SLOTS) break;
        logger.debug('send slot missed; taking another', { id, lateMs: now() - reservation.at });
      }
    } else {
      const renewed = await renewHeldLease();
      if (!renewed) return leaseLost();
      leased = renewed;
    }

    let result: SendResult;
    try {
      result = await deps.sender.send(payload.message, {
        id,
        source: leased.source,
        attempt,
        ...(leased.template ? { template: leased.template } : {}),
        ...(leased.batchId ? { batchId: leased.batchId } : {}),
        ...correlation(leased),
        ...(context.logger ? { logger: context.logger } : {}),
      });
    } catch (thrown) {
      if (!(thrown instanceof MailError)) throw thrown;
      if (thrown.code === 'CONNECTION_SLOTS_BUSY') {
        // Other instances hold every connection slot; they give idle ones back after IDLE_CLOSE_MS.
        return pace(leased, 'connections', now() + IDLE_CLOSE_MS * (1 + Math.random()));
      }
      const throttle = mailboxThrottleOf(thrown);
      if (throttle) return throttled(leased, thrown, throttle);
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
    accepted = true;

    const sentAt = iso(now());
    const sentChanges: RecordChanges = {
      status: 'sent',
      sentAt,
      completedAt: sentAt,
      messageId: result.messageId,
      smtp: result.smtp,
      leaseUntil: undefined,
      error: undefined,
      throttles: undefined,
      // Exchange took the message but refused some recipients: the status says which (the caller's own data).
      ...(result.refused.length > 0 ? { refused: result.refused, refusedCount: result.refused.length } : {}),
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
  }

  /** A bulk message whose recipient is suppressed now: final, the attempt given back, nothing sent. */
  async function suppress(record: StoredRecord): Promise<DeliverOutcome> {
    const written = await deps.status.transition(record, {
      status: 'suppressed',
      completedAt: iso(now()),
      attempts: Math.max(0, record.attempts - 1),
      leaseUntil: undefined,
      waitReason: undefined,
    });
    if (!written) return leaseLost();
    deps.telemetry?.trackEvent('MailSuppressed', {
      id,
      source: record.source,
      stage: 'delivery',
      ...(record.list !== undefined ? { list: record.list } : {}),
      ...(record.template ? { template: record.template } : {}),
      ...(record.batchId ? { batchId: record.batchId } : {}),
      ...correlation(record),
    });
    logger.info('bulk message to a recipient suppressed while it waited; not sent', { id, list: record.list });
    return { outcome: 'suppressed', record: written };
  }

  /** Back to the queue until `retryAt`, without counting an attempt: being over a limit is not a failure. */
  async function pace(record: StoredRecord, reason: PacingReason, retryAt: number): Promise<DeliverOutcome> {
    const retryInSeconds = Math.max(MIN_PACING_DELAY_SECONDS, Math.ceil((retryAt - now()) / 1000));
    const written = await requeue(record, retryInSeconds, {
      attempts: Math.max(0, record.attempts - 1),
      waitReason: reason,
    });
    deps.telemetry?.trackEvent('MailPaced', {
      id,
      source: record.source,
      attempt: record.attempts,
      reason,
      retryInSeconds,
      ...(record.batchId ? { batchId: record.batchId } : {}),
      ...correlation(record),
    });
    logger.debug('outbox message paced', { id, reason, retryInSeconds });
    return { outcome: 'paced', record: written ?? record, reason, retryInSeconds };
  }

  /** Back to `queued`, due in `retryInSeconds`. Enqueues before recording dueAt (see the invariant above). */
  async function requeue(record: StoredRecord, retryInSeconds: number, changes: RecordChanges) {
    await enqueueOutbox(deps.storage.outboxQueue, id, retryInSeconds);
    return deps.status.transition(record, {
      ...changes,
      status: 'queued',
      dueAt: iso(now() + retryInSeconds * 1000),
      leaseUntil: undefined,
    });
  }

  /**
   * Exchange says the mailbox is over a limit now (its daily quota, or its sessions): back to the queue without
   * spending the attempt, like the app's own pacing, with Exchange's reply kept as the reason.
   */
  async function throttled(record: StoredRecord, error: MailError, reason: MailboxThrottle): Promise<DeliverOutcome> {
    const throttles = (record.throttles ?? 0) + 1;
    let retryAt: number;
    if (reason === 'exchange-daily-quota') {
      // Every instance holds its messages back until the block ends; then one of them probes the mailbox again.
      retryAt = deps.pacer
        ? await deps.pacer.blockForDailyQuota()
        : now() + (deps.quotaProbeMs ?? DEFAULT_QUOTA_PROBE_MS);
    } else {
      retryAt = now() + (deps.concurrencyBackoffMs ?? defaultConcurrencyBackoffMs)(throttles);
      deps.telemetry?.trackEvent('MailThrottled', {
        id,
        source: record.source,
        attempt: record.attempts,
        errorCode: error.code,
        transient: true,
        ...(error.smtp ? { smtpCode: error.smtp.code } : {}),
        ...(error.smtp?.enhanced ? { smtpEnhancedCode: error.smtp.enhanced } : {}),
        ...correlation(record),
      });
    }
    const retryInSeconds = Math.max(MIN_PACING_DELAY_SECONDS, Math.ceil((retryAt - now()) / 1000));
    const written = await requeue(record, retryInSeconds, {
      attempts: Math.max(0, record.attempts - 1),
      waitReason: reason,
      throttles,
      error: error.toJSON(),
    });
    deps.telemetry?.trackEvent('MailDeferred', {
      id,
      source: record.source,
      attempt: Math.max(0, record.attempts - 1),
      reason,
      retryInSeconds,
      errorCode: error.code,
      transient: true,
      ...(error.smtp ? { smtpCode: error.smtp.code } : {}),
      ...(error.smtp?.enhanced ? { smtpEnhancedCode: error.smtp.enhanced } : {}),
      ...(record.template ? { template: record.template } : {}),
      ...(record.batchId ? { batchId: record.batchId } : {}),
      ...correlation(record),
    });
    logger.info('Exchange says the mailbox is over a limit; the message waits without spending an attempt', {
      id,
      code: error.code,
      reason,
      retryInSeconds,
    });
    return { outcome: 'paced', record: written ?? record, reason, retryInSeconds, error };
  }

  /**
   * Final: `failed`. `track` when no SMTP attempt of this delivery reported it (the sender records MailFailed for its
   * own attempts): a payload that cannot be read, retries used up without an outcome, a pacing error.
   */
  async function fail(
    record: StoredRecord,
    error: MailError,
    options: { track?: boolean } = {},
  ): Promise<DeliverOutcome> {
    const written = await deps.status.transition(record, {
      status: 'failed',
      completedAt: iso(now()),
      error: error.toJSON(),
      leaseUntil: undefined,
    });
    if (options.track) {
      deps.telemetry?.trackEvent('MailFailed', {
        id,
        source: record.source,
        attempt: record.attempts,
        errorCode: error.code,
        transient: false,
        ...(record.template ? { template: record.template } : {}),
        ...(record.batchId ? { batchId: record.batchId } : {}),
        ...correlation(record),
      });
    }
    logger.warn('outbox message failed', { id, code: error.code, attempt: record.attempts });
    return { outcome: 'failed', record: written ?? record, error };
  }

  async function defer(record: StoredRecord, error: MailError): Promise<DeliverOutcome> {
    const retryInSeconds = (deps.backoffSeconds ?? defaultBackoffSeconds)(record.attempts);
    const written = await requeue(record, retryInSeconds, { error: error.toJSON(), waitReason: 'retry' });
    deps.telemetry?.trackEvent('MailDeferred', {
      id,
      source: record.source,
      attempt: record.attempts,
      reason: 'retry',
      retryInSeconds,
      errorCode: error.code,
      transient: true,
      ...(record.template ? { template: record.template } : {}),
      ...(record.batchId ? { batchId: record.batchId } : {}),
      ...(error.smtp ? { smtpCode: error.smtp.code } : {}),
      ...(error.smtp?.enhanced ? { smtpEnhancedCode: error.smtp.enhanced } : {}),
      ...correlation(record),
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
async function markPoisoned(
  id: string,
  context: Invocation & { dequeueCount?: number | undefined },
  deps: Pick<DeliverDeps, 'status' | 'logger' | 'now' | 'telemetry'>,
): Promise<StoredRecord | undefined> {
  const logger = context.logger ?? deps.logger ?? silentLogger;
  const now = deps.now ?? Date.now;
  return retryLostRaces({
    maxRaces: MAX_RACES,
    attempt: async () => {
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
        completedAt: new Date(now()).toISOString(),
        error: error.toJSON(),
        leaseUntil: undefined,
      });
      if (!written) return LOST_RACE;
      logger.error('outbox message poisoned', { id, dequeueCount: context.dequeueCount });
      deps.telemetry?.trackEvent('MailFailed', {
        id,
        source: record.source,
        attempt: record.attempts,
        errorCode: error.code,
        transient: false,
        ...invocationTelemetry(context),
        ...(record.acceptOperationId ? { acceptOperationId: record.acceptOperationId } : {}),
      });
      return written;
    },
    exhausted: () => {
      throw new Error(`Outbox message ${id}: lost the status record race ${MAX_RACES} times while poisoning`);
    },
  });
}

/**
 * The outbox worker: what the queue trigger, the poison trigger and `POST /api/messages?wait=true` call, with the
 * dependencies the app's services gave it.
 */
export class Delivery {
  constructor(readonly deps: DeliverDeps) {}

  /**
   * Delivers outbox message `id`. Resolves when the queue message may be acknowledged (whatever the mail outcome);
   * rejects only when storage fails, so that the host retries and, after maxDequeueCount, poisons it.
   */
  deliver(id: string, context: DeliveryContext = {}): Promise<DeliverOutcome> {
    return deliver(id, context, this.deps);
  }

  /** Marks a message the host moved to `mail-outbox-poison` failed ("poison: …"), unless it has an outcome already. */
  markPoisoned(
    id: string,
    context: Invocation & { dequeueCount?: number | undefined } = {},
  ): Promise<StoredRecord | undefined> {
    return markPoisoned(id, context, this.deps);
  }

  /** The same worker with some dependencies replaced (a test's faulty sender or pacer). */
  with(overrides: Partial<DeliverDeps>): Delivery {
    return new Delivery({ ...this.deps, ...overrides });
  }
}
