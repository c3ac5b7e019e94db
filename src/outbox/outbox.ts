/**
 * The outbox: accepts a message (validate → render → check → idempotency → store → enqueue) so that `deliver`
 * can send it later, exactly once as far as storage can promise.
 *
 * Write order, and what a crash between two writes leaves behind:
 *
 * 1. idempotency claim (a single message with a key only; a batch message's key names its record instead) — a crash
 *    after it: the client's retry with the same key finds the claim, finds no record, and completes the accept with
 *    the claimed id. A claim whose record never appeared is free again once it is older than the retention period.
 * 2. payload blob `mail-payloads/<id>.json`, only for content over INLINE_CONTENT_MAX_CHARS — a crash after it
 *    leaves a blob that nothing points at (harmless; in Azure a lifecycle rule on the container removes old blobs).
 * 3. queue message `{ id }`, visible at the message's due time — a crash after it leaves a queue message whose record
 *    never appeared: `deliver` waits briefly for the record, then leaves the message to the host's retries and the
 *    poison queue, where it is dropped. The request was never answered 202, so nothing accepted is lost.
 * 4. status record (`queued` or `scheduled`, `dueAt`) with the content inline when it is small — written last, so
 *    that every record has its queue message (no timer looks for records whose queue message went missing) and its
 *    content.
 *
 * A small message without a key is therefore two writes (3, 4). A batch chunk writes every 3 and then the 4s in
 * Table transactions (acceptBatch). Bulk mail (accepted with a `list`) to a suppressed recipient skips 2 and 3: its
 * record is written `suppressed`, a final state that needs neither content nor queue message. Other bulk mail gets
 * its List-Unsubscribe headers (a Key Vault read, cached) before 2.
 */
import { canonicalJson } from '../canonicalJson';
import { createHash } from 'node:crypto';
import { isAllowedFrom, type Config } from '../config';
import { MailError } from '../errors';
import type { IdempotencyStore } from './idempotencyStore';
import { invocationLogger, invocationTelemetry, operationIdOf, type Invocation } from '../invocation';
import { silentLogger, type Logger } from '../logger';
import { allRecipients, parseMessage, type MailMessage, type OutboxSource } from '../message';
import { batchMessageId, messageIdLocalPart, uuidv7 } from './messageIds';
import { enqueueOutbox } from './outboxQueue';
import type { MessageStore } from './messageStore';

import { parseSendRequest, type SendRequest } from './sendRequest';
import { INLINE_CONTENT_MAX_CHARS, serializeMessage } from './messageContent';
import { runBounded } from '../runBounded';
import { TERMINAL_STATUSES, type StatusRecord, type StatusStore, type StoredRecord } from './statusStore';
import type { StorageClients } from '../storage/storageClients';
import { LIST_ID, type SuppressionStore } from '../suppression/suppressionStore';
import type { UnsubscribeLinks } from '../suppression/unsubscribeLinks';
import type { Telemetry } from '../telemetry';
import type { TemplateRenderer } from '../templates/templateRenderer';

/** A replayed accept whose record is still waiting this long after it was due re-enqueues its message (a safety net). */
export const STRANDED_AFTER_MS = 5 * 60 * 1000;
/**
 * A claim younger than this whose record is missing is most likely a concurrent request still writing it: wait for
 * it (IN_FLIGHT_WAITS_MS) rather than enqueue a second queue message for the same message.
 */
const IN_FLIGHT_CLAIM_MS = 10_000;
const IN_FLIGHT_WAITS_MS = [50, 200, 500];

