/** A batch notification: its schema, the batch-level rules, and the ids and keys derived from it. */
import { createHash } from 'node:crypto';
import { z } from 'zod';
import { MailError, type FieldProblem } from '../errors';
import { canonicalJson, canonicalJsonIterative } from '../canonicalJson';
import { boundsProblem, capProblems, inspectJson, MAX_BATCH_JSON_VALUES } from '../inputBounds';
import { addressSchema, MAX_SUBJECT_CHARS, type Address } from '../message';
import { isAllowedFrom } from '../config';
import { checkSendAt, IDEMPOTENCY_KEY, MAX_IDEMPOTENCY_KEY_CHARS, problemsOf } from '../outbox/sendRequest';
import { TEMPLATE_NAME, templateDataProblems } from '../templates/templateRenderer';
import { LIST_ID, MAX_LIST_ID_CHARS } from '../suppression/suppressionStore';

/** Batch ids: letters, digits and . _ - (safe as a Table PartitionKey and a blob name). */
export const BATCH_ID = /^[A-Za-z0-9._-]{1,100}$/;
const BATCH_ID_RULE = '1 to 100 characters of letters, digits and . _ -';
/** The most recipients one batch may have; larger sends are several batches. */
export const MAX_BATCH_RECIPIENTS = 50_000;
export const NOTIFICATION_CATEGORIES = ['transactional', 'bulk'] as const;
export type NotificationCategory = (typeof NOTIFICATION_CATEGORIES)[number];
/** Prefix of batch ids derived from a queue message's content (no batchId given). */
export const DERIVED_BATCH_PREFIX = 'q-';
/** Prefix of recipient idempotency keys derived from batchId + address (no idempotencyKey given). */
export const DERIVED_KEY_PREFIX = 'nb-';

const CONTROL_CHARS = /[\u0000-\u001f\u007f]/;

const recipientSchema = z
  .object(
    {
      // The address itself is checked per recipient at fan-out: a bad one is rejected on its own.
      to: z.union([z.string(), z.object({ address: z.string(), name: z.string().optional() }).strict()], {
        error: 'to must be an email address string or { address, name }',
      }),
      data: z.record(z.string(), z.unknown(), { error: 'data must be an object' }).optional(),
      idempotencyKey: z
        .string({ error: 'idempotencyKey must be a string' })
        .max(MAX_IDEMPOTENCY_KEY_CHARS, {
          error: 'idempotencyKey must be 1 to 200 characters of letters, digits and . _ : -',
          abort: true,
        })
        .regex(IDEMPOTENCY_KEY, { error: 'idempotencyKey must be 1 to 200 characters of letters, digits and . _ : -' })
        .optional(),
    },
    { error: 'each recipient must be an object { to, data?, idempotencyKey? }' },
  )
  .strict();

const batchSchema = z
  .object({
    batchId: z
      .string({ error: `batchId must be a string of ${BATCH_ID_RULE}` })
      .regex(BATCH_ID, { error: `batchId must be ${BATCH_ID_RULE}` })
      .optional(),
    template: z
      .string({ error: 'template is required: the name of a template folder' })
      .regex(TEMPLATE_NAME, { error: 'template must be a template name (lower-case letters, digits and dashes)' }),
    from: addressSchema.optional(),
    subject: z
      .string({ error: 'subject must be a string' })
      .min(1, { error: 'subject must not be empty' })
      .max(MAX_SUBJECT_CHARS, { error: `subject must be at most ${MAX_SUBJECT_CHARS} characters` })
      .refine((v) => !CONTROL_CHARS.test(v), { error: 'subject must not contain CR, LF or other control characters' })
      .optional(),
    data: z.record(z.string(), z.unknown(), { error: 'data must be an object' }).optional(),
    sendAt: z.string({ error: 'sendAt must be an RFC 3339 date-time string such as 2026-11-23T08:00:00Z' }).optional(),
    category: z.enum(NOTIFICATION_CATEGORIES, { error: 'category must be "transactional" or "bulk"' }).optional(),
    list: z
      .string({ error: 'list must be a string' })
      .max(MAX_LIST_ID_CHARS, { error: `list must be at most ${MAX_LIST_ID_CHARS} characters`, abort: true })
      .regex(LIST_ID, { error: 'list must be lower-case letters, digits and dashes, starting with a letter or digit' })
      .optional(),
    // Counted before any recipient is parsed (zod's .max() would parse every one of them first).
    recipients: z
      .unknown()
      .superRefine((value, ctx) => {
        if (Array.isArray(value) && value.length > MAX_BATCH_RECIPIENTS) {
          ctx.addIssue({
            code: 'custom',
            message: `at most ${MAX_BATCH_RECIPIENTS} recipients per batch: split larger sends into several batches`,
          });
        }
      })
      .pipe(
        z
          .array(recipientSchema, { error: 'recipients is required: an array of { to, data?, idempotencyKey? }' })
          .min(1, { error: 'recipients must not be empty' }),
      ),
  })
  .strict();

