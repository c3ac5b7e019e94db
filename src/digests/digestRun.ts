/**
 * One run of a digest: every pending recipient gets one message of the items received in the run's period, through
 * the outbox like any other mail (source `digest`).
 *
 * The period. A run claims the digest's run record (insert, or replace under its ETag) and takes as its `periodEnd`
 * the Timestamp the storage service gave that write: items are stamped by the same service when inserted, so an
 * item with a Timestamp up to periodEnd was committed before the run started and every read of the run sees it; an
 * item received later is left for the next period. periodEnd is written to the run record, so a run taken over
 * after its instance died (its lease ran out) keeps the same period.
 *
 * Per recipient, in this order: read its items, render and accept the digest into the outbox with the idempotency
 * key `digest:<digest>:<recipient hash>:<periodEnd>`, delete the items it listed or counted, then drop the recipient's
 * index row if it has no items left (with the ETag read before its items, see digestStore.ts). A crash anywhere
 * leaves the items until the outbox entry exists; a rerun of the same period finds the entry by its key (the same
 * content is a replay; less content, because part of the items were deleted already, is answered with a conflict,
 * which also says the entry exists) and deletes what is left of them.
 *
 * Overlapping runs. A run holds a lease on the run record (`leaseUntil`, renewed under the ETag as it checkpoints
 * its counts); a second run while it is held answers `busy`. A run whose checkpoint loses the ETag race was taken
 * over and stops. The idempotency key is the backstop: two runs of one period accept one message per recipient.
 */
import { createHash } from 'node:crypto';
import type { Config } from '../config';
import { MailError } from '../errors';
import { invocationLogger, invocationTelemetry, type Invocation } from '../invocation';
import { silentLogger, type Logger } from '../logger';
import { uuidv7 } from '../outbox/messageIds';
import type { Outbox } from '../outbox/outbox';
import type { SendRequest } from '../outbox/sendRequest';
import { LOST_RACE, MAX_RACES, retryLostRaces } from '../storage/etagRetry';
import { MAX_TEMPLATE_DATA_CHARS } from '../templates/templateRenderer';
import type { UnsubscribeLinks } from '../suppression/unsubscribeLinks';
import type { Telemetry } from '../telemetry';
import { digestTemplate } from './digestRequest';
import type { DigestRunRecord, DigestStore, PendingRecipient, StoredItem } from './digestStore';

/** A run's lease on its run record; renewed at every checkpoint. */
export const DIGEST_LEASE_MS = 2 * 60 * 1000;
/** Counts and lease are written at most this often while a run goes on. */
const CHECKPOINT_MS = 5_000;
/** Recipients handled at once (bounded concurrency against storage). */
const RECIPIENT_CONCURRENCY = 16;
/** Recipients between two looks at the checkpoint clock. */
const CHECKPOINT_SLICE = RECIPIENT_CONCURRENCY * 4;
/** The items' JSON given to one digest's template stays under this; items past it are counted as omitted. */
const ITEMS_DATA_CHARS = MAX_TEMPLATE_DATA_CHARS - 16 * 1024;

export type RunOutcome = 'completed' | 'failed' | 'busy' | 'superseded' | 'nothing-pending';

export interface RunReport {
  digest: string;
  outcome: RunOutcome;
  /** The run record after the run (for busy: the run holding the lease). */
  run?: DigestRunRecord;
}

export interface DigestRunDeps {
  config: Config;
  store: DigestStore;
  outbox: Pick<Outbox, 'acceptRequest'>;
  /** Whether bulk mail can carry its List-Unsubscribe links; without them a run fails at once, sending nothing. */
  unsubscribe?: Pick<UnsubscribeLinks, 'assertConfigured'>;
  telemetry?: Telemetry;
  logger?: Logger;
  now?: () => number;
}

interface Counts {
  recipients: number;
  items: number;
  omitted: number;
  failed: number;
}

/** The list a digest's unsubscribe links and suppressions use: its template's name, as a bulk batch's default. */
export function digestList(digest: string): string {
  return `digest-${digest}`;
}

/** The outbox idempotency key of a recipient's digest for a period (no address: a hash of it). */
export function digestIdempotencyKey(digest: string, recipient: string, periodEnd: string): string {
  const hash = createHash('sha256').update(recipient.toLowerCase()).digest('hex').slice(0, 32);
  return `digest:${digest}:${hash}:${periodEnd}`;
}

