/**
 * A rendered outbox message as stored: one JSON text, kept inline in its status record when it is small (split over
 * string properties `content0…contentN`) and in a payload blob (`mail-payloads/<id>.json`) when it is not.
 */
import type { MailMessage } from '../message';
import { MAX_STRING_PROPERTY_CHARS } from '../storage/entityFields';

const FORMAT_VERSION = 1;

/** What the worker needs to send: the validated, rendered message. */
export interface StoredMessage {
  message: MailMessage;
}

/**
 * Content up to this many characters of JSON is kept in the record: two string properties. A larger one (big
 * attachments, a huge rendered template) goes to a blob, so that every write of the record (lease, renewal, outcome)
 * stays small; the largest message (MAIL_MAX_MESSAGE_BYTES, attachments base64-encoded) would not fit an entity
 * (1 MiB) anyway.
 */
export const INLINE_CONTENT_MAX_CHARS = 2 * MAX_STRING_PROPERTY_CHARS;

interface ContentJson {
  version: number;
  message: Omit<MailMessage, 'attachments'> & {
    attachments: Array<{ filename: string; contentType?: string; contentBase64: string }>;
  };
}

/** The message as JSON text (attachments base64-encoded): the same document inline and in a blob. */
export function serializeMessage(stored: StoredMessage): string {
  const { message } = stored;
  const json: ContentJson = {
    version: FORMAT_VERSION,
    message: {
      ...message,
      attachments: message.attachments.map((a) => ({
        filename: a.filename,
        ...(a.contentType ? { contentType: a.contentType } : {}),
        contentBase64: a.content.toString('base64'),
      })),
    },
  };
  // U+2028 and U+2029 escaped (the same JSON value): some readers of a Table transaction's multipart body take them
  // for line ends.
  return JSON.stringify(json).replace(/[\u2028\u2029]/g, (c) => `\\u${c.charCodeAt(0).toString(16)}`);
}

/** Parses {@link serializeMessage}'s text. Throws a SyntaxError (not a storage error) when it is not JSON. */
export function parseMessage(text: string): StoredMessage {
  const { message } = JSON.parse(text) as ContentJson;
  return {
    message: {
      ...message,
      attachments: message.attachments.map((a) => ({
        filename: a.filename,
        ...(a.contentType ? { contentType: a.contentType } : {}),
        content: Buffer.from(a.contentBase64, 'base64'),
      })),
    },
  };
}

/**
 * Cuts `text` into parts of at most `partChars` UTF-16 code units, never between the two halves of a surrogate
 * pair: a lone half would be written as U+FFFD and the text would come back changed.
 */
export function splitContent(text: string, partChars = MAX_STRING_PROPERTY_CHARS): string[] {
  const parts: string[] = [];
  let start = 0;
  while (start < text.length) {
    let end = Math.min(text.length, start + partChars);
    const last = text.charCodeAt(end - 1);
    if (end < text.length && last >= 0xd800 && last <= 0xdbff) end -= 1;
    parts.push(text.slice(start, end));
    start = end;
  }
  return parts;
}
