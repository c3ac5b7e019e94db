/** The body of POST /api/messages: its schema and the rules that span fields, each failure naming its field. */
import { z } from 'zod';
import type { MailError, FieldProblem } from '../errors';
import { formatPath, boundsProblem, invalidInput, MAX_BODY_JSON_VALUES, MAX_PATH_KEY_CHARS } from '../inputBounds';
import { fieldProblems, messageInputSchema, type Address } from '../message';
import { TEMPLATE_NAME } from '../templates/templateRenderer';

/** Queue messages can stay invisible for at most 7 days, so that is as far ahead as a message can be scheduled. */
export const MAX_SCHEDULE_AHEAD_MS = 7 * 24 * 60 * 60 * 1000;
/** A sendAt this far in the past is taken as "now" (clock skew between caller and app); further back is an error. */
export const SEND_AT_PAST_SKEW_MS = 5 * 60 * 1000;
export const MAX_IDEMPOTENCY_KEY_CHARS = 200;
export const IDEMPOTENCY_KEY = /^[A-Za-z0-9._:-]{1,200}$/;
const IDEMPOTENCY_KEY_RULE = '1 to 200 characters of letters, digits and . _ : -';
/** The longest RFC 3339 date-time (nanoseconds and an offset) is 35 characters; anything longer is not one. */
export const MAX_SEND_AT_CHARS = 40;
/** RFC 3339 date-time with an explicit offset: a time without one would be read in the app's time zone. */
const RFC3339 = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(?::\d{2}(?:\.\d{1,9})?)?(?:Z|[+-]\d{2}:\d{2})$/i;

const fields = messageInputSchema.shape;

const idempotencyKeySchema = z
  .string({ error: `idempotencyKey must be a string of ${IDEMPOTENCY_KEY_RULE}` })
  .max(MAX_IDEMPOTENCY_KEY_CHARS, { error: `idempotencyKey must be ${IDEMPOTENCY_KEY_RULE}`, abort: true })
  .regex(IDEMPOTENCY_KEY, { error: `idempotencyKey must be ${IDEMPOTENCY_KEY_RULE}` });

const sendRequestSchema = z
  .object({
    from: fields.from,
    to: fields.to,
    cc: fields.cc,
    bcc: fields.bcc,
    replyTo: fields.replyTo,
    subject: fields.subject.optional(),
    text: fields.text,
    html: fields.html,
    template: z
      .string({ error: 'template must be a string' })
      .regex(TEMPLATE_NAME, { error: 'template must be a template name (lower-case letters, digits and dashes)' })
      .optional(),
    data: z.record(z.string(), z.unknown(), { error: 'data must be an object' }).optional(),
    attachments: fields.attachments,
    headers: fields.headers,
    idempotencyKey: idempotencyKeySchema.optional(),
    sendAt: z.string({ error: 'sendAt must be an RFC 3339 date-time string such as 2026-11-23T08:00:00Z' }).optional(),
  })
  .strict();

type ParsedBody = z.output<typeof sendRequestSchema>;

/** A validated send request. Content is either literal (subject + text/html) or a template with its data. */
export interface SendRequest {
  from?: Address;
  to: Address[];
  cc: Address[];
  bcc: Address[];
  replyTo?: Address;
  content:
    | { kind: 'literal'; subject: string; text?: string; html?: string }
    | {
        kind: 'template';
        template: string;
        data: Record<string, unknown>;
        /** Replaces the template's rendered subject (batch notifications); validated by the caller. */
        subject?: string;
      };
  /** Attachments as given (base64), validated. */
  attachments: Array<{ filename: string; contentType?: string; contentBase64: string }>;
  headers: Record<string, string>;
  idempotencyKey?: string;
  /** When to send; absent = now. Never more than MAX_SCHEDULE_AHEAD_MS ahead. */
  sendAt?: Date;
}

function invalid(problems: FieldProblem[]): MailError {
  return invalidInput('Invalid request', problems);
}

/** zod reports unknown fields once for the whole object; callers want each named. */
export function problemsOf(error: z.ZodError): FieldProblem[] {
  const out: FieldProblem[] = [];
  for (const issue of error.issues) {
    if (issue.code === 'unrecognized_keys') {
      const prefix = fieldProblems(new z.ZodError([issue]))[0]?.path ?? '(body)';
      for (const key of issue.keys) {
        const shown = key.length > MAX_PATH_KEY_CHARS ? `${key.slice(0, MAX_PATH_KEY_CHARS)}…` : key;
        out.push({
          path: prefix === '(body)' ? formatPath([key]) : `${prefix}.${shown}`,
          message: `unknown field "${shown}"`,
        });
      }
    } else {
      out.push(...fieldProblems(new z.ZodError([issue])));
    }
  }
  return out;
}

/**
 * Checks a sendAt value, pushing a problem naming `sendAt` when it is invalid. `allowPast`: a time in the past is
 * taken as "now" (a queue message may wait in a backlog longer than the caller could foresee).
 */
