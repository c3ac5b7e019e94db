/**
 * Scheduled digests: items come in over HTTP or the mail-digest-items queue and wait in Table storage; a run (the
 * timer, or POST /api/digests/{digest}/run) sends each recipient one message listing them (see digestRun.ts).
 * A digest exists when its template does: `templates/digest-<digest>/`.
 */
import { canonicalJsonIterative } from '../canonicalJson';
import type { Config } from '../config';
import { MailError, type ClassifiedError } from '../errors';
import { invalidInput } from '../inputBounds';
import { invocationLogger, type Invocation } from '../invocation';
import { silentLogger, type Logger } from '../logger';
import type { Outbox } from '../outbox/outbox';
import type { StorageClients } from '../storage/storageClients';
import type { UnsubscribeLinks } from '../suppression/unsubscribeLinks';
import type { Telemetry } from '../telemetry';
import type { TemplateRenderer } from '../templates/templateRenderer';
import {
  checkDigestName,
  DIGEST_TEMPLATE_PREFIX,
  digestTemplate,
  isDigestName,
  itemKey,
  parseItemsBody,
  parseQueueItem,
  type DigestItemInput,
  type ItemRejection,
} from './digestRequest';
import { DigestRunner, type RunReport } from './digestRun';
import { DigestStore, type DigestRunRecord } from './digestStore';

/** A queue message is at most 64 KiB; longer text did not come from the queue and is not decoded. */
const MAX_QUEUE_MESSAGE_CHARS = 64 * 1024;
/** Recipients stored at once by a bulk request. */
const STORE_CONCURRENCY = 16;
/** GET counts the items of at most this many index rows without a count (written before the counts). */
const MAX_COUNTED_RECIPIENTS = 1_000;

export interface DigestsDeps {
  config: Config;
  renderer: TemplateRenderer;
  outbox: Pick<Outbox, 'acceptRequest'>;
  /** Digests are bulk mail: a run without List-Unsubscribe links configured fails, naming the setting. */
  unsubscribe?: Pick<UnsubscribeLinks, 'assertConfigured'>;
  storage: Pick<StorageClients, 'digestTable' | 'digestItemsPoisonQueue' | 'ensureResources'>;
  telemetry?: Telemetry;
  logger?: Logger;
  now?: () => number;
}

/** What POST /api/digests/{digest}/items answers. */
export interface IntakeResult {
  digest: string;
  /** Items stored by this request. */
  accepted: number;
  /** Items already stored (the same idempotency key, or without one the same content). */
  duplicates: number;
  rejected: number;
  rejections: ItemRejection[];
}

/** What a mail-digest-items message came to. */
export type QueueOutcome =
  { outcome: 'stored' | 'duplicate'; digest: string } | { outcome: 'rejected'; error: ClassifiedError };

/** What GET /api/digests/{digest} shows. */
export interface DigestView {
  digest: string;
  template: string;
  pendingRecipients: number;
  pendingItems: number;
  /** False only while over 1,000 index rows written before the counts remain (pendingItems then leaves some out). */
  pendingItemsExact: boolean;
  lastRun?: DigestRunRecord;
}

function classified(error: MailError): ClassifiedError {
  return { code: error.code, message: error.message, transient: error.transient, hint: error.hint };
}

export class Digests {
  readonly store: DigestStore;
  readonly runner: DigestRunner;
  private readonly logger: Logger;

  constructor(private readonly deps: DigestsDeps) {
    this.store = new DigestStore(deps.storage.digestTable);
    this.logger = deps.logger ?? silentLogger;
    this.runner = new DigestRunner({
      config: deps.config,
      store: this.store,
      outbox: deps.outbox,
      ...(deps.unsubscribe ? { unsubscribe: deps.unsubscribe } : {}),
      ...(deps.telemetry ? { telemetry: deps.telemetry } : {}),
      logger: this.logger,
      ...(deps.now ? { now: deps.now } : {}),
    });
  }

  /** The digests this deployment has: its `digest-*` templates. */
  names(): string[] {
    return this.deps.renderer
      .names()
      .filter((t) => t.startsWith(DIGEST_TEMPLATE_PREFIX))
      .map((t) => t.slice(DIGEST_TEMPLATE_PREFIX.length))
      .filter(isDigestName);
  }

  /** Throws INVALID_MESSAGE for a malformed name, NOT_FOUND naming the digest when it has no template. */
  checkKnown(digest: unknown): string {
    return this.known(digest);
  }