/** Runs `work` on every value, at most `limit` at once; rejects with the first failure once the others settled. */
async function forEachBounded<T>(
  values: readonly T[],
  limit: number,
  work: (value: T) => Promise<void>,
): Promise<void> {
  let next = 0;
  const results = await Promise.allSettled(
    Array.from({ length: Math.min(limit, values.length) }, async () => {
      while (next < values.length) await work(values[next++] as T);
    }),
  );
  const failure = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
  if (failure) throw failure.reason;
}

function strip(record: DigestRunRecord & { etag?: string }): DigestRunRecord {
  const { etag: _etag, ...rest } = record;
  return rest;
}

export class DigestRunner {
  private readonly logger: Logger;
  private readonly now: () => number;

  constructor(private readonly deps: DigestRunDeps) {
    this.logger = deps.logger ?? silentLogger;
    this.now = deps.now ?? Date.now;
  }

  /**
   * Runs `digest` now (its template is known to exist). Throws only when storage fails. `failed`: digests cannot
   * carry their List-Unsubscribe links (UNSUBSCRIBE_NOT_CONFIGURED, recorded in the run record and DigestRun).
   */
  async run(digest: string, invocation: Invocation = {}): Promise<RunReport> {
    const { store } = this.deps;
    const logger = invocationLogger(invocation, this.logger);
    const started = this.now();
    const misconfigured = this.configurationError();
    if (misconfigured) return this.fail(digest, misconfigured, started, invocation, logger);
    const claim = await this.claim(digest, logger);
    if ('busy' in claim) return { digest, outcome: 'busy', run: strip(claim.busy) };
    let record = claim.record;
    if (record.periodEnd === undefined) {
      // The service's Timestamp of the claim: the same clock that stamped the items.
      const periodEnd = new Date(Date.parse(await store.runTimestamp(digest))).toISOString();
      const fixed = await store.updateRun(record, { periodEnd });
      if (!fixed) return { digest, outcome: 'superseded' };
      record = fixed;
    }
    const periodEnd = record.periodEnd as string;
    // The journal of the previous period, had its run died before clearing it.
    if (record.periodStart !== undefined) await store.clearDone(digest, record.periodStart);
    // Progress for the checkpoints; the final counts are the period's journal, a predecessor's work included.
    const counts: Counts = {
      recipients: record.recipients,
      items: record.items,
      omitted: record.omitted,
      failed: 0,
    };
    let lastCheckpoint = this.now();
    for await (const page of store.pendingRecipients(digest)) {
      const nowMs = this.now();
      // Rows kept only for their tombstones are skipped without a read until the tombstones run out.
      const due = page.filter(
        (r) => !(r.items === 0 && r.tombstonesUntil !== undefined && Date.parse(r.tombstonesUntil) > nowMs),
      );
      // A slice at a time, so that the lease is renewed well within a page however slow storage is.
      for (let i = 0; i < due.length; i += CHECKPOINT_SLICE) {
        await forEachBounded(due.slice(i, i + CHECKPOINT_SLICE), RECIPIENT_CONCURRENCY, (r) =>
          this.recipient(digest, r, record, counts, invocation, logger),
        );
        if (this.now() - lastCheckpoint < CHECKPOINT_MS) continue;
        const written = await store.updateRun(record, {
          ...counts,
          leaseUntil: new Date(this.now() + DIGEST_LEASE_MS).toISOString(),
        });
        if (!written) {
          logger.warn('digest run taken over by another run; stopping', { digest, runId: record.runId });
          return { digest, outcome: 'superseded' };
        }
        record = written;
        lastCheckpoint = this.now();
      }
    }
    const totals = await store.doneTotals(digest, periodEnd);
    const durationMs = this.now() - started;
    const done = await store.updateRun(record, {
      ...totals,
      failed: counts.failed,
      status: 'completed',
      completedAt: new Date(this.now()).toISOString(),
      durationMs,
      leaseUntil: new Date(this.now()).toISOString(),
    });
    if (!done) return { digest, outcome: 'superseded' };
    // Its totals are in the run record now; a crash before this is cleared by the next run.
    await store.clearDone(digest, periodEnd);
    this.deps.telemetry?.trackEvent('DigestRun', {
      digest,
      recipients: totals.recipients,
      items: totals.items,
      omitted: totals.omitted,
      durationMs,
      ...invocationTelemetry(invocation),
    });
    logger.info('digest run completed', { digest, periodEnd, ...totals, failed: counts.failed, durationMs });
    return { digest, outcome: 'completed', run: strip(done) };
  }

