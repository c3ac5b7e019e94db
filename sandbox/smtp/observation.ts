/** What the SMTP server records for the tests and the inbox page: sessions with redacted transcripts, messages, refusals, limits gone over, faults used. */
import type { EventEmitter } from 'node:events';
import type PostalMime from 'postal-mime';
import type { AuthOutcome, SmtpAuthMethod } from './auth';
import type { Clock } from './mailboxLimits';
import { ENHANCED_CODE } from './replies';

/** One AUTH attempt; never holds the token or password. */
export interface ExchangeSmtpAuthAttempt {
  sessionId: string;
  at: number;
  method: string;
  /** The `user=` of XOAUTH2 or the LOGIN user name. */
  user: string;
  ok: boolean;
  outcome: AuthOutcome;
  /** The reply sent, e.g. `535 5.7.3 Authentication unsuccessful [...]`. */
  reply: string;
  /** From the token, when it verified. */
  appId?: string;
  objectId?: string;
  roles?: string[];
}

/** One SMTP session, as the inbox page and the tests see it. */
export interface ExchangeSmtpSession {
  id: string;
  remoteAddress: string;
  /** The client's TCP port: tells which client process a session belonged to. */
  remotePort: number;
  startedAt: number;
  closedAt?: number;
  open: boolean;
  startedTls: boolean;
  /** Negotiated protocol, e.g. 'TLSv1.3'; undefined while in plaintext. */
  tlsVersion?: string | undefined;
  /** The client sent AUTH before STARTTLS (it was refused, but the credentials may have left in clear). */
  authBeforeTls: boolean;
  /** The authenticated mailbox. */
  user?: string;
  authMethod?: SmtpAuthMethod;
  authenticatedAt?: number;
  /** Why the connection failed, when it did (e.g. a refused TLS version). */
  error?: string;
  /** `C: …` / `S: …` lines; AUTH payloads, tokens and passwords appear only as [redacted]. */
  transcript: string[];
}

/**
 * One thing a client sent, exactly as the server received it: nothing redacted. Test-only, for the secret scans (a
 * token in MAIL FROM, a header or a line before STARTTLS must be caught, and the redacted transcript would hide it).
 * Kept apart from the sessions so that nothing that shows sessions (an inbox page) can show these.
 */
export interface ExchangeSmtpReceived {
  sessionId: string;
  /** The session was under TLS (after STARTTLS) when this arrived. */
  secure: boolean;
  /**
   * `auth`: an AUTH command (with its initial response) or a line answering the server within an AUTH exchange;
   * `data`: the message content after DATA (dot-unstuffed, as smtp-server hands it over); `command`: any other line.
   */
  kind: 'command' | 'auth' | 'data';
  text: string;
}

/** A message Exchange accepted (250 after DATA). */
export interface ExchangeSmtpMessage {
  id: string;
  sessionId: string;
  /** The authenticated mailbox. */
  mailbox: string;
  authMethod: SmtpAuthMethod;
  envelope: { from: string; to: string[] };
  raw: Buffer;
  parsed: PostalMime.Email;
  receivedAt: number;
  tlsVersion: string | undefined;
}

/** Any 4xx/5xx reply the server sent. */
export interface ExchangeSmtpRejection {
  sessionId: string;
  mailbox?: string | undefined;
  /** The verb being answered ('CONNECT' for the greeting, 'DATA' for the end of the message). */
  command: string;
  code: number;
  enhanced?: string | undefined;
  text: string;
  at: number;
}

/** A fault knob that took effect: which knob, on which session and command (the fault suite counts these). */
export interface ExchangeSmtpInjection {
  kind: 'reply421' | 'reply421OnCommand' | 'force432' | 'logonFailure430' | 'dropMidData' | 'delay';
  sessionId: string;
  /** The verb it hit ('CONNECT' for the greeting, 'DATA' for a drop mid-message). */
  command: string;
  at: number;
}

/** A limit that a client went over. */
export type ExchangeSmtpViolation =
  | { kind: 'rate'; mailbox: string; at: number; count: number; limit: number; windowMs: number }
  | { kind: 'connections'; mailbox: string; at: number; count: number; limit: number };

/** What the records announce: the server emits each as it is recorded. */
export interface SmtpRecordEvents {
  message: [ExchangeSmtpMessage];
  rejection: [ExchangeSmtpRejection];
  violation: [ExchangeSmtpViolation];
}

const SMTP_VERBS = new Set([
  'EHLO',
  'HELO',
  'LHLO',
  'MAIL',
  'RCPT',
  'DATA',
  'RSET',
  'NOOP',
  'QUIT',
  'VRFY',
  'EXPN',
  'HELP',
  'STARTTLS',
  'AUTH',
  'BDAT',
]);