export interface OutboxDeps {
  config: Config;
  renderer: TemplateRenderer;
  storage: Pick<StorageClients, 'outboxQueue' | 'ensureResources' | 'ensure'>;
  status: StatusStore;
  payloads: MessageStore;
  idempotency: IdempotencyStore;
  /** Suppressed recipients: bulk mail (a message accepted with a `list`) to them is recorded `suppressed`, not sent. */
  suppressions?: Pick<SuppressionStore, 'suppressedFrom'>;
  /** Signs the List-Unsubscribe headers of bulk mail. Without it, bulk mail is refused. */
  unsubscribe?: Pick<UnsubscribeLinks, 'unsubscribeHeaders'>;
  telemetry?: Telemetry;
  logger?: Logger;
  now?: () => number;
  /** Ids of single messages; default a UUIDv7 of the accept time (see messageIds.ts). */
  newId?: () => string;
}

export interface AcceptOptions {
  source: OutboxSource;
  /** The `Idempotency-Key` header, when the request had one. */
  idempotencyKeyHeader?: string | null | undefined;
  batchId?: string;
  /**
   * Keep the queue message invisible this long even when the message is due now: `?wait=true` delivers inline and
   * the queue message is only the safety net should this process die mid-send.
   */
  holdSeconds?: number;
  /**
   * Bulk mail of this list (a template name or list id): one recipient, checked against the suppressions (then
   * recorded `suppressed` and never sent), and given the List-Unsubscribe headers. Any source of bulk mail sets it.
   */
  list?: string;
  /**
   * The invocation accepting it: its operation id is kept on the record (`acceptOperationId`) so that the delivery's
   * events, in another invocation, can be joined to the accepting request.
   */
  invocation?: Invocation;
}

/** {@link Outbox.render}'s result: the message the sender will get, and its template's name. */
export interface Rendered {
  message: MailMessage;
  template?: string;
}

/** One message of a batch chunk: its request (with its key), rendered, and held until its send slot. */
export interface BatchItem {
  request: SendRequest;
  rendered: Rendered;
  holdSeconds?: number;
}

/** A new record, and what is written before it: the blob of a large message, the queue message's delay. */
interface PendingRecord {
  record: StatusRecord;
  delaySeconds: number;
  blob?: string;
}

/** Records and queue messages of a batch chunk written at once. */
const BATCH_WRITE_CONCURRENCY = 32;

const idempotencyConflict = () =>
  new MailError('IDEMPOTENCY_CONFLICT', 'This idempotency key was already used for a different message', {
    details: [{ path: 'idempotencyKey', message: 'already used for a different message' }],
  });

export interface AcceptResult {
  id: string;
  record: StoredRecord;
  /** True when an earlier request with the same idempotency key and payload created the message. */
  replayed: boolean;
}

/**
 * The Message-ID of outbox message `id`: `<uuid@domain of From>`, or the 32 hex digits of a batch message id (a
 * batch id may hold characters a Message-ID may not); unique without coordination either way.
 */
export function outboxMessageId(id: string, from: string): string {
  return `<${messageIdLocalPart(id)}@${from.slice(from.lastIndexOf('@') + 1).toLowerCase()}>`;
}

/** The hash an idempotent replay must match: the whole validated request except the key itself. */
export function payloadHash(request: SendRequest): string {
  const { idempotencyKey: _key, sendAt, ...rest } = request;
  return createHash('sha256')
    .update(canonicalJson({ ...rest, ...(sendAt ? { sendAt: sendAt.toISOString() } : {}) }))
    .digest('hex');
}

export class Outbox {
  private readonly logger: Logger;
  private readonly now: () => number;
  private readonly newId: () => string;

  constructor(private readonly deps: OutboxDeps) {
    this.logger = deps.logger ?? silentLogger;
    this.now = deps.now ?? Date.now;
    this.newId = deps.newId ?? (() => uuidv7(this.now()));
  }

  /**
   * Accepts a POST /api/messages body. Throws MailError: INVALID_MESSAGE, TEMPLATE_NOT_FOUND or SENDER_NOT_ALLOWED
   * (each with details naming the field), IDEMPOTENCY_CONFLICT; storage failures are thrown as the SDK raised them.
   */
  async accept(body: unknown, options: AcceptOptions): Promise<AcceptResult> {
    const request = parseSendRequest(body, { now: this.now(), idempotencyKeyHeader: options.idempotencyKeyHeader });
    return this.acceptRequest(request, options);
  }