export function checkSendAt(
  value: string,
  now: number,
  problems: FieldProblem[],
  options: { allowPast?: boolean } = {},
): Date | undefined {
  if (value.length > MAX_SEND_AT_CHARS || !RFC3339.test(value)) {
    problems.push({
      path: 'sendAt',
      message: 'must be an RFC 3339 date-time with a time zone, such as 2026-11-23T08:00:00Z',
    });
    return undefined;
  }
  const at = new Date(value);
  if (Number.isNaN(at.getTime())) {
    problems.push({ path: 'sendAt', message: 'is not a valid date-time' });
    return undefined;
  }
  if (!options.allowPast && at.getTime() < now - SEND_AT_PAST_SKEW_MS) {
    problems.push({ path: 'sendAt', message: 'is in the past' });
    return undefined;
  }
  if (at.getTime() > now + MAX_SCHEDULE_AHEAD_MS) {
    problems.push({ path: 'sendAt', message: 'must be at most 7 days ahead' });
    return undefined;
  }
  return at;
}

/** Rules across fields: literal content or a template, never both. */
function content(body: ParsedBody, problems: FieldProblem[]): SendRequest['content'] | undefined {
  const literal = (['subject', 'text', 'html'] as const).filter((k) => body[k] !== undefined);
  if (body.template !== undefined) {
    for (const key of literal) {
      problems.push({ path: key, message: `${key} cannot be combined with template: the template renders it` });
    }
    return literal.length ? undefined : { kind: 'template', template: body.template, data: body.data ?? {} };
  }
  if (body.data !== undefined) problems.push({ path: 'data', message: 'data is only used with template' });
  if (body.subject === undefined) {
    problems.push({ path: 'subject', message: 'subject is required (or give template and data)' });
    return undefined;
  }
  if (body.text === undefined && body.html === undefined) {
    problems.push({ path: 'text', message: 'text or html is required with subject' });
    return undefined;
  }
  return {
    kind: 'literal',
    subject: body.subject,
    ...(body.text !== undefined ? { text: body.text } : {}),
    ...(body.html !== undefined ? { html: body.html } : {}),
  };
}

/**
 * Validates a POST /api/messages body. `idempotencyKeyHeader` is the `Idempotency-Key` header, if any: it may
 * replace the body's key, but the two must agree. Throws MailError INVALID_MESSAGE whose details name each field.
 */
export function parseSendRequest(
  body: unknown,
  options: { now?: number; idempotencyKeyHeader?: string | null | undefined } = {},
): SendRequest {
  const now = options.now ?? Date.now();
  if (body === null || typeof body !== 'object' || Array.isArray(body)) {
    throw invalid([{ path: '(body)', message: 'the body must be a JSON object' }]);
  }
  // Depth and size before zod, the canonical hash or JSON.stringify recurse into it (HTTP bodies were scanned as
  // text already; this covers every other caller).
  const tooLarge = boundsProblem(body, { maxValues: MAX_BODY_JSON_VALUES });
  if (tooLarge) throw invalid([tooLarge]);
  const parsed = sendRequestSchema.safeParse(body);
  if (!parsed.success) {
    // Report the rules across fields too, so that one round trip shows every problem.
    const problems = problemsOf(parsed.error);
    const more: FieldProblem[] = [];
    const raw = body as Record<string, unknown>;
    content({ ...raw, template: typeof raw.template === 'string' ? raw.template : undefined }, more);
    if (typeof raw.sendAt === 'string') checkSendAt(raw.sendAt, now, more);
    const named = new Set(problems.map((p) => p.path));
    throw invalid([...problems, ...more.filter((p) => !named.has(p.path))]);
  }
  const b = parsed.data;
  const problems: FieldProblem[] = [];
  const mailContent = content(b, problems);

  let idempotencyKey = b.idempotencyKey;
  const header = options.idempotencyKeyHeader ?? undefined;
  if (header !== undefined) {
    if (header.length > MAX_IDEMPOTENCY_KEY_CHARS || !IDEMPOTENCY_KEY.test(header)) {
      problems.push({ path: 'Idempotency-Key', message: `the Idempotency-Key header must be ${IDEMPOTENCY_KEY_RULE}` });
    } else if (idempotencyKey !== undefined && idempotencyKey !== header) {
      problems.push({
        path: 'idempotencyKey',
        message: 'differs from the Idempotency-Key header: give the key once, or the same in both',
      });
    } else {
      idempotencyKey = header;
    }
  }
  const sendAt = b.sendAt !== undefined ? checkSendAt(b.sendAt, now, problems) : undefined;
  if (problems.length || !mailContent) throw invalid(problems);
  return {
    ...(b.from ? { from: b.from } : {}),
    to: b.to ?? [],
    cc: b.cc ?? [],
    bcc: b.bcc ?? [],
    ...(b.replyTo ? { replyTo: b.replyTo } : {}),
    content: mailContent,
    attachments: (b.attachments ?? []).map((a) => ({
      filename: a.filename,
      ...(a.contentType ? { contentType: a.contentType } : {}),
      contentBase64: a.contentBase64,
    })),
    headers: b.headers ?? {},
    ...(idempotencyKey !== undefined ? { idempotencyKey } : {}),
    ...(sendAt ? { sendAt } : {}),
  };
}