/** `verb` is an SMTP command (anything else a client sends is data, or a credential). */
export function isSmtpVerb(verb: string): boolean {
  return SMTP_VERBS.has(verb);
}

/**
 * The server's records: plain arrays the tests read directly, emptied in place by `clear()`. Transcripts are redacted
 * here, as they are written; `received` keeps what clients sent as it was.
 */
export class SmtpRecords {
  readonly messages: ExchangeSmtpMessage[] = [];
  readonly sessions: ExchangeSmtpSession[] = [];
  readonly rejections: ExchangeSmtpRejection[] = [];
  readonly violations: ExchangeSmtpViolation[] = [];
  readonly authAttempts: ExchangeSmtpAuthAttempt[] = [];
  readonly received: ExchangeSmtpReceived[] = [];
  readonly injected: ExchangeSmtpInjection[] = [];
  /** MAIL FROM commands received, faulted or not: one per transaction a client started. */
  mailCommands = 0;
  /** Secrets seen in AUTH, scrubbed from any transcript line as a second line of defence. */
  private readonly secrets = new Set<string>();

  constructor(
    private readonly clock: Clock,
    private readonly emit: <E extends keyof SmtpRecordEvents>(event: E, ...args: SmtpRecordEvents[E]) => void,
  ) {}

  /** Empties every record; the secrets to scrub stay. */
  clear(): void {
    for (const list of [
      this.messages,
      this.sessions,
      this.rejections,
      this.violations,
      this.authAttempts,
      this.received,
      this.injected,
    ]) {
      list.length = 0;
    }
    this.mailCommands = 0;
  }

  /** A token or password seen in AUTH, to scrub from transcripts from now on. */
  addSecret(secret: string): void {
    this.secrets.add(secret);
  }

  /** Adds `line` to the session's transcript, with every known secret replaced by [redacted]. */
  transcript(record: ExchangeSmtpSession, line: string): void {
    let safe = line;
    for (const secret of this.secrets) {
      if (secret && safe.includes(secret)) safe = safe.split(secret).join('[redacted]');
    }
    record.transcript.push(safe);
  }

  /** Adds a command line the client sent to the transcript, without its credentials. */
  command(record: ExchangeSmtpSession, line: string, verb: string, inAuthExchange: boolean): void {
    this.transcript(record, `C: ${redactCommand(line, verb, inAuthExchange)}`);
  }

  /** A 4xx/5xx `reply` sent to `command`; its enhanced code, if any, is split from the text. */
  rejection(sessionId: string, mailbox: string | undefined, command: string, code: number, reply: string): void {
    const match = ENHANCED_CODE.exec(reply);
    const rejection: ExchangeSmtpRejection = {
      sessionId,
      mailbox,
      command,
      code,
      enhanced: match?.[1],
      text: match ? reply.slice(match[0].length) : reply,
      at: this.clock.now(),
    };
    this.rejections.push(rejection);
    this.emit('rejection', rejection);
  }

  injection(kind: ExchangeSmtpInjection['kind'], sessionId: string, command: string): void {
    this.injected.push({ kind, sessionId, command, at: this.clock.now() });
  }

  violation(violation: ExchangeSmtpViolation): void {
    this.violations.push(violation);
    this.emit('violation', violation);
  }

  message(message: ExchangeSmtpMessage): void {
    this.messages.push(message);
    this.emit('message', message);
  }
}

function redactCommand(line: string, verb: string, inAuthExchange: boolean): string {
  // A continuation line of AUTH, or anything that is not a verb (a LOGIN answer sent after a refused AUTH), is a credential.
  if (inAuthExchange || !SMTP_VERBS.has(verb)) return '[redacted]';
  if (verb === 'AUTH') {
    const parts = line.trim().split(/\s+/);
    return parts.length > 2 ? `${parts[0]} ${parts[1]} [redacted]` : line;
  }
  return line;
}

/**
 * Resolves once `done()` holds, checked on every 'message' of `events` and every 10 ms; rejects after `timeoutMs`
 * with `what()` in the error.
 */
export function waitFor(
  events: EventEmitter,
  done: () => boolean,
  timeoutMs: number,
  what: () => string,
): Promise<void> {
  return new Promise((resolve, reject) => {
    if (done()) return resolve();
    const check = () => {
      if (!done()) return;
      cleanup();
      resolve();
    };
    const timer = setTimeout(() => {
      cleanup();
      reject(new Error(`Exchange sandbox SMTP: timed out after ${timeoutMs} ms waiting for ${what()}`));
    }, timeoutMs);
    const poll = setInterval(check, 10);
    const cleanup = () => {
      clearTimeout(timer);
      clearInterval(poll);
      events.off('message', check);
    };
    events.on('message', check);
  });
}