  /** Renders a template, or takes the literal content, and validates the message the sender will get. */
  render(request: SendRequest): Rendered {
    const { config, renderer } = this.deps;
    const content =
      request.content.kind === 'template'
        ? {
            ...renderer.render(request.content.template, request.content.data),
            ...(request.content.subject !== undefined ? { subject: request.content.subject } : {}),
          }
        : request.content;
    const message = parseMessage(
      {
        ...(request.from ? { from: request.from } : {}),
        to: request.to,
        cc: request.cc,
        bcc: request.bcc,
        ...(request.replyTo ? { replyTo: request.replyTo } : {}),
        subject: content.subject,
        ...(content.text !== undefined ? { text: content.text } : {}),
        ...(content.html !== undefined ? { html: content.html } : {}),
        attachments: request.attachments,
        headers: request.headers,
      },
      {
        defaultFrom: config.sender,
        maxRecipients: config.limits.maxRecipients,
        maxMessageBytes: config.limits.maxMessageBytes,
      },
    );
    // SendAs is checked here too, so the caller hears about it now rather than in a failed status later.
    if (!isAllowedFrom(message.from.address, config.allowedFrom)) {
      throw new MailError(
        'SENDER_NOT_ALLOWED',
        'From address is not MAIL_SENDER and not allowed by MAIL_ALLOWED_FROM',
        {
          details: [
            { path: 'from', message: 'not an allowed sender for this mailbox (MAIL_SENDER, MAIL_ALLOWED_FROM)' },
          ],
        },
      );
    }
    return { message, ...(request.content.kind === 'template' ? { template: request.content.template } : {}) };
  }

  /**
   * Accepts an already validated request (the HTTP body, a digest). `rendered` is {@link render}'s result when the
   * caller has it already.
   */
  async acceptRequest(
    request: SendRequest,
    options: AcceptOptions,
    rendered: Rendered = this.render(request),
  ): Promise<AcceptResult> {
    const recipient = options.list !== undefined ? this.bulkRecipient(rendered.message, options.list) : undefined;
    const { storage, status } = this.deps;
    const logger = invocationLogger(options.invocation, this.logger);
    // Only what this accept writes: a process's first request does not wait for every queue, table and container.
    await storage.ensure(
      'outboxQueue',
      'statusTable',
      ...(request.idempotencyKey !== undefined && options.batchId === undefined ? (['idempotencyTable'] as const) : []),
      ...(options.list !== undefined ? (['suppressionTable'] as const) : []),
    );
    const hash = payloadHash(request);
    const now = this.now();
    // A batch's message is named by its batch and key, so every fan-out of the batch names the same one.
    let id =
      options.batchId !== undefined && request.idempotencyKey !== undefined
        ? batchMessageId(options.batchId, request.idempotencyKey)
        : this.newId();

    if (request.idempotencyKey !== undefined && options.batchId === undefined) {
      const existing = await this.claimKey(request.idempotencyKey, { id, payloadHash: hash, createdAt: now }, logger);
      if (existing) {
        if (existing.payloadHash !== hash) throw idempotencyConflict();
        id = existing.id;
        if (existing.record) return { id, record: await this.healIfStranded(existing.record, logger), replayed: true };
        // The first request claimed the key and has not written its record yet (it is in flight, or it died):
        // finish the accept under the claimed id. Every write below tolerates the other request doing the same.
        logger.info('completing an idempotent accept whose record was missing', { id });
      }
    }

    const pending = await this.pendingRecord(id, request, rendered, recipient, hash, now, options);
    await this.writeAhead(pending);
    const created = await status.create(pending.record);
    if (created) {
      this.recorded(created, options);
      return { id, record: created, replayed: false };
    }
    return this.existingFor(id, hash);
  }