  private known(digest: unknown, path = 'digest'): string {
    const name = checkDigestName(digest, path);
    if (!this.deps.renderer.has(digestTemplate(name))) {
      throw new MailError('NOT_FOUND', `No digest "${name}": there is no template templates/${digestTemplate(name)}/`, {
        details: [{ path, message: `no digest "${name}" (templates/${digestTemplate(name)}/ does not exist)` }],
        hint: `A digest is defined by its template folder templates/${digestTemplate(name)}/; add it and deploy, or use an existing digest (${this.names().join(', ') || 'none yet'}).`,
      });
    }
    return name;
  }

  /** Accepts a POST /api/digests/{digest}/items body: one item, or a bulk `{ items }` with per-item rejections. */
  async submit(digest: string | undefined, body: unknown): Promise<IntakeResult> {
    const name = this.known(digest);
    const parsed = parseItemsBody(body);
    await this.deps.storage.ensureResources();
    const stored = await this.storeItems(
      name,
      parsed.items.map((i) => i.input),
    );
    return {
      digest: name,
      accepted: stored.filter(Boolean).length,
      duplicates: stored.filter((s) => !s).length,
      rejected: parsed.rejections.length,
      rejections: parsed.rejections,
    };
  }

  /** Stores items, grouped by recipient (one index write per recipient); true for each item newly stored. */
  private async storeItems(digest: string, inputs: readonly DigestItemInput[]): Promise<boolean[]> {
    const byRecipient = new Map<string, number[]>();
    inputs.forEach((input, i) => {
      const list = byRecipient.get(input.recipient);
      if (list) list.push(i);
      else byRecipient.set(input.recipient, [i]);
    });
    const result: boolean[] = new Array<boolean>(inputs.length).fill(false);
    const groups = [...byRecipient.entries()];
    for (let g = 0; g < groups.length; g += STORE_CONCURRENCY) {
      await Promise.all(
        groups.slice(g, g + STORE_CONCURRENCY).map(async ([recipient, indexes]) => {
          // The same item twice in one request is one row: only its first copy can be new.
          const seen = new Map<string, number>();
          const unique: number[] = [];
          for (const i of indexes) {
            const key = itemKey(inputs[i] as DigestItemInput);
            if (!seen.has(key)) {
              seen.set(key, i);
              unique.push(i);
            }
          }
          const stored = await this.store.addItems(
            digest,
            recipient,
            unique.map((i) => inputs[i] as DigestItemInput),
            unique.map((i) => itemKey(inputs[i] as DigestItemInput)),
          );
          unique.forEach((i, n) => (result[i] = stored[n] === true));
        }),
      );
    }
    return result;
  }

  /**
   * Handles a mail-digest-items message. A message no retry can fix (not JSON, a bad field, an unknown digest) is
   * logged with its classified reason and moved to mail-digest-items-poison as it came; the call resolves so that
   * the host does not retry it. Rejects only when storage fails (the host retries, then poisons it).
   */
  async handleQueueMessage(message: unknown, context: Invocation = {}): Promise<QueueOutcome> {
    const logger = invocationLogger(context, this.logger);
    await this.deps.storage.ensureResources();
    let parsed: { digest: string; input: DigestItemInput };
    try {
      parsed = this.parseQueueMessage(message);
    } catch (error) {
      if (!(error instanceof MailError) || error.transient) throw error;
      logger.warn('digest item message rejected; moved to the poison queue', {
        code: error.code,
        error: error.message,
        invocationId: context.invocationId,
      });
      const text = queueText(message);
      if (text.length <= MAX_QUEUE_MESSAGE_CHARS) {
        await this.deps.storage.digestItemsPoisonQueue.sendMessage(text, { messageTimeToLive: -1 });
      } else {
        // Only a message handed over already decoded can grow past the queue's limit when encoded again.
        logger.error('poison: digest item message refused, too large to move to the poison queue', {
          code: error.code,
          error: error.message,
          invocationId: context.invocationId,
        });
      }
      return { outcome: 'rejected', error: classified(error) };
    }
    const [stored] = await this.storeItems(parsed.digest, [parsed.input]);
    return { outcome: stored ? 'stored' : 'duplicate', digest: parsed.digest };
  }

  /**
   * Handles a message on mail-digest-items-poison: one the intake refused (logged again here with its reason), or one
   * the host gave up on after storage failures, which is stored now if storage is back (idempotent). Rejects only
   * when storage still fails.
   */
  async markPoisoned(message: unknown, context: Invocation & { dequeueCount?: number } = {}): Promise<QueueOutcome> {
    const logger = invocationLogger(context, this.logger);
    await this.deps.storage.ensureResources();
    let parsed: { digest: string; input: DigestItemInput };
    try {
      parsed = this.parseQueueMessage(message);
    } catch (error) {
      if (!(error instanceof MailError) || error.transient) throw error;
      logger.error('poison: digest item message refused', {
        code: error.code,
        error: error.message,
        hint: error.hint,
        invocationId: context.invocationId,
      });
      return { outcome: 'rejected', error: classified(error) };
    }
    const [stored] = await this.storeItems(parsed.digest, [parsed.input]);
    logger.warn('poison: digest item message stored on its poison retry', {
      digest: parsed.digest,
      dequeueCount: context.dequeueCount,
      invocationId: context.invocationId,
    });
    return { outcome: stored ? 'stored' : 'duplicate', digest: parsed.digest };
  }

