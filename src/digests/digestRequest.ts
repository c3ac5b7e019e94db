/**
 * Digest items as producers give them: one `{ recipient, item, idempotencyKey? }` (POST, or with `digest` on the
 * mail-digest-items queue) or a bulk `{ items: [...] }`. One zod schema for both ways in; every bound (digest name,
 * item size and depth, items per request) is checked before anything recurses into the input.
 */
import { createHash } from 'node:crypto';
import { z } from 'zod';
import { canonicalJson } from '../canonicalJson';
import type { FieldProblem } from '../errors';
import { formatPath, inspectJson, invalidInput, MAX_JSON_DEPTH, type PathSegment } from '../inputBounds';
import { isEmailAddress, MAX_ADDRESS_CHARS } from '../message';
import { IDEMPOTENCY_KEY, MAX_IDEMPOTENCY_KEY_CHARS, problemsOf } from '../outbox/sendRequest';

/** A digest's name: its template folder is `templates/digest-<name>/`. Bounded classes, no nesting: linear time. */
/** 57 characters at most, so that the digest's list id for unsubscribe links, `digest-<name>`, fits 64. */
export const DIGEST_NAME = /^[a-z0-9][a-z0-9-]{0,56}$/;
export const MAX_DIGEST_NAME_CHARS = 57;
export const DIGEST_NAME_RULE = '1 to 57 lower-case letters, digits and dashes, starting with a letter or digit';
/** The template folder prefix of a digest. */
export const DIGEST_TEMPLATE_PREFIX = 'digest-';
/** An item is at most this much JSON (characters). */
export const MAX_ITEM_JSON_CHARS = 16 * 1024;
/** Items in one bulk request. */
export const MAX_ITEMS_PER_REQUEST = 1_000;
/** The largest body of POST /api/digests/{digest}/items: MAX_ITEMS_PER_REQUEST items of MAX_ITEM_JSON_CHARS, and room. */
export const MAX_DIGEST_BODY_BYTES = 20 * 1024 * 1024;
/** Values (containers and entries) a bulk body may hold. */
export const MAX_DIGEST_BODY_VALUES = 1_000_000;

const IDEMPOTENCY_KEY_RULE = '1 to 200 characters of letters, digits and . _ : -';

/** True for a valid digest name; the length is checked before the pattern. */
export function isDigestName(value: unknown): value is string {
  return typeof value === 'string' && value.length <= MAX_DIGEST_NAME_CHARS && DIGEST_NAME.test(value);
}

/** The template that renders digest `name`. */
export function digestTemplate(name: string): string {
  return `${DIGEST_TEMPLATE_PREFIX}${name}`;
}

const itemSchema = z
  .object(
    {
      recipient: z
        .string({ error: 'recipient is required: the email address the digest goes to' })
        .max(MAX_ADDRESS_CHARS, { error: `recipient must be at most ${MAX_ADDRESS_CHARS} characters`, abort: true })
        .refine((v) => isEmailAddress(v.trim()), { error: 'recipient must be an email address such as a@example.com' }),
      // Bounded (size, depth) before this schema runs; an object, so that a template reads its fields by name.
      item: z.record(z.string(), z.unknown(), { error: 'item is required: a JSON object the template lists' }),
      idempotencyKey: z
        .string({ error: 'idempotencyKey must be a string' })
        .max(MAX_IDEMPOTENCY_KEY_CHARS, { error: `idempotencyKey must be ${IDEMPOTENCY_KEY_RULE}`, abort: true })
        .regex(IDEMPOTENCY_KEY, { error: `idempotencyKey must be ${IDEMPOTENCY_KEY_RULE}` })
        .optional(),
    },
    { error: 'each item must be an object { recipient, item, idempotencyKey? }' },
  )
  .strict();

/** One item, validated, with its recipient normalised (trimmed, lower-case). */
export interface DigestItemInput {
  recipient: string;
  item: Record<string, unknown>;
  idempotencyKey?: string;
}

/** An item refused on its own in a bulk request (as batch recipients are reported). */
export interface ItemRejection {
  index: number;
  field: string;
  reason: string;
}

/** The bounds of one item: size and depth before zod. */
function boundItem(value: unknown, at: PathSegment[]): FieldProblem | undefined {
  if (value === null || typeof value !== 'object' || Array.isArray(value)) return undefined; // zod words it
  const item = (value as Record<string, unknown>).item;
  if (item === null || typeof item !== 'object') return undefined;
  const inspected = inspectJson(
    item,
    { maxDepth: MAX_JSON_DEPTH, maxValues: MAX_ITEM_JSON_CHARS },
    formatPath([...at, 'item']),
  );
  if (inspected.problem) return inspected.problem;
  if (inspected.chars > MAX_ITEM_JSON_CHARS) {
    return {
      path: formatPath([...at, 'item']),
      message: `must be at most ${MAX_ITEM_JSON_CHARS} characters as JSON (it has about ${inspected.chars}): list less in one item`,
    };
  }
  return undefined;
}