  /**
   * Accepts the messages of one notification chunk. Each item is a recipient's request with its key (which names
   * its message in the batch: the record's insert is the key's claim), rendered already. The queue messages (and
   * blobs of large messages) are written first, then the records in Table transactions of up to 100. Returns, in
   * order, each message's result, or the MailError refusing that recipient alone (IDEMPOTENCY_CONFLICT: its message
   * exists with other content); storage failures are thrown.
   */
  async acceptBatch(
    items: readonly BatchItem[],
    options: { source: OutboxSource; batchId: string; list?: string; concurrency?: number; invocation?: Invocation },
  ): Promise<Array<AcceptResult | MailError>> {
    const { storage, status } = this.deps;
    const concurrency = Math.max(1, options.concurrency ?? BATCH_WRITE_CONCURRENCY);
    await storage.ensureResources();
    const now = this.now();
    const results = new Array<AcceptResult | MailError | undefined>(items.length);
    const pending = new Array<PendingRecord | undefined>(items.length);
    await runBounded(items.length, concurrency, async (i) => {
      const { request, rendered, holdSeconds } = items[i] as BatchItem;
      try {
        if (request.idempotencyKey === undefined) throw new Error('A batch message needs its idempotency key');
        const recipient = options.list !== undefined ? this.bulkRecipient(rendered.message, options.list) : undefined;
        const id = batchMessageId(options.batchId, request.idempotencyKey);
        const itemOptions: AcceptOptions = {
          source: options.source,
          batchId: options.batchId,
          ...(options.list !== undefined ? { list: options.list } : {}),
          ...(holdSeconds ? { holdSeconds } : {}),
          ...(options.invocation ? { invocation: options.invocation } : {}),
        };
        const record = await this.pendingRecord(
          id,
          request,
          rendered,
          recipient,
          payloadHash(request),
          now,
          itemOptions,
        );
        // The queue message before the record, as for a single message.
        await this.writeAhead(record);
        pending[i] = record;
      } catch (error) {
        if (!(error instanceof MailError) || error.transient) throw error;
        results[i] = error;
      }
    });
    const indices = pending.flatMap((p, i) => (p ? [i] : []));
    const created = await status.createMany(indices.map((i) => (pending[i] as PendingRecord).record));
    await runBounded(indices.length, concurrency, async (j) => {
      const i = indices[j] as number;
      const { record } = pending[i] as PendingRecord;
      const stored = created[j];
      if (stored) {
        this.recorded(stored, options);
        results[i] = { id: record.id, record: stored, replayed: false };
        return;
      }
      // Written by an earlier run of this chunk: the same message, or a different one under the same key.
      try {
        results[i] = await this.existingFor(record.id, record.payloadHash);
      } catch (error) {
        if (!(error instanceof MailError)) throw error;
        results[i] = error;
      }
    });
    return results as Array<AcceptResult | MailError>;
  }

