/** What the inbox's JSON API says about received messages: list entries and one message's details, every field bounded. */
import { decodeWords } from 'postal-mime';
import type PostalMime from 'postal-mime';
import type { CapturedEnvelope } from '../ingestion';
import type { ExchangeSmtpMessage, ExchangeSmtpRejection, ExchangeSmtpSession } from '../smtp/observation';

/** Most list entries one answer holds (the newest); older messages stay in the records. */
export const MAX_LIST_ENTRIES = 500;
/** Longest single field (a subject, a header value, a transcript line) in characters; longer ones are cut. */
export const MAX_FIELD_CHARS = 4_096;
/** Longest text part in characters. */
export const MAX_TEXT_CHARS = 512 * 1024;
const MAX_HEADERS = 300;
const MAX_ADDRESSES = 100;
const MAX_ATTACHMENTS = 200;
const MAX_TRANSCRIPT_LINES = 2_000;
const MAX_TELEMETRY_ITEMS = 200;
const MAX_PROPERTIES = 50;
const MAX_REJECTIONS = 100;
const TRUNCATION_MARK = '…';

/** `value` cut to `max` characters, marked when it was cut. */
export function bounded(value: string, max = MAX_FIELD_CHARS): string {
  return value.length <= max ? value : `${value.slice(0, max)}${TRUNCATION_MARK}`;
}

export interface MessageSummary {
  id: string;
  receivedAt: string;
  mailbox: string;
  from: string;
  to: string[];
  subject: string;
  sizeBytes: number;
  attachments: number;
}

export interface AttachmentView {
  index: number;
  filename: string;
  mimeType: string;
  sizeBytes: number;
  disposition: string;
  contentId?: string;
}

export interface TelemetryView {
  /** The custom event's name, or the envelope's type for anything else. */
  name: string;
  type: string;
  time: string;
  properties: Record<string, string>;
  measurements: Record<string, number>;
  operationId?: string;
}

export interface MessageDetail extends MessageSummary {
  messageId: string;
  envelope: { from: string; to: string[] };
  cc: string[];
  date: string;
  tlsVersion: string;
  authMethod: string;
  /** Every header in order: `value` as it arrived (unfolded), `decoded` with its encoded words (RFC 2047) decoded. */
  headers: Array<{ name: string; value: string; decoded: string }>;
  headersTruncated: boolean;
  text: string;
  hasHtml: boolean;
  attachmentList: AttachmentView[];
  session: {
    id: string;
    remotePort: number;
    startedAt: string;
    closedAt?: string;
    tlsVersion: string;
    authMethod: string;
    /** The redacted transcript of the SMTP session the message came in on (a pooled session may carry several). */
    transcript: string[];
    transcriptTruncated: boolean;
  } | null;
  /** Refusals (4xx/5xx) the server gave in that session. */
  rejections: Array<{ command: string; code: number; enhanced: string; text: string; at: string }>;
  /** Telemetry the app sent about this message, matched by its outbox id (see {@link telemetryForMessage}). */
  telemetry: TelemetryView[];
}

function iso(ms: number): string {
  return new Date(ms).toISOString();
}

/** `Name <address>`, the address alone, or the members of a group. */
function formatAddresses(addresses: PostalMime.Address[] | PostalMime.Address | undefined): string[] {
  const list = addresses === undefined ? [] : Array.isArray(addresses) ? addresses : [addresses];
  const out: string[] = [];
  for (const address of list) {
    const members = address.group ?? [address];
    for (const m of members) out.push(bounded(m.name ? `${m.name} <${m.address ?? ''}>` : (m.address ?? '')));
    if (out.length >= MAX_ADDRESSES) break;
  }
  return out.slice(0, MAX_ADDRESSES);
}

function contentSize(content: PostalMime.Attachment['content']): number {
  if (typeof content === 'string') return Buffer.byteLength(content);
  return content.byteLength;
}

/** One message as the list shows it. */
export function messageSummary(message: ExchangeSmtpMessage): MessageSummary {
  const { parsed } = message;
  const from = formatAddresses(parsed.from)[0] ?? bounded(message.envelope.from);
  const to = formatAddresses(parsed.to);
  return {
    id: message.id,
    receivedAt: iso(message.receivedAt),
    mailbox: bounded(message.mailbox),
    from,
    to: to.length > 0 ? to : message.envelope.to.slice(0, MAX_ADDRESSES).map((a) => bounded(a)),
    subject: bounded(parsed.subject ?? ''),
    sizeBytes: message.raw.length,
    attachments: parsed.attachments.length,
  };
}

/** The newest `limit` messages first (at most {@link MAX_LIST_ENTRIES}). */
export function messageList(messages: readonly ExchangeSmtpMessage[], limit = MAX_LIST_ENTRIES): MessageSummary[] {
  const count = Math.max(1, Math.min(MAX_LIST_ENTRIES, Math.floor(limit) || MAX_LIST_ENTRIES));
  return messages.slice(-count).reverse().map(messageSummary);
}

/** The local part of a Message-ID (`<local@domain>`), lower-cased: what the app derives from its outbox id. */
export function messageIdLocalPart(messageId: string | undefined): string {
  const bare = (messageId ?? '').trim().replace(/^<|>$/g, '');
  const at = bare.lastIndexOf('@');
  return (at >= 0 ? bare.slice(0, at) : bare).toLowerCase();
}