/** Validates one item; its problems name fields under `at` (e.g. `items[3].recipient`). */
export function parseItem(value: unknown, at: PathSegment[] = []): DigestItemInput | FieldProblem[] {
  const bound = boundItem(value, at);
  if (bound) return [bound];
  const parsed = itemSchema.safeParse(value);
  if (!parsed.success) {
    return problemsOf(parsed.error).map((p) => ({
      path: at.length === 0 ? p.path : p.path === '(body)' ? formatPath(at) : `${formatPath(at)}.${p.path}`,
      message: p.message,
    }));
  }
  const { recipient, item, idempotencyKey } = parsed.data;
  return {
    recipient: recipient.trim().toLowerCase(),
    item,
    ...(idempotencyKey !== undefined ? { idempotencyKey } : {}),
  };
}

/** The digest name from a route or a queue message; throws INVALID_MESSAGE naming `path`. */
export function checkDigestName(value: unknown, path = 'digest'): string {
  if (!isDigestName(value)) throw invalidInput('Invalid digest', [{ path, message: `must be ${DIGEST_NAME_RULE}` }]);
  return value;
}

/** What a POST body held: the valid items, in order, and the rejected ones by index (bulk only). */
export interface ParsedItems {
  bulk: boolean;
  items: Array<{ index: number; input: DigestItemInput }>;
  rejections: ItemRejection[];
}

/**
 * Parses a POST /api/digests/{digest}/items body: one item (a bad one is a 400 naming the field), or `{ items }`
 * (a bad entry is a rejection of its own; a bad `items` itself, or too many, is a 400).
 */
export function parseItemsBody(body: unknown): ParsedItems {
  if (body === null || typeof body !== 'object' || Array.isArray(body)) {
    throw invalidInput('Invalid digest items', [
      { path: '(body)', message: 'the body must be a JSON object: { recipient, item } or { items: [...] }' },
    ]);
  }
  const raw = body as Record<string, unknown>;
  if (!Object.hasOwn(raw, 'items')) {
    const one = parseItem(body);
    if (Array.isArray(one)) throw invalidInput('Invalid digest item', one);
    return { bulk: false, items: [{ index: 0, input: one }], rejections: [] };
  }
  const extra = Object.keys(raw).filter((k) => k !== 'items');
  if (extra.length) {
    throw invalidInput(
      'Invalid digest items',
      extra.slice(0, 10).map((k) => ({ path: formatPath([k]), message: 'unknown field: a bulk body has items only' })),
    );
  }
  const list = raw.items;
  if (!Array.isArray(list) || list.length === 0) {
    throw invalidInput('Invalid digest items', [
      { path: 'items', message: 'must be a non-empty array of { recipient, item, idempotencyKey? }' },
    ]);
  }
  if (list.length > MAX_ITEMS_PER_REQUEST) {
    throw invalidInput('Invalid digest items', [
      { path: 'items', message: `at most ${MAX_ITEMS_PER_REQUEST} items per request: send more in several requests` },
    ]);
  }
  const items: ParsedItems['items'] = [];
  const rejections: ItemRejection[] = [];
  list.forEach((entry, index) => {
    const parsed = parseItem(entry, ['items', index]);
    if (Array.isArray(parsed)) {
      const first = parsed[0] as FieldProblem;
      rejections.push({ index, field: first.path, reason: first.message });
    } else {
      items.push({ index, input: parsed });
    }
  });
  return { bulk: true, items, rejections };
}

/** A mail-digest-items message: `{ digest, recipient, item, idempotencyKey? }`. Throws INVALID_MESSAGE naming the field. */
export function parseQueueItem(value: unknown): { digest: string; input: DigestItemInput } {
  if (value === null || typeof value !== 'object' || Array.isArray(value)) {
    throw invalidInput('Invalid digest item message', [
      { path: '(message)', message: 'must be a JSON object { digest, recipient, item, idempotencyKey? }' },
    ]);
  }
  const { digest, ...rest } = value as Record<string, unknown>;
  const problems: FieldProblem[] = [];
  if (!isDigestName(digest)) problems.push({ path: 'digest', message: `must be ${DIGEST_NAME_RULE}` });
  const parsed = parseItem(rest);
  if (Array.isArray(parsed)) problems.push(...parsed);
  if (problems.length || Array.isArray(parsed)) throw invalidInput('Invalid digest item message', problems);
  return { digest: digest as string, input: parsed };
}

/**
 * The item's identity within its digest and recipient: a hash of its idempotency key, or without one of its content,
 * so that a redelivered item lands on the same row.
 */
export function itemKey(input: DigestItemInput): string {
  const basis =
    input.idempotencyKey !== undefined ? `key:${input.idempotencyKey}` : `content:${canonicalJson(input.item)}`;
  return createHash('sha256').update(basis).digest('hex').slice(0, 32);
}
