/** The outgoing message: its schema, normalisation and the header-injection rules, checked where the input is assigned. */
import { z } from 'zod';
import type { FieldProblem } from './errors';
import { formatPath, invalidInput, type PathSegment } from './inputBounds';

/** Limits that keep a single field from being abusive; the whole message is bounded by MAIL_MAX_MESSAGE_BYTES. */
export const MAX_SUBJECT_CHARS = 998;
export const MAX_ADDRESS_CHARS = 320;
export const MAX_NAME_CHARS = 256;
export const MAX_HEADERS = 50;
export const MAX_HEADER_VALUE_CHARS = 998;
export const MAX_ATTACHMENTS = 100;
export const MAX_FILENAME_CHARS = 255;
/** type/subtype names are at most 127 characters each (RFC 6838). */
export const MAX_CONTENT_TYPE_CHARS = 255;
/**
 * The longest contentBase64 looked at: Exchange Online's largest configurable message (150 MB), base64-grown by 4/3
 * and with a line break every 76 characters. The body cap (MAIL_MAX_MESSAGE_BYTES) is normally far lower.
 */
export const MAX_BASE64_CHARS = Math.ceil(((150 * 1024 * 1024 * 4) / 3) * (78 / 76));
/** Upper bound on a recipient list before the recipient limit is even checked. */
export const MAX_LIST_ENTRIES = 1000;

