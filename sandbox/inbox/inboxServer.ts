/**
 * The sandbox's inbox (like Mailpit or smtp4dev): an HTTP page on loopback listing what the sandbox's Exchange
 * accepted, live, with each message's HTML in a sandboxed frame, its text, headers, attachments, the redacted SMTP
 * transcript and the telemetry about it, and a pacing view of each mailbox against its limits.
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { IngestionCapture } from '../ingestion';
import { LOOPBACK_HOST, closeServer, listenOnLoopback, sendJson } from '../httpServer';
import type { ExchangeSmtpServer } from '../smtp/server';
import { contentDisposition } from './contentDisposition';
import { messageDocumentCsp, rewriteCidReferences } from './messageDocument';
import { messageDetail, messageList, MAX_LIST_ENTRIES } from './messageViews';
import { INBOX_CSS, INBOX_HTML, INBOX_PAGE_CSP, INBOX_SCRIPT } from './page';
import { pacingView } from './pacingView';

/** A comment on the event stream this often keeps proxies and the browser from calling it idle. */
const HEARTBEAT_MS = 15_000;
/** How often the telemetry capture is checked for new items (it announces none). */
const TELEMETRY_POLL_MS = 500;
/** Open event streams at most; the next one is answered 503 (each is a socket the sandbox holds). */
const MAX_STREAMS = 32;
/** Message ids are the SMTP server's 16 hex digits. */
const MESSAGE_ID = /^[0-9a-f]{16}$/;
/** A MIME type as it may go in a Content-Type header; anything else is served as application/octet-stream. */
const MIME_TYPE = /^[a-z0-9][a-z0-9!#$&^_.+-]{0,126}\/[a-z0-9][a-z0-9!#$&^_.+-]{0,126}$/;

/** Headers on every answer: nothing cached, nothing sniffed, no referrer leaves. */
const COMMON_HEADERS = {
  'cache-control': 'no-store',
  'x-content-type-options': 'nosniff',
  'referrer-policy': 'no-referrer',
} as const;

export interface InboxOptions {
  smtp: ExchangeSmtpServer;
  ingestion: IngestionCapture;
}

export interface InboxServer {
  /** `http://127.0.0.1:PORT/` */
  url: string;
  port: number;
  close(): Promise<void>;
}

function send(response: ServerResponse, status: number, body: string | Buffer, headers: Record<string, string>): void {
  const bytes = typeof body === 'string' ? Buffer.from(body, 'utf8') : body;
  response.writeHead(status, { ...COMMON_HEADERS, 'content-length': String(bytes.length), ...headers });
  response.end(bytes);
}

function notFound(response: ServerResponse, what: string): void {
  sendJson(response, 404, { error: `${what} not found` }, COMMON_HEADERS);
}

/** The attachment's bytes, whatever form postal-mime gave them in. */
function attachmentBytes(content: ArrayBuffer | Uint8Array | string, encoding: string | undefined): Buffer {
  if (typeof content === 'string') return Buffer.from(content, encoding === 'base64' ? 'base64' : 'utf8');
  return content instanceof Uint8Array ? Buffer.from(content) : Buffer.from(new Uint8Array(content));
}

/** Starts the inbox on 127.0.0.1 and a free port, reading `smtp`'s records and `ingestion`'s items as they grow. */
export async function startInbox(options: InboxOptions): Promise<InboxServer> {
  const { smtp, ingestion } = options;
  const streams = new Set<ServerResponse>();
  let origin = '';

  const broadcast = (event: string) => {
    for (const stream of streams) stream.write(`event: ${event}\ndata: {}\n\n`);
  };
  const onMessage = () => broadcast('received');
  const onRefusal = () => broadcast('refused');
  smtp.on('message', onMessage);
  smtp.on('rejection', onRefusal);
  smtp.on('violation', onRefusal);
  let telemetrySeen = ingestion.items.length;
  const telemetryPoll = setInterval(() => {
    if (ingestion.items.length === telemetrySeen) return;
    telemetrySeen = ingestion.items.length;
    broadcast('telemetry');
  }, TELEMETRY_POLL_MS);
  telemetryPoll.unref();
  const heartbeat = setInterval(() => {
    for (const stream of streams) stream.write(': heartbeat\n\n');
  }, HEARTBEAT_MS);
  heartbeat.unref();

  const findMessage = (id: string | undefined) =>
    id !== undefined && MESSAGE_ID.test(id) ? smtp.messages.find((m) => m.id === id) : undefined;

  const openStream = (request: IncomingMessage, response: ServerResponse) => {
    if (streams.size >= MAX_STREAMS) {
      sendJson(response, 503, { error: `at most ${MAX_STREAMS} event streams` }, COMMON_HEADERS);
      return;
    }
    response.writeHead(200, {
      ...COMMON_HEADERS,
      'content-type': 'text/event-stream; charset=utf-8',
      connection: 'keep-alive',
    });
    response.write('retry: 1000\n\n');
    streams.add(response);
    request.on('close', () => streams.delete(response));
  };

  const handle = (request: IncomingMessage, response: ServerResponse) => {
    // Only the addresses it listens on: a page elsewhere that rebinds a name of its own to 127.0.0.1 gets nothing.
    const host = request.headers.host ?? '';
    if (host !== `${LOOPBACK_HOST}:${port}` && host !== `localhost:${port}`) {
      sendJson(response, 421, { error: 'unknown host' }, COMMON_HEADERS);
      return;
    }
    if (request.method !== 'GET' && request.method !== 'HEAD') {
      sendJson(response, 405, { error: 'the inbox is read-only' }, { ...COMMON_HEADERS, allow: 'GET, HEAD' });
      return;
    }
    const url = new URL(request.url ?? '/', origin);
    const parts = url.pathname.split('/').filter(Boolean);

    if (url.pathname === '/') {
      send(response, 200, INBOX_HTML, {
        'content-type': 'text/html; charset=utf-8',
        'content-security-policy': INBOX_PAGE_CSP,
      });
      return;
    }
    if (url.pathname === '/inbox.js') {
      send(response, 200, INBOX_SCRIPT, { 'content-type': 'text/javascript; charset=utf-8' });
      return;
    }
    if (url.pathname === '/inbox.css') {
      send(response, 200, INBOX_CSS, { 'content-type': 'text/css; charset=utf-8' });
      return;
    }
    if (url.pathname === '/api/events') {
      if (request.method === 'GET') openStream(request, response);
      else send(response, 200, '', { 'content-type': 'text/event-stream; charset=utf-8' });
      return;
    }
    if (url.pathname === '/api/pacing') {
      sendJson(response, 200, pacingView(smtp), COMMON_HEADERS);
      return;
    }
    if (url.pathname === '/api/messages') {
      const limit = Number(url.searchParams.get('limit') ?? MAX_LIST_ENTRIES);
      sendJson(response, 200, messageList(smtp.messages, limit), COMMON_HEADERS);
      return;
    }
    if (parts[0] !== 'api' || parts[1] !== 'messages' || parts.length < 3 || parts.length > 5) {
      notFound(response, 'page');
      return;
    }
    const message = findMessage(parts[2]);
    if (!message) {
      notFound(response, 'message');
      return;
    }
    const messageUrl = `${origin}/api/messages/${message.id}`;
    const sub = parts[3];
    if (sub === undefined) {
      const detail = messageDetail(message, {
        sessions: smtp.sessions,
        rejections: smtp.rejections,
        telemetry: ingestion.items,
      });
      sendJson(response, 200, detail, COMMON_HEADERS);
      return;
    }
    if (sub === 'transcript' && parts.length === 4) {
      const { session, rejections } = messageDetail(message, {
        sessions: smtp.sessions,
        rejections: smtp.rejections,
        telemetry: [],
      });
      sendJson(response, 200, { session, rejections }, COMMON_HEADERS);
      return;
    }
    if (sub === 'html' && parts.length === 4) {
      const html = rewriteCidReferences(
        message.parsed.html ?? '',
        message.parsed.attachments,
        (index) => `${messageUrl}/attachments/${index}`,
      );
      send(response, 200, html, {
        'content-type': 'text/html; charset=utf-8',
        'content-security-policy': messageDocumentCsp(origin),
      });
      return;
    }
    if (sub === 'raw' && parts.length === 4) {
      send(response, 200, message.raw, {
        'content-type': 'message/rfc822',
        'content-disposition': contentDisposition(`${message.id}.eml`),
        'content-security-policy': "default-src 'none'; sandbox",
      });
      return;
    }
    if (sub === 'attachments' && parts.length === 5 && /^\d{1,4}$/.test(parts[4] ?? '')) {
      const attachment = message.parsed.attachments[Number(parts[4])];
      if (!attachment) {
        notFound(response, 'attachment');
        return;
      }
      const type = MIME_TYPE.test(attachment.mimeType) ? attachment.mimeType : 'application/octet-stream';
      send(response, 200, attachmentBytes(attachment.content, attachment.encoding), {
        'content-type': type,
        'content-disposition': contentDisposition(attachment.filename),
        // Opened on its own (an HTML or SVG attachment), it still runs nothing and loads nothing.
        'content-security-policy': "default-src 'none'; style-src 'unsafe-inline'; sandbox",
        // The message document's frame has an opaque origin: its cid: images are cross-origin requests.
        'cross-origin-resource-policy': 'cross-origin',
      });
      return;
    }
    notFound(response, 'page');
  };

  const server: Server = createServer((request, response) => {
    try {
      handle(request, response);
    } catch (error) {
      if (!response.headersSent) {
        sendJson(response, 500, { error: error instanceof Error ? error.message : String(error) }, COMMON_HEADERS);
      } else response.destroy();
    }
  });
  const port = await listenOnLoopback(server);
  origin = `http://${LOOPBACK_HOST}:${port}`;

  return {
    url: `${origin}/`,
    port,
    async close() {
      clearInterval(telemetryPoll);
      clearInterval(heartbeat);
      smtp.off('message', onMessage);
      smtp.off('rejection', onRefusal);
      smtp.off('violation', onRefusal);
      for (const stream of streams) stream.end();
      streams.clear();
      await closeServer(server);
    },
  };
}