  private parseQueueMessage(message: unknown): { digest: string; input: DigestItemInput } {
    const value = decodeQueueMessage(message);
    const parsed = parseQueueItem(value);
    this.known(parsed.digest);
    return parsed;
  }

  /** Runs one digest now (POST /api/digests/{digest}/run). */
  async run(digest: string | undefined, context: Invocation = {}): Promise<RunReport> {
    const name = this.known(digest);
    await this.deps.storage.ensureResources();
    return this.runner.run(name, context);
  }

  /** The timer: runs every digest with pending recipients, one after the other. */
  async runAll(context: Invocation = {}): Promise<RunReport[]> {
    await this.deps.storage.ensureResources();
    const reports: RunReport[] = [];
    for (const digest of this.names()) {
      if (!(await this.hasPending(digest))) {
        reports.push({ digest, outcome: 'nothing-pending' });
        continue;
      }
      reports.push(await this.runner.run(digest, context));
    }
    return reports;
  }

  /** True when a recipient has items pending, or tombstones that ran out (for the run to delete). */
  private async hasPending(digest: string): Promise<boolean> {
    const now = (this.deps.now ?? Date.now)();
    for await (const page of this.store.pendingRecipients(digest)) {
      for (const r of page) {
        if (r.items !== 0 || r.tombstonesUntil === undefined || Date.parse(r.tombstonesUntil) <= now) return true;
      }
    }
    return false;
  }

  /** GET /api/digests/{digest}: pending recipients and items, and the last run. */
  async view(digest: string | undefined): Promise<DigestView> {
    const name = this.known(digest);
    await this.deps.storage.ensureResources();
    // The index rows carry their recipients' counts: one read per 1,000 recipients. A row written before the counts
    // has none, and its items are counted (up to MAX_COUNTED_RECIPIENTS such rows; past them the total is partial).
    let recipients = 0;
    let items = 0;
    let uncounted = 0;
    for await (const page of this.store.pendingRecipients(name)) {
      for (const r of page) {
        if (r.items === 0) continue; // kept for its tombstones only
        recipients++;
        if (r.items !== undefined) items += r.items;
        else if (++uncounted <= MAX_COUNTED_RECIPIENTS) items += await this.store.countItems(name, r.recipient);
      }
    }
    const run = await this.store.getRun(name);
    let lastRun: DigestRunRecord | undefined;
    if (run) {
      const { etag: _etag, ...rest } = run;
      lastRun = rest;
    }
    return {
      digest: name,
      template: digestTemplate(name),
      pendingRecipients: recipients,
      pendingItems: items,
      pendingItemsExact: uncounted <= MAX_COUNTED_RECIPIENTS,
      ...(lastRun ? { lastRun } : {}),
    };
  }
}

/** The trigger's payload as an object: the host hands over decoded JSON or text; raw text may still be base64. */
export function decodeQueueMessage(message: unknown): unknown {
  let value = message;
  if (Buffer.isBuffer(value)) value = value.toString('utf8');
  if (typeof value !== 'string') return value;
  const unreadable = () =>
    invalidInput('Invalid digest item message', [
      { path: '(message)', message: 'is not a JSON object (base64-encoded or plain JSON) of at most 64 KiB' },
    ]);
  if (value.length > MAX_QUEUE_MESSAGE_CHARS) throw unreadable();
  const text = value.trim().startsWith('{') ? value : Buffer.from(value, 'base64').toString('utf8');
  try {
    return JSON.parse(text) as unknown;
  } catch {
    throw unreadable();
  }
}

/** A message as the queue takes it back (base64 JSON, as host.json's messageEncoding expects). */
function queueText(message: unknown): string {
  if (Buffer.isBuffer(message)) return message.toString('base64');
  // Text goes back as it came: it fitted the queue then.
  if (typeof message === 'string') return message;
  return Buffer.from(jsonText(message)).toString('base64');
}

/** `message` as JSON: too deep for JSON.stringify, written without recursion; '' when it is no JSON value at all. */
function jsonText(message: unknown): string {
  try {
    return JSON.stringify(message) ?? '';
  } catch {
    try {
      return canonicalJsonIterative(message);
    } catch {
      return '';
    }
  }
}