  /**
   * The record a new message gets, and what must be written before it: bulk mail to a suppressed recipient is
   * recorded `suppressed` with nothing else; other bulk mail gets its List-Unsubscribe headers; the content goes in
   * the record when it is small, else in a blob.
   */
  private async pendingRecord(
    id: string,
    request: SendRequest,
    rendered: Rendered,
    recipient: string | undefined,
    hash: string,
    now: number,
    options: AcceptOptions,
  ): Promise<PendingRecord> {
    const { message, template } = rendered;
    const acceptOperationId = operationIdOf(options.invocation?.traceParent);
    const sendAt = request.sendAt && request.sendAt.getTime() > now ? request.sendAt.getTime() : undefined;
    const dueAt = Math.max(sendAt ?? now, now + (options.holdSeconds ?? 0) * 1000);
    // Bulk mail to a suppressed recipient: a record that says so, and neither content nor queue message (a record
    // in a final state needs none).
    const suppressed =
      options.list !== undefined && recipient !== undefined && (await this.isSuppressed(recipient, options.list));
    let content: string | undefined;
    if (!suppressed) {
      let headers = message.headers;
      if (options.list !== undefined && recipient !== undefined) {
        // Set by the app after the caller's headers were checked: callers can give X- headers only.
        headers = { ...headers, ...(await this.unsubscribe().unsubscribeHeaders({ recipient, list: options.list })) };
      }
      // A Message-ID fixed per outbox message: a copy sent again (the 250-then-crash duplicate) is the same message
      // to every mail client and archive, which can then collapse it.
      content = serializeMessage({
        message: { ...message, headers, messageId: outboxMessageId(id, message.from.address) },
      });
    }
    const inline = content !== undefined && content.length <= INLINE_CONTENT_MAX_CHARS;
    const record: StatusRecord = {
      id,
      status: suppressed ? 'suppressed' : sendAt ? 'scheduled' : 'queued',
      source: options.source,
      ...(options.batchId ? { batchId: options.batchId } : {}),
      ...(template ? { template } : {}),
      ...(options.list !== undefined ? { list: options.list } : {}),
      attempts: 0,
      createdAt: new Date(now).toISOString(),
      ...(sendAt ? { scheduledFor: new Date(sendAt).toISOString() } : {}),
      dueAt: new Date(dueAt).toISOString(),
      ...(suppressed ? { completedAt: new Date(now).toISOString() } : {}),
      payloadHash: hash,
      ...(request.idempotencyKey !== undefined ? { idempotencyKey: request.idempotencyKey } : {}),
      ...(inline && content !== undefined ? { content } : {}),
      ...(acceptOperationId ? { acceptOperationId } : {}),
    };
    return {
      record,
      delaySeconds: (dueAt - now) / 1000,
      ...(content !== undefined && !inline ? { blob: content } : {}),
    };
  }

  /** The writes before the record: a large message's blob, then the queue message (none for a suppressed one). */
  private async writeAhead(pending: PendingRecord): Promise<void> {
    if (pending.record.status === 'suppressed') return;
    if (pending.blob !== undefined) {
      await this.deps.storage.ensure('payloads');
      await this.deps.payloads.putText(pending.record.id, pending.blob);
    }
    // The queue message before the record: a record never exists without the message that will deliver it.
    await enqueueOutbox(this.deps.storage.outboxQueue, pending.record.id, pending.delaySeconds);
  }

  /** After a record was created: a suppressed one is reported. */
  private recorded(
    record: StoredRecord,
    options: { source: OutboxSource; batchId?: string; list?: string; invocation?: Invocation },
  ): void {
    if (record.status !== 'suppressed') return;
    this.deps.telemetry?.trackEvent('MailSuppressed', {
      id: record.id,
      source: options.source,
      stage: 'accept',
      ...(options.list !== undefined ? { list: options.list } : {}),
      ...(record.template ? { template: record.template } : {}),
      ...(options.batchId ? { batchId: options.batchId } : {}),
      ...invocationTelemetry(options.invocation),
    });
    invocationLogger(options.invocation, this.logger).info(
      'bulk message to a suppressed recipient recorded as suppressed; not sent',
      {
        id: record.id,
        list: options.list,
      },
    );
  }

  /** A record that another request (same key) created first: a replay when its content is ours, else a conflict. */
  private async existingFor(id: string, hash: string): Promise<AcceptResult> {
    // Its queue message and ours both deliver it, once.
    const existing = await this.deps.status.get(id);
    if (!existing) throw new Error(`Status record ${id} was reported to exist but cannot be read`);
    if (existing.payloadHash !== hash) throw idempotencyConflict();
    return { id, record: existing, replayed: true };
  }

  /** The one recipient of a bulk message, lower-cased; its list id must be valid (a caller's bug otherwise). */
  private bulkRecipient(message: MailMessage, list: string): string {
    if (list.length > 64 || !LIST_ID.test(list)) {
      throw new MailError('INVALID_MESSAGE', 'Invalid list id', {
        details: [{ path: 'list', message: 'must be 1 to 64 lower-case letters, digits and dashes' }],
      });
    }
    const recipients = allRecipients(message);
    if (recipients.length !== 1) {
      throw new MailError('INVALID_MESSAGE', 'Bulk mail goes to one recipient per message', {
        details: [
          { path: 'to', message: 'bulk mail has exactly one recipient per message (its own unsubscribe link)' },
        ],
      });
    }
    return (recipients[0] as { address: string }).address.toLowerCase();
  }