/** One recipient as given: its address is validated at fan-out, where a bad one is rejected alone. */
export type RecipientInput = z.output<typeof recipientSchema>;

/** A batch whose batch-level fields are valid. Stored as JSON (mail-batches/<batchId>.json), so plain values only. */
export interface NotificationBatch {
  template: string;
  from?: Address;
  subject?: string;
  data: Record<string, unknown>;
  /** ISO 8601; absent = now. */
  sendAt?: string;
  category: NotificationCategory;
  /** Bulk only: the list recipients unsubscribe from; absent: the template's name. */
  list?: string;
  recipients: RecipientInput[];
}

export interface ParsedBatch {
  /** The batchId the message gave, if any. */
  batchId?: string;
  batch: NotificationBatch;
}

export interface BatchRules {
  now: number;
  /** True when `name` is a deployed template. */
  hasTemplate(name: string): boolean;
  /** MAIL_SENDER and MAIL_ALLOWED_FROM. */
  allowedFrom: readonly string[];
  /** A sendAt in the past means "now" (queue messages can wait in a backlog); POST refuses it as /api/messages does. */
  allowPastSendAt?: boolean;
  /** False when bulk mail cannot carry unsubscribe links (no MAIL_UNSUBSCRIBE_BASE_URL): bulk batches are refused. */
  bulkAllowed?: boolean;
}

function invalid(problems: FieldProblem[]): MailError {
  return new MailError(
    'INVALID_MESSAGE',
    `Invalid notification batch: ${problems
      .slice(0, 5)
      .map((d) => `${d.path}: ${d.message}`)
      .join('; ')}${problems.length > 5 ? ` (and ${problems.length - 5} more)` : ''}`,
    { details: capProblems(problems) },
  );
}

/**
 * Validates a batch: every batch-level field, and the shape of each recipient (an object with `to`, optional `data`
 * and `idempotencyKey`, nothing else). Whether a recipient's address is valid and its data fits the template is
 * left to the fan-out, which rejects that recipient alone. Throws MailError INVALID_MESSAGE, TEMPLATE_NOT_FOUND or
 * SENDER_NOT_ALLOWED, with details naming each field (`recipients[3].to`).
 */
