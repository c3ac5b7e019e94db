/**
 * The inputs of `/api/suppressions`: the POST body `{ address, list? }`, the `{address}` of a DELETE, and the `list`
 * and `continuation` query parameters. Each is bounded before any pattern runs on it; each failure names its field.
 */
import { z } from 'zod';
import { MailError, type FieldProblem } from '../errors';
import { isEmailAddress, MAX_ADDRESS_CHARS } from '../message';
import { problemsOf } from '../outbox/sendRequest';
import { LIST_ID, MAX_LIST_ID_CHARS } from './suppressionStore';

/** A Table continuation token is base64 of two keys: far shorter than this. */
export const MAX_CONTINUATION_CHARS = 2048;
/** base64 (either alphabet), one class: linear. */
const CONTINUATION = /^[A-Za-z0-9+/=_-]+$/;
const LIST_RULE = '1 to 64 lower-case letters, digits and dashes, starting with a letter or digit';

function invalid(problems: FieldProblem[]): MailError {
  return new MailError(
    'INVALID_MESSAGE',
    `Invalid request: ${problems.map((p) => `${p.path}: ${p.message}`).join('; ')}`,
    { details: problems },
  );
}

/** Control characters (CR and LF above all): an address holding one is no address, and storage refuses some. */
const CONTROL_CHARS = /[\u0000-\u001f\u007f]/;

/** False for text with an unpaired surrogate (encodeURIComponent refuses exactly those). */
function isWellFormed(text: string): boolean {
  try {
    encodeURIComponent(text);
    return true;
  } catch {
    return false;
  }
}

const addressSchema = z
  .string({ error: 'address must be an email address string' })
  .max(MAX_ADDRESS_CHARS, { error: `address must be at most ${MAX_ADDRESS_CHARS} characters`, abort: true })
  .refine((v) => !CONTROL_CHARS.test(v) && isWellFormed(v), {
    error: 'address must not contain control characters or unpaired surrogates',
    abort: true,
  })
  .refine((v) => isEmailAddress(v.trim()), { error: 'address is not a valid email address' });

const listSchema = z
  .string({ error: 'list must be a string' })
  .max(MAX_LIST_ID_CHARS, { error: `list must be ${LIST_RULE}`, abort: true })
  .regex(LIST_ID, { error: `list must be ${LIST_RULE}` });

const addBodySchema = z.object({ address: addressSchema, list: listSchema.optional() }).strict();

/** A suppression to add: the address lower-cased, the list absent for "every bulk list". */
export interface SuppressionInput {
  address: string;
  list?: string;
}

/** Validates the POST /api/suppressions body. */
export function parseSuppressionBody(body: unknown): SuppressionInput {
  if (body === null || typeof body !== 'object' || Array.isArray(body)) {
    throw invalid([{ path: '(body)', message: 'the body must be a JSON object { address, list? }' }]);
  }
  const parsed = addBodySchema.safeParse(body);
  if (!parsed.success) throw invalid(problemsOf(parsed.error));
  return {
    address: parsed.data.address.trim().toLowerCase(),
    ...(parsed.data.list !== undefined ? { list: parsed.data.list } : {}),
  };
}

/** Validates the `{address}` route parameter. */
export function parseAddressParam(value: string | undefined): string {
  const parsed = addressSchema.safeParse(value ?? '');
  if (!parsed.success) throw invalid([{ path: 'address', message: parsed.error.issues[0]?.message ?? 'invalid' }]);
  return parsed.data.trim().toLowerCase();
}

/** Validates the optional `list` query parameter. */
export function parseListParam(value: string | null): string | undefined {
  if (value === null || value === '') return undefined;
  const parsed = listSchema.safeParse(value);
  if (!parsed.success) throw invalid([{ path: 'list', message: parsed.error.issues[0]?.message ?? 'invalid' }]);
  return parsed.data;
}

/** Validates the optional `continuation` query parameter (the token of the previous page, as it was given). */
export function parseContinuationParam(value: string | null): string | undefined {
  if (value === null || value === '') return undefined;
  if (value.length > MAX_CONTINUATION_CHARS || !CONTINUATION.test(value)) {
    throw invalid([{ path: 'continuation', message: 'must be the continuation of a previous page, as it was given' }]);
  }
  return value;
}

/** The error for a continuation that looked right but that storage could not read. */
export function invalidContinuation(): MailError {
  return invalid([{ path: 'continuation', message: 'must be the continuation of a previous page, as it was given' }]);
}