  /** The configuration error that keeps every digest from being sent, if there is one. */
  private configurationError(): MailError | undefined {
    try {
      this.deps.unsubscribe?.assertConfigured('MAIL_UNSUBSCRIBE_BASE_URL');
      return undefined;
    } catch (error) {
      if (error instanceof MailError) return error;
      throw error;
    }
  }

  /**
   * Records a run that cannot send anything (a configuration error) in the run record, where GET shows it, and in
   * DigestRun. The items stay pending; the period of the last completed run is kept, so the
   * run after the fix starts where that one ended. A run holding its lease is left alone.
   */
  private async fail(
    digest: string,
    error: MailError,
    started: number,
    invocation: Invocation,
    logger: Logger,
  ): Promise<RunReport> {
    const { store } = this.deps;
    const now = this.now();
    const failed = {
      status: 'failed' as const,
      runId: uuidv7(now),
      startedAt: new Date(started).toISOString(),
      leaseUntil: new Date(now).toISOString(),
      recipients: 0,
      items: 0,
      omitted: 0,
      failed: 0,
      errorCode: error.code,
      error: error.message,
      completedAt: new Date(now).toISOString(),
      durationMs: now - started,
    };
    const written = await retryLostRaces({
      maxRaces: MAX_RACES,
      attempt: async () => {
        const current = await store.getRun(digest);
        if (current?.status === 'running' && Date.parse(current.leaseUntil) > now) return { busy: current };
        const next = current
          ? await store.updateRun(current, { ...failed, periodStart: undefined })
          : await store.createRun({ digest, ...failed });
        return next ? { record: next } : LOST_RACE;
      },
      exhausted: () => {
        throw new Error(`Digest ${digest}: lost the run record race ${MAX_RACES} times`);
      },
    });
    if ('busy' in written) return { digest, outcome: 'busy', run: strip(written.busy) };
    this.deps.telemetry?.trackEvent('DigestRun', {
      digest,
      errorCode: error.code,
      recipients: 0,
      items: 0,
      omitted: 0,
      durationMs: failed.durationMs,
      ...invocationTelemetry(invocation),
    });
    logger.error('digest run failed: the app is not configured to send digests; every item stays pending', {
      digest,
      code: error.code,
      error: error.message,
      hint: error.hint,
    });
    return { digest, outcome: 'failed', run: strip(written.record) };
  }

  /** Takes the run record: a new run, a run taken over (its lease ran out), or busy (another run holds it). */
  private claim(
    digest: string,
    logger: Logger,
  ): Promise<{ record: DigestRunRecord & { etag: string } } | { busy: DigestRunRecord & { etag: string } }> {
    const { store } = this.deps;
    return retryLostRaces({
      maxRaces: MAX_RACES,
      attempt: async () => {
        const now = this.now();
        const fresh = {
          runId: uuidv7(now),
          startedAt: new Date(now).toISOString(),
          leaseUntil: new Date(now + DIGEST_LEASE_MS).toISOString(),
        };
        const current = await store.getRun(digest);
        if (!current) {
          const created = await store.createRun({
            digest,
            status: 'running',
            ...fresh,
            recipients: 0,
            items: 0,
            omitted: 0,
            failed: 0,
          });
          return created ? { record: created } : LOST_RACE;
        }
        if (current.status === 'running' && Date.parse(current.leaseUntil) > now) return { busy: current };
        if (current.status === 'running') {
          logger.warn('taking over a digest run whose lease ran out', { digest, periodEnd: current.periodEnd });
          const taken = await store.updateRun(current, { runId: fresh.runId, leaseUntil: fresh.leaseUntil });
          return taken ? { record: taken } : LOST_RACE;
        }
        const next = await store.updateRun(current, {
          status: 'running',
          ...fresh,
          periodStart: current.periodEnd,
          periodEnd: undefined,
          recipients: 0,
          items: 0,
          omitted: 0,
          failed: 0,
          completedAt: undefined,
          durationMs: undefined,
          errorCode: undefined,
          error: undefined,
        });
        return next ? { record: next } : LOST_RACE;
      },
      exhausted: () => {
        throw new Error(`Digest ${digest}: lost the run record race ${MAX_RACES} times`);
      },
    });
  }