export function parseNotificationBatch(body: unknown, rules: BatchRules): ParsedBatch {
  if (body === null || typeof body !== 'object' || Array.isArray(body)) {
    throw invalid([{ path: '(body)', message: 'the batch must be a JSON object' }]);
  }
  // Depth and size first: a queue message arrives parsed by the host, and the content hash, zod and JSON.stringify
  // recurse into it. A too-deep batch is then recorded as failed, naming the field, like any other invalid one.
  const tooLarge = boundsProblem(body, { maxValues: MAX_BATCH_JSON_VALUES });
  if (tooLarge) throw invalid([tooLarge]);
  const parsed = batchSchema.safeParse(body);
  if (!parsed.success) throw invalid(problemsOf(parsed.error));
  const b = parsed.data;
  // The shared data goes to every recipient: too large is the batch's problem (a recipient's own data is checked
  // when it is rendered, and rejects that recipient alone).
  const problems: FieldProblem[] = b.data !== undefined ? templateDataProblems(b.data) : [];
  if (problems.length) throw invalid(problems);
  const sendAt =
    b.sendAt !== undefined
      ? checkSendAt(b.sendAt, rules.now, problems, { allowPast: rules.allowPastSendAt ?? false })
      : undefined;
  if (problems.length) throw invalid(problems);
  if (b.list !== undefined && b.category !== 'bulk') {
    throw invalid([{ path: 'list', message: 'list is only used with category "bulk"' }]);
  }
  if (b.category === 'bulk' && rules.bulkAllowed === false) {
    throw new MailError(
      'UNSUBSCRIBE_NOT_CONFIGURED',
      'Bulk mail needs MAIL_UNSUBSCRIBE_BASE_URL and MAIL_KEY_VAULT_URL for its List-Unsubscribe links',
      { details: [{ path: 'category', message: 'bulk mail is refused until MAIL_UNSUBSCRIBE_BASE_URL is set' }] },
    );
  }
  if (!rules.hasTemplate(b.template)) {
    throw new MailError('TEMPLATE_NOT_FOUND', `Unknown template "${b.template}"`, {
      details: [{ path: 'template', message: `unknown template "${b.template}"` }],
    });
  }
  if (b.from && !isAllowedFrom(b.from.address, rules.allowedFrom)) {
    throw new MailError('SENDER_NOT_ALLOWED', 'From address is not MAIL_SENDER and not allowed by MAIL_ALLOWED_FROM', {
      details: [{ path: 'from', message: 'not an allowed sender for this mailbox (MAIL_SENDER, MAIL_ALLOWED_FROM)' }],
    });
  }
  return {
    ...(b.batchId !== undefined ? { batchId: b.batchId } : {}),
    batch: {
      template: b.template,
      ...(b.from ? { from: b.from } : {}),
      ...(b.subject !== undefined ? { subject: b.subject } : {}),
      data: b.data ?? {},
      ...(sendAt ? { sendAt: sendAt.toISOString() } : {}),
      category: b.category ?? 'transactional',
      ...(b.list !== undefined ? { list: b.list } : {}),
      recipients: b.recipients.map((r) => ({
        to: r.to,
        ...(r.data !== undefined ? { data: r.data } : {}),
        ...(r.idempotencyKey !== undefined ? { idempotencyKey: r.idempotencyKey } : {}),
      })),
    },
  };
}

const sha256 = (text: string) => createHash('sha256').update(text).digest('hex');

/** The hash that tells a replay of a batch (same content) from a different batch reusing its id. */
export function batchContentHash(batch: NotificationBatch): string {
  return sha256(canonicalJson(batch));
}

/**
 * The batchId of a queue message that gave none: `q-` + the first 32 hex digits of the SHA-256 of its content
 * (the canonical JSON when it parses, so that key order and base64 do not matter; else the text), so that every
 * redelivery of the message maps to the same batch.
 */
export function deriveBatchId(content: unknown): string {
  // Content too deep for JSON.stringify is hashed over the same canonical text, built without recursion.
  const text =
    typeof content === 'string'
      ? content
      : inspectJson(content, { maxValues: Infinity }).problem
        ? canonicalJsonIterative(content)
        : canonicalJson(content);
  return `${DERIVED_BATCH_PREFIX}${sha256(text).slice(0, 32)}`;
}

/**
 * A recipient's outbox idempotency key when it gave none: `nb-` + 40 hex digits of SHA-256(batchId, lower-cased
 * address). Re-running the fan-out of a batch therefore finds every message it created before.
 */
export function recipientIdempotencyKey(batchId: string, address: string): string {
  return `${DERIVED_KEY_PREFIX}${sha256(`${batchId}\n${address.toLowerCase()}`).slice(0, 40)}`;
}
