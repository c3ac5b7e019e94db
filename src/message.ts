/** The outgoing message: its schema, normalisation and the header-injection rules, checked where the input is assigned. */
import { z } from 'zod';
import { MailError, type FieldProblem } from './errors';

/** Limits that keep a single field from being abusive; the whole message is bounded by MAIL_MAX_MESSAGE_BYTES. */
export const MAX_SUBJECT_CHARS = 998;
export const MAX_ADDRESS_CHARS = 320;
export const MAX_NAME_CHARS = 256;
export const MAX_HEADERS = 50;
export const MAX_HEADER_VALUE_CHARS = 998;
export const MAX_ATTACHMENTS = 100;
export const MAX_FILENAME_CHARS = 255;
/** Upper bound on a recipient list before the recipient limit is even checked. */
export const MAX_LIST_ENTRIES = 1000;

/** Control characters, CR and LF above all, that would let a value start a new header line. */
const CONTROL_CHARS = /[\u0000-\u0008\u000a-\u001f\u007f]/;
const EMAIL = /^[^\s@<>()",;:\\[\]]+@[^\s@<>()",;:\\[\]]+\.[^\s@<>()",;:\\[\]]+$/;
const NAMED_ADDRESS = /^\s*(?:"?([^"<>]*?)"?\s*)?<([^<>\s]+)>\s*$/;
const HEADER_NAME = /^X-[A-Za-z0-9-]{1,76}$/;

const noControl = (what: string) => (value: string) =>
  !CONTROL_CHARS.test(value) || `${what} must not contain CR, LF or other control characters`;

function refineText(what: string, max: number) {
  return z
    .string({ error: `${what} must be a string` })
    .max(max, { error: `${what} must be at most ${max} characters` })
    .refine((v) => noControl(what)(v) === true, {
      error: `${what} must not contain CR, LF or other control characters`,
    });
}

/** Parses "a@example.com", "Bee <b@example.com>" or { address, name } into an Address, or explains why not. */
function toAddress(value: unknown): Address | string {
  if (typeof value === 'string') {
    if (value.length > MAX_ADDRESS_CHARS + MAX_NAME_CHARS) return 'is too long';
    if (CONTROL_CHARS.test(value)) return 'must not contain CR, LF or other control characters';
    const named = NAMED_ADDRESS.exec(value);
    const address = (named?.[2] ?? value).trim();
    const name = named?.[1]?.trim() || undefined;
    if (!EMAIL.test(address) || address.length > MAX_ADDRESS_CHARS)
      return `is not a valid email address ("${value.slice(0, 80)}")`;
    return { address, ...(name ? { name } : {}) };
  }
  if (value && typeof value === 'object' && !Array.isArray(value)) {
    const { address, name, ...rest } = value as Record<string, unknown>;
    const unknown = Object.keys(rest);
    if (unknown.length) return `has unknown field(s) ${unknown.join(', ')}: only address and name are accepted`;
    if (typeof address !== 'string') return 'address must be a string';
    if (CONTROL_CHARS.test(address)) return 'address must not contain CR, LF or other control characters';
    if (!EMAIL.test(address.trim()) || address.length > MAX_ADDRESS_CHARS)
      return 'address is not a valid email address';
    if (name !== undefined) {
      if (typeof name !== 'string') return 'name must be a string';
      if (name.length > MAX_NAME_CHARS) return `name must be at most ${MAX_NAME_CHARS} characters`;
      if (CONTROL_CHARS.test(name)) return 'name must not contain CR, LF or other control characters';
    }
    return { address: address.trim(), ...(name ? { name } : {}) };
  }
  return 'must be an email address string or { address, name }';
}

/** One recipient or sender: "a@example.com", "Bee <b@example.com>" or { address, name }. */
export const addressSchema = z.unknown().transform((value, ctx): Address => {
  const result = toAddress(value);
  if (typeof result === 'string') {
    ctx.addIssue({ code: 'custom', message: result });
    return z.NEVER;
  }
  return result;
});

/** `to`, `cc`, `bcc`: a string, or an array of strings or objects; each bad entry is reported at its index. */
export const addressListSchema = z.unknown().transform((value, ctx): Address[] => {
  const list = Array.isArray(value) ? value : [value];
  if (list.length > MAX_LIST_ENTRIES) {
    ctx.addIssue({ code: 'custom', message: `at most ${MAX_LIST_ENTRIES} entries` });
    return z.NEVER;
  }
  const out: Address[] = [];
  list.forEach((entry, index) => {
    const result = toAddress(entry);
    if (typeof result === 'string')
      ctx.addIssue({ code: 'custom', message: result, path: Array.isArray(value) ? [index] : [] });
    else out.push(result);
  });
  return out;
});

export const attachmentSchema = z
  .object({
    filename: refineText('filename', MAX_FILENAME_CHARS).min(1, { error: 'filename must not be empty' }),
    contentType: z
      .string({ error: 'contentType must be a string' })
      .regex(/^[a-z0-9!#$&^_.+-]+\/[a-z0-9!#$&^_.+-]+$/i, {
        error: 'contentType must be a MIME type such as application/pdf',
      })
      .optional(),
    contentBase64: z
      .string({ error: 'contentBase64 must be a base64 string' })
      .regex(/^[A-Za-z0-9+/\r\n]*={0,2}[\r\n]*$/, { error: 'contentBase64 must be valid base64' }),
  })
  .strict();

