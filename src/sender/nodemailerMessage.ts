/** The adapter between the app's MailMessage and nodemailer: the message it sends, and what its answer says. */
import type { SmtpReply } from '../errors';
import { allRecipients, type Address, type MailMessage } from '../message';
import { parseSmtpReply } from './classify';

/** What nodemailer resolves sendMail with (the parts read here). */
export interface SentInfo {
  messageId?: unknown;
  response?: unknown;
  accepted?: unknown;
  rejected?: unknown;
  rejectedErrors?: RecipientError[];
}

interface RecipientError {
  recipient?: string;
  response?: string;
  responseCode?: number;
}

/** A recipient the server refused while it accepted the message for others. */
export interface RefusedRecipient {
  address: string;
  smtp?: SmtpReply;
}

function toNodemailerAddress(a: Address): { name: string; address: string } | string {
  return a.name ? { name: a.name, address: a.address } : a.address;
}

/** The nodemailer message for `message`: the envelope sender is the From address; no file or URL access. */
export function toNodemailerMessage(message: MailMessage) {
  return {
    from: toNodemailerAddress(message.from),
    sender: undefined,
    to: message.to.map(toNodemailerAddress),
    cc: message.cc.map(toNodemailerAddress),
    bcc: message.bcc.map(toNodemailerAddress),
    ...(message.replyTo ? { replyTo: toNodemailerAddress(message.replyTo) } : {}),
    subject: message.subject,
    ...(message.text !== undefined ? { text: message.text } : {}),
    ...(message.html !== undefined ? { html: message.html } : {}),
    attachments: message.attachments.map((a) => ({
      filename: a.filename,
      content: a.content,
      ...(a.contentType ? { contentType: a.contentType } : {}),
    })),
    headers: message.headers,
    ...(message.messageId ? { messageId: message.messageId } : {}),
    envelope: { from: message.from.address, to: allRecipients(message).map((r) => r.address) },
    disableFileAccess: true,
    disableUrlAccess: true,
  };
}

const addressesOf = (list: unknown): string[] =>
  (Array.isArray(list) ? (list as Array<string | { address: string }>) : []).map((a) =>
    typeof a === 'string' ? a : a.address,
  );

/** What the server answered: the message id, the 250 reply, who got it, and who was refused with which reply. */
export function readSentInfo(info: SentInfo): {
  messageId: string;
  smtp: { code: number; response: string };
  accepted: string[];
  rejected: string[];
  refused: RefusedRecipient[];
} {
  // nodemailer's SMTP transports give both as strings.
  const reply = typeof info.response === 'string' ? info.response : '';
  const rejected = addressesOf(info.rejected);
  return {
    messageId: typeof info.messageId === 'string' ? info.messageId : '',
    smtp: { code: Number(/^\d{3}/.exec(reply)?.[0] ?? 250), response: reply },
    accepted: addressesOf(info.accepted),
    rejected,
    refused: rejected.map((address) => {
      const error = info.rejectedErrors?.find((e) => e.recipient?.toLowerCase() === address.toLowerCase());
      const smtp = error?.response ? parseSmtpReply(error.response, error.responseCode) : undefined;
      return { address, ...(smtp ? { smtp } : {}) };
    }),
  };
}