/**
 * The telemetry items about a message. The app's events carry the outbox id (`properties.id`) and never an address
 * or a Message-ID, while the Message-ID it sends is `<local part of the id@domain>` (the id itself, or the 32 hex
 * digits after the `~` of a batch message's id): an event belongs to the message whose Message-ID local part equals
 * its id's.
 */
export function telemetryForMessage(message: ExchangeSmtpMessage, items: readonly CapturedEnvelope[]): TelemetryView[] {
  const local = messageIdLocalPart(message.parsed.messageId);
  if (!local) return [];
  const out: TelemetryView[] = [];
  for (const item of items) {
    const base = item.data.baseData;
    const properties = base.properties && typeof base.properties === 'object' ? base.properties : {};
    const id = (properties as Record<string, unknown>).id;
    if (typeof id !== 'string') continue;
    const idLocal = id.slice(id.lastIndexOf('~') + 1).toLowerCase();
    if (idLocal !== local) continue;
    out.push(telemetryView(item));
    if (out.length >= MAX_TELEMETRY_ITEMS) break;
  }
  return out;
}

function telemetryView(item: CapturedEnvelope): TelemetryView {
  const base = item.data.baseData;
  const properties: Record<string, string> = {};
  const measurements: Record<string, number> = {};
  for (const [k, v] of Object.entries((base.properties ?? {}) as Record<string, unknown>).slice(0, MAX_PROPERTIES)) {
    properties[bounded(k, 200)] = bounded(typeof v === 'string' ? v : JSON.stringify(v));
  }
  for (const [k, v] of Object.entries((base.measurements ?? {}) as Record<string, unknown>).slice(0, MAX_PROPERTIES)) {
    if (typeof v === 'number') measurements[bounded(k, 200)] = v;
  }
  const operationId = item.tags['ai.operation.id'];
  return {
    name: bounded(typeof base.name === 'string' ? base.name : item.name, 200),
    type: bounded(item.data.baseType, 200),
    time: bounded(item.time, 100),
    properties,
    measurements,
    ...(operationId ? { operationId: bounded(operationId, 200) } : {}),
  };
}

function sessionView(session: ExchangeSmtpSession | undefined): MessageDetail['session'] {
  if (!session) return null;
  const lines = session.transcript.slice(0, MAX_TRANSCRIPT_LINES).map((line) => bounded(line));
  return {
    id: session.id,
    remotePort: session.remotePort,
    startedAt: iso(session.startedAt),
    ...(session.closedAt !== undefined ? { closedAt: iso(session.closedAt) } : {}),
    tlsVersion: session.tlsVersion ?? '',
    authMethod: session.authMethod ?? '',
    transcript: lines,
    transcriptTruncated: session.transcript.length > lines.length,
  };
}

/** A header value with its encoded words decoded by postal-mime; the value as it is when they do not decode. */
function decodedHeader(value: string): string {
  try {
    return decodeWords(value);
  } catch {
    return value;
  }
}

/** What the records hold about a message, for the detail view. */
export interface MessageRecords {
  sessions: readonly ExchangeSmtpSession[];
  rejections: readonly ExchangeSmtpRejection[];
  telemetry: readonly CapturedEnvelope[];
}

/** Everything the detail view shows about `message`, bounded. */
export function messageDetail(message: ExchangeSmtpMessage, records: MessageRecords): MessageDetail {
  const { parsed } = message;
  const headers = parsed.headers.slice(0, MAX_HEADERS).map((h) => ({
    name: bounded(h.originalKey, 200),
    value: bounded(h.value),
    decoded: bounded(decodedHeader(h.value)),
  }));
  return {
    ...messageSummary(message),
    messageId: bounded(parsed.messageId ?? ''),
    envelope: {
      from: bounded(message.envelope.from),
      to: message.envelope.to.slice(0, MAX_ADDRESSES).map((a) => bounded(a)),
    },
    cc: formatAddresses(parsed.cc),
    date: bounded(parsed.date ?? '', 200),
    tlsVersion: message.tlsVersion ?? '',
    authMethod: message.authMethod,
    headers,
    headersTruncated: parsed.headers.length > headers.length,
    text: bounded(parsed.text ?? '', MAX_TEXT_CHARS),
    hasHtml: typeof parsed.html === 'string' && parsed.html.length > 0,
    attachmentList: parsed.attachments.slice(0, MAX_ATTACHMENTS).map((a, index) => ({
      index,
      filename: bounded(a.filename ?? '', 500),
      mimeType: bounded(a.mimeType, 200),
      sizeBytes: contentSize(a.content),
      disposition: bounded(a.disposition ?? '', 100),
      ...(a.contentId ? { contentId: bounded(a.contentId, 500) } : {}),
    })),
    session: sessionView(records.sessions.find((s) => s.id === message.sessionId)),
    rejections: records.rejections
      .filter((r) => r.sessionId === message.sessionId)
      .slice(-MAX_REJECTIONS)
      .map((r) => ({
        command: r.command,
        code: r.code,
        enhanced: r.enhanced ?? '',
        text: bounded(r.text),
        at: iso(r.at),
      })),
    telemetry: telemetryForMessage(message, records.telemetry),
  };
}