  private async isSuppressed(recipient: string, list: string): Promise<boolean> {
    const { suppressions } = this.deps;
    if (!suppressions) return false;
    return (await suppressions.suppressedFrom(recipient, list)) !== undefined;
  }

  private unsubscribe(): Pick<UnsubscribeLinks, 'unsubscribeHeaders'> {
    const links = this.deps.unsubscribe;
    if (!links) {
      throw new MailError('UNSUBSCRIBE_NOT_CONFIGURED', 'Bulk mail needs List-Unsubscribe links, and none are set up', {
        details: [{ path: 'category', message: 'bulk mail is refused until MAIL_UNSUBSCRIBE_BASE_URL is set' }],
      });
    }
    return links;
  }

  /**
   * Claims `key` for a new message. Returns undefined when this request claimed it, else the message the key
   * belongs to (with its record, when there is one). A key whose message is past retention (completed longer ago
   * than MAIL_RETENTION_DAYS, or never recorded and claimed longer ago than that) is expired: it is freed and
   * claimed afresh, as the retention timer would have done.
   */
  private async claimKey(
    key: string,
    claim: { id: string; payloadHash: string; createdAt: number },
    logger: Logger,
  ): Promise<{ id: string; payloadHash: string; record?: StoredRecord } | undefined> {
    const { idempotency, status, config } = this.deps;
    const cutoff = claim.createdAt - config.retentionMs;
    for (let tryNo = 0; tryNo < 3; tryNo++) {
      const result = await idempotency.claim(config.sender, key, {
        id: claim.id,
        payloadHash: claim.payloadHash,
        createdAt: new Date(claim.createdAt).toISOString(),
      });
      if (result.created) return undefined;
      const existing = result.existing;
      let record = await status.get(existing.id);
      if (!record && claim.createdAt - Date.parse(existing.createdAt) < IN_FLIGHT_CLAIM_MS) {
        for (const pause of IN_FLIGHT_WAITS_MS) {
          await new Promise((resolve) => setTimeout(resolve, pause));
          record = await status.get(existing.id);
          if (record) break;
        }
      }
      const expired = record
        ? TERMINAL_STATUSES.has(record.status) && Date.parse(record.completedAt ?? record.createdAt) < cutoff
        : Date.parse(existing.createdAt) < cutoff;
      if (!expired) return { id: existing.id, payloadHash: existing.payloadHash, ...(record ? { record } : {}) };
      logger.info('an idempotency key past retention is used again; it names a new message', {
        previous: existing.id,
      });
      await idempotency.release(config.sender, key, existing.id, existing.etag);
    }
    throw new Error('The idempotency key kept changing hands; retry the request');
  }

  /** A replay of a record whose queue message should long have been seen re-enqueues it (crash between 3 and 4). */
  private async healIfStranded(record: StoredRecord, logger: Logger): Promise<StoredRecord> {
    if (record.status !== 'queued' && record.status !== 'scheduled') return record;
    if (Date.parse(record.dueAt) > this.now() - STRANDED_AFTER_MS) return record;
    return (await this.requeue(record, logger)) ?? record;
  }

  /** Enqueues first, then records the new due time: a queue message must exist for every `dueAt` (see deliver). */
  private async requeue(record: StoredRecord, logger: Logger): Promise<StoredRecord | undefined> {
    logger.warn('re-enqueueing an overdue outbox record', { id: record.id, status: record.status });
    await enqueueOutbox(this.deps.storage.outboxQueue, record.id, 0);
    return this.deps.status.transition(record, { dueAt: new Date(this.now()).toISOString() });
  }
}