  /**
   * One recipient: its digest accepted into the outbox, noted in the period's journal, its items turned into
   * tombstones, its index row settled. Nothing of it is kept once it returns.
   */
  private async recipient(
    digest: string,
    pending: PendingRecipient,
    record: DigestRunRecord,
    counts: Counts,
    invocation: Invocation,
    logger: Logger,
  ): Promise<void> {
    const { store, outbox, config } = this.deps;
    const periodEnd = record.periodEnd as string;
    const periodEndMs = Date.parse(periodEnd);
    const nowMs = this.now();
    const read = await store.items(digest, pending.recipient);
    const due = read.items
      .filter((item) => item.receivedMs <= periodEndMs)
      .sort((a, b) => a.receivedMs - b.receivedMs || (a.rowKey < b.rowKey ? -1 : a.rowKey > b.rowKey ? 1 : 0));
    const expired = read.tombstones.filter((t) => !(Date.parse(t.sentAt) + config.retentionMs > nowMs));
    let retired = 0;
    if (due.length > 0) {
      const shown = this.listed(due, config.digests.maxItems);
      const omitted = due.length - shown.length;
      const request: SendRequest = {
        to: [{ address: pending.recipient }],
        cc: [],
        bcc: [],
        content: {
          kind: 'template',
          template: digestTemplate(digest),
          data: {
            recipient: pending.recipient,
            digest,
            items: shown,
            total: due.length,
            omitted,
            ...(record.periodStart !== undefined ? { periodStart: record.periodStart } : {}),
            periodEnd,
          },
        },
        attachments: [],
        headers: {},
        idempotencyKey: digestIdempotencyKey(digest, pending.recipient, periodEnd),
      };
      try {
        // A digest is bulk mail: List-Unsubscribe headers, and a suppressed recipient's digest is recorded suppressed.
        await outbox.acceptRequest(request, { source: 'digest', list: digestList(digest), invocation });
      } catch (error) {
        if (error instanceof MailError && error.code === 'IDEMPOTENCY_CONFLICT') {
          // Accepted by an earlier attempt of this period, which listed these items and more (retired since).
        } else if (error instanceof MailError && !error.transient) {
          // The template or the message is wrong for this recipient: the items stay for a run after the fix.
          counts.failed++;
          logger.error('digest could not be accepted for a recipient; its items stay pending', {
            digest,
            code: error.code,
            error: error.message,
          });
          return;
        } else {
          throw error;
        }
      }
      // Before the items go: a run that dies after this and is taken over still counts this recipient, once.
      if (await store.noteDone(digest, periodEnd, pending.recipient, { items: due.length, omitted })) {
        counts.recipients++;
        counts.items += due.length;
        counts.omitted += omitted;
      }
      retired = await store.retireItems(digest, pending.recipient, due, periodEnd, expired);
    } else if (expired.length > 0) {
      await store.retireItems(digest, pending.recipient, [], periodEnd, expired);
    } else if (pending.items === read.items.length) {
      return; // Only items of the next period, and the row counts them already.
    }
    const keptUntil = [...read.tombstones.filter((t) => !expired.includes(t)).map((t) => Date.parse(t.sentAt))];
    if (due.length > 0) keptUntil.push(periodEndMs);
    const tombstonesUntil = keptUntil.length
      ? new Date(Math.max(...keptUntil) + config.retentionMs).toISOString()
      : undefined;
    await store.settleRecipient(
      digest,
      pending.recipient,
      {
        etag: pending.etag,
        left: read.items.length - due.length,
        ...(tombstonesUntil !== undefined ? { tombstonesUntil } : {}),
      },
      retired,
    );
  }

  /** The first `max` items, oldest first, within the template data budget; the rest are counted only. */
  private listed(due: readonly StoredItem[], max: number): unknown[] {
    const shown: unknown[] = [];
    let chars = 0;
    for (const item of due) {
      if (shown.length >= max || chars + item.json.length > ITEMS_DATA_CHARS) break;
      chars += item.json.length;
      shown.push(JSON.parse(item.json));
    }
    return shown;
  }
}