export const headersSchema = z
  .record(z.string(), refineText('header value', MAX_HEADER_VALUE_CHARS), {
    error: 'headers must be an object of X- header names to string values',
  })
  .superRefine((headers, ctx) => {
    const names = Object.keys(headers);
    if (names.length > MAX_HEADERS) ctx.addIssue({ code: 'custom', message: `at most ${MAX_HEADERS} headers` });
    for (const name of names) {
      if (!HEADER_NAME.test(name)) {
        ctx.addIssue({
          code: 'custom',
          path: [name],
          message: 'only X- headers are accepted (letters, digits and dashes)',
        });
      }
    }
  });

/** The message as callers give it (the HTTP body's mail fields, or the CLI's). */
export const messageInputSchema = z
  .object({
    from: addressSchema.optional(),
    to: addressListSchema.optional(),
    cc: addressListSchema.optional(),
    bcc: addressListSchema.optional(),
    replyTo: addressSchema.optional(),
    subject: refineText('subject', MAX_SUBJECT_CHARS),
    text: z.string({ error: 'text must be a string' }).optional(),
    html: z.string({ error: 'html must be a string' }).optional(),
    attachments: z.array(attachmentSchema, { error: 'attachments must be an array' }).max(MAX_ATTACHMENTS).optional(),
    headers: headersSchema.optional(),
  })
  .strict();

export type MessageInput = z.input<typeof messageInputSchema>;

export interface Address {
  address: string;
  name?: string;
}

export interface Attachment {
  filename: string;
  contentType?: string;
  content: Buffer;
}

/** A validated, normalised message, ready for the sender. */
export interface MailMessage {
  from: Address;
  to: Address[];
  cc: Address[];
  bcc: Address[];
  replyTo?: Address;
  subject: string;
  text?: string;
  html?: string;
  attachments: Attachment[];
  headers: Record<string, string>;
  /**
   * The Message-ID header, `<…>`. Set by the outbox at accept (from the message id), so that every copy of one
   * message carries the same one; when absent, nodemailer makes one per send.
   */
  messageId?: string;
}

/** Turns zod issues into field problems whose paths read like "to[1]" or "attachments[0].filename". */
export function fieldProblems(error: z.ZodError): FieldProblem[] {
  return error.issues.map((issue) => {
    const path = issue.path.reduce<string>(
      (acc, key) => (typeof key === 'number' ? `${acc}[${key}]` : acc ? `${acc}.${String(key)}` : String(key)),
      '',
    );
    return { path: path || '(body)', message: issue.message };
  });
}

/** All recipients of a message, in order. */
export function allRecipients(message: Pick<MailMessage, 'to' | 'cc' | 'bcc'>): Address[] {
  return [...message.to, ...message.cc, ...message.bcc];
}

/** Rough encoded size: base64 grows attachments by 4/3, and headers add a little. */
export function estimatedSize(message: MailMessage): number {
  const HEADER_ALLOWANCE_BYTES = 4096;
  const body = Buffer.byteLength(message.text ?? '') + Buffer.byteLength(message.html ?? '');
  const attachments = message.attachments.reduce((sum, a) => sum + Math.ceil((a.content.length * 4) / 3), 0);
  return HEADER_ALLOWANCE_BYTES + body * 2 + attachments;
}

/**
 * Validates and normalises `input`. `defaultFrom` is used when `from` is absent.
 * Throws MailError INVALID_MESSAGE whose `details` name every invalid field.
 */
export function parseMessage(
  input: unknown,
  options: { defaultFrom: string; maxRecipients: number; maxMessageBytes: number },
): MailMessage {
  const parsed = messageInputSchema.safeParse(input);
  if (!parsed.success) {
    const details = fieldProblems(parsed.error);
    throw new MailError(
      'INVALID_MESSAGE',
      `Invalid message: ${details.map((d) => `${d.path}: ${d.message}`).join('; ')}`,
      {
        details,
      },
    );
  }
  const m = parsed.data;
  const problems: FieldProblem[] = [];
  const message: MailMessage = {
    from: m.from ?? { address: options.defaultFrom },
    to: m.to ?? [],
    cc: m.cc ?? [],
    bcc: m.bcc ?? [],
    ...(m.replyTo ? { replyTo: m.replyTo } : {}),
    subject: m.subject,
    ...(m.text !== undefined ? { text: m.text } : {}),
    ...(m.html !== undefined ? { html: m.html } : {}),
    attachments: (m.attachments ?? []).map((a) => ({
      filename: a.filename,
      ...(a.contentType ? { contentType: a.contentType } : {}),
      content: Buffer.from(a.contentBase64, 'base64'),
    })),
    headers: m.headers ?? {},
  };
  const count = allRecipients(message).length;
  if (count === 0) problems.push({ path: 'to', message: 'at least one recipient is required in to, cc or bcc' });
  if (count > options.maxRecipients) {
    problems.push({ path: 'to', message: `at most ${options.maxRecipients} recipients per message (got ${count})` });
  }
  if (message.text === undefined && message.html === undefined && message.attachments.length === 0) {
    problems.push({ path: 'text', message: 'text or html is required' });
  }
  if (problems.length === 0 && estimatedSize(message) > options.maxMessageBytes) {
    problems.push({ path: 'attachments', message: `the message would exceed ${options.maxMessageBytes} bytes` });
  }
  if (problems.length > 0) {
    throw new MailError(
      'INVALID_MESSAGE',
      `Invalid message: ${problems.map((d) => `${d.path}: ${d.message}`).join('; ')}`,
      {
        details: problems,
      },
    );
  }
  return message;
}