/** Control characters, CR and LF above all, that would let a value start a new header line. */
const CONTROL_CHARS = /[\u0000-\u0008\u000a-\u001f\u007f]/;
/** One part of an address (local part, domain): no whitespace, no @, no characters that need quoting. */
const ADDRESS_PART = /^[^\s@<>()",;:\\[\]]+$/;
/** At most 78 characters are looked at, whatever the name's length. */
const HEADER_NAME = /^X-[A-Za-z0-9-]{1,76}$/;
/** Headers Exchange Online writes itself (transport, anti-spam, Forefront): a caller must not be able to forge them. */
const RESERVED_HEADER = /^X-(?:MS-Exchange-|Microsoft-Antispam|Forefront-)/i;
/** A display name may not hold these outside its surrounding quotes (it would end the name or start the address). */
const NAME_SPECIALS = /["<>]/;
/** base64 before the padding, and the padding (at most two "=", then line breaks only). Single classes: linear. */
const BASE64_BODY = /^[A-Za-z0-9+/\r\n]*$/;
const BASE64_PADDING = /^={0,2}[\r\n]*$/;
/** type/subtype: neither class holds the "/", so each `+` ends where the next part must start (no backtracking). */
const CONTENT_TYPE = /^[a-z0-9!#$&^_.+-]+\/[a-z0-9!#$&^_.+-]+$/i;

/**
 * True for `local@domain.tld`: one @, a non-empty local part, and a domain with a dot that is neither its first nor
 * its last character; no whitespace or specials anywhere. (It replaces a regex whose `[^…]+\.[^…]+` over classes
 * that both hold the dot backtracked quadratically.) Callers check the length first.
 */
export function isEmailAddress(value: string): boolean {
  const at = value.indexOf('@');
  if (at < 1 || at !== value.lastIndexOf('@')) return false;
  const local = value.slice(0, at);
  const domain = value.slice(at + 1);
  return ADDRESS_PART.test(local) && ADDRESS_PART.test(domain) && domain.slice(1, -1).includes('.');
}

/**
 * Splits `Name <address>` (the name optional, optionally in double quotes) at its last `<`, without a regex: the
 * old one had nested quantifiers over whitespace and took minutes on 1,000 entries of spaces. Returns undefined when
 * the value is not in that form (then it must be a bare address). `value` is already trimmed.
 */
function splitNamedAddress(value: string): { name: string; address: string } | undefined {
  if (!value.endsWith('>')) return undefined;
  const open = value.lastIndexOf('<');
  if (open < 0) return undefined;
  let name = value.slice(0, open).trim();
  if (name.startsWith('"')) name = name.slice(1);
  if (name.endsWith('"')) name = name.slice(0, -1);
  if (NAME_SPECIALS.test(name)) return undefined;
  return { name: name.trim(), address: value.slice(open + 1, -1) };
}

/** True when `value` is valid base64 as attachments carry it: line breaks allowed anywhere before the padding. */
function isBase64(value: string): boolean {
  const pad = value.indexOf('=');
  if (pad < 0) return BASE64_BODY.test(value);
  return BASE64_BODY.test(value.slice(0, pad)) && BASE64_PADDING.test(value.slice(pad));
}

const noControl = (what: string) => (value: string) =>
  !CONTROL_CHARS.test(value) || `${what} must not contain CR, LF or other control characters`;

function refineText(what: string, max: number) {
  return z
    .string({ error: `${what} must be a string` })
    .max(max, { error: `${what} must be at most ${max} characters`, abort: true })
    .refine((v) => noControl(what)(v) === true, {
      error: `${what} must not contain CR, LF or other control characters`,
    });
}

/** Parses "a@example.com", "Bee <b@example.com>" or { address, name } into an Address, or explains why not. */
function toAddress(value: unknown): Address | string {
  if (typeof value === 'string') {
    if (value.length > MAX_ADDRESS_CHARS + MAX_NAME_CHARS) return 'is too long';
    if (CONTROL_CHARS.test(value)) return 'must not contain CR, LF or other control characters';
    const trimmed = value.trim();
    const named = splitNamedAddress(trimmed);
    const address = named ? named.address : trimmed;
    const name = named?.name || undefined;
    if (address.length > MAX_ADDRESS_CHARS || !isEmailAddress(address))
      return `is not a valid email address ("${value.slice(0, 80)}")`;
    return { address, ...(name ? { name } : {}) };
  }
  if (value && typeof value === 'object' && !Array.isArray(value)) {
    const { address, name, ...rest } = value as Record<string, unknown>;
    const unknown = Object.keys(rest);
    if (unknown.length) return `has unknown field(s) ${unknown.join(', ')}: only address and name are accepted`;
    if (typeof address !== 'string') return 'address must be a string';
    // The length first: nothing else looks at an address longer than any valid one.
    if (address.length > MAX_ADDRESS_CHARS) return 'address is not a valid email address';
    if (CONTROL_CHARS.test(address)) return 'address must not contain CR, LF or other control characters';
    if (!isEmailAddress(address.trim())) return 'address is not a valid email address';
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

/**
 * An array of `element`s whose length is checked before any element is: zod's own `.max()` parses every element
 * first, so a body of 500,000 attachments would produce 500,000 issues before the bound said no.
 */
function boundedArray<T extends z.ZodType>(element: T, max: number, what: string) {
  return z
    .unknown()
    .superRefine((value, ctx) => {
      if (Array.isArray(value) && value.length > max)
        ctx.addIssue({ code: 'custom', message: `at most ${max} ${what}` });
    })
    .pipe(z.array(element, { error: `${what} must be an array` }));
}

export const attachmentSchema = z
  .object({
    filename: refineText('filename', MAX_FILENAME_CHARS).min(1, { error: 'filename must not be empty' }),
    contentType: z
      .string({ error: 'contentType must be a string' })
      .max(MAX_CONTENT_TYPE_CHARS, {
        error: `contentType must be at most ${MAX_CONTENT_TYPE_CHARS} characters`,
        abort: true,
      })
      .regex(CONTENT_TYPE, { error: 'contentType must be a MIME type such as application/pdf' })
      .optional(),
    contentBase64: z
      .string({ error: 'contentBase64 must be a base64 string' })
      .max(MAX_BASE64_CHARS, { error: `contentBase64 must be at most ${MAX_BASE64_CHARS} characters`, abort: true })
      .refine(isBase64, { error: 'contentBase64 must be valid base64' }),
  })
  .strict();

const headerRecordSchema = z
  .record(z.string(), refineText('header value', MAX_HEADER_VALUE_CHARS), {
    error: 'headers must be an object of X- header names to string values',
  })
  .superRefine((headers, ctx) => {
    // Lower-cased name → the name as first given: header names are case-insensitive, so X-Order and x-ORDER would
    // be the same header given twice.
    const seen = new Map<string, string>();
    for (const name of Object.keys(headers)) {
      if (!HEADER_NAME.test(name)) {
        ctx.addIssue({
          code: 'custom',
          path: [name],
          message: 'only X- headers are accepted (letters, digits and dashes)',
        });
        continue;
      }
      if (RESERVED_HEADER.test(name)) {
        ctx.addIssue({
          code: 'custom',
          path: [name],
          message:
            'X-MS-Exchange-*, X-Microsoft-Antispam* and X-Forefront-* headers are written by Exchange Online itself and cannot be given',
        });
        continue;
      }
      const first = seen.get(name.toLowerCase());
      if (first !== undefined) {
        ctx.addIssue({
          code: 'custom',
          path: [name],
          message: `differs from ${first} only in case: header names are case-insensitive, give each header once`,
        });
      } else {
        seen.set(name.toLowerCase(), name);
      }
    }
  });

/** `headers`: counted before any name or value is looked at, then each checked. */
export const headersSchema = z
  .unknown()
  .superRefine((value, ctx) => {
    if (value !== null && typeof value === 'object' && !Array.isArray(value) && Object.keys(value).length > MAX_HEADERS)
      ctx.addIssue({ code: 'custom', message: `at most ${MAX_HEADERS} headers` });
  })
  .pipe(headerRecordSchema);

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
    attachments: boundedArray(attachmentSchema, MAX_ATTACHMENTS, 'attachments').optional(),
    headers: headersSchema.optional(),
  })
  .strict();

export type MessageInput = z.input<typeof messageInputSchema>;

/** Where a message came from: the HTTP API, a notification batch, or the command line (sent inline). */
export const MAIL_SOURCES = ['http', 'notification', 'digest', 'cli'] as const;
export type MailSource = (typeof MAIL_SOURCES)[number];
/** The sources whose messages go through the outbox (the CLI sends inline). */
export type OutboxSource = Exclude<MailSource, 'cli'>;

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
  return error.issues.map((issue) => ({
    // Keys are shortened (formatPath): a header name or an unknown field may be megabytes long.
    path: formatPath(issue.path.map((key): PathSegment => (typeof key === 'number' ? key : String(key)))),
    message: issue.message,
  }));
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
  if (!parsed.success) throw invalidInput('Invalid message', fieldProblems(parsed.error));
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
  if (problems.length > 0) throw invalidInput('Invalid message', problems);
  return message;
}
