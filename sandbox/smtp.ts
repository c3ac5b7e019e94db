/** The sandbox's Exchange Online-like SMTP submission server (smtp.office365.com:587): STARTTLS, XOAUTH2, SendAs, per-mailbox limits, fault knobs and a redacted transcript. */
import { EventEmitter } from 'node:events';
import { randomBytes, randomUUID, timingSafeEqual } from 'node:crypto';
import type { AddressInfo } from 'node:net';
import type { TLSSocket } from 'node:tls';
import {
  SMTPServer,
  type SMTPServerAddress,
  type SMTPServerAuthentication,
  type SMTPServerAuthenticationResponse,
  type SMTPServerDataStream,
  type SMTPServerError,
  type SMTPServerSession,
} from 'smtp-server';
import PostalMime from 'postal-mime';
import type { CertificateAuthority } from './ca';
import type { TokenIssuer, TokenProblem } from './tokens';
import { SMTP_SEND_AS_APP_ROLE, type SandboxMailbox, type SandboxTenant } from './tenant';

/** Audiences Exchange Online accepts in an XOAUTH2 bearer token: its resource URI and its first-party app id. */
export const EXCHANGE_AUDIENCES = ['https://outlook.office365.com', '00000002-0000-0ff1-ce00-000000000000'];

/** Host name in the greeting, EHLO reply and diagnostics; shaped like an Exchange front end, clearly not one. */
export const SANDBOX_SMTP_HOSTNAME = 'SBX0PR00CA0001.outlook.sandbox.test';

/** 35 MiB: Exchange Online's default send limit (MAIL_MAX_MESSAGE_BYTES). */
const DEFAULT_MAX_MESSAGE_BYTES = 36_700_160;
const DEFAULT_MAX_CONNECTIONS_PER_MAILBOX = 3;
const DEFAULT_RATE_PER_MINUTE = 30;
const DEFAULT_RATE_WINDOW_MS = 60_000;
const DEFAULT_DAILY_RECIPIENTS = 10_000;
const DEFAULT_DAILY_WINDOW_MS = 24 * 60 * 60 * 1000;
const DEFAULT_MAX_RECIPIENTS = 500;
/** How long close() lets smtp-server wait for sessions before it answers them 421 itself. */
const CLOSE_TIMEOUT_MS = 1_000;
const DEFAULT_WAIT_TIMEOUT_MS = 5_000;

/** Exchange's reply texts (docs/exchange-online.md). Functions take what the real text embeds. */
export const EXCHANGE_REPLIES = {
  authRequired: (diag: string) => `5.7.57 Client not authenticated to send mail. ${diag}`,
  authUnsuccessful: (diag: string) => `5.7.3 Authentication unsuccessful ${diag}`,
  tenantAuthDisabled:
    '5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the Tenant. Visit https://aka.ms/smtp_auth_disabled for more information.',
  mailboxAuthDisabled:
    '5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the Mailbox. Visit https://aka.ms/smtp_auth_disabled for more information.',
  basicAuthDisabled: '5.7.139 Authentication unsuccessful, basic authentication is disabled.',
  unrecognizedAuth: '5.7.4 Unrecognized authentication type',
  sendAsDenied: (mailbox: string, from: string) =>
    `5.2.252 SendAsDenied; ${mailbox} not allowed to send as ${from}; STOREDRV.Submission.Exception:SendAsDeniedException; Failed to process message due to a permanent exception with message [BeginDiagnosticData]Cannot submit message.[EndDiagnosticData]`,
  senderThreadLimit: (diag: string) => `4.3.2 STOREDRV.ClientSubmit; sender thread limit exceeded ${diag}`,
  submissionQuotaExceeded:
    '5.2.0 STOREDRV.Submission.Exception:SubmissionQuotaExceededException; Failed to process message due to a permanent exception with message [BeginDiagnosticData]Cannot submit message.[EndDiagnosticData]',
  tooManyRecipients: '4.5.3 Too many recipients',
  messageTooBig: '5.3.4 Message size exceeds fixed maximum message size',
  serviceNotAvailable: '4.3.2 Service not available, closing transmission channel',
  logonFailure:
    '4.2.0 STOREDRV; mailbox logon failure; STOREDRV.Submission.Exception:ConnectionFailedTransientException.MapiExceptionLogonFailed',
  recipientNotFound: (address: string) =>
    `5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient ${address} not found by SMTP address lookup`,
  queued: (messageId: string, host: string) => `2.0.0 OK ${messageId} [Hostname=${host}]`,
} as const;

/** Per-mailbox limits; every field can be changed on a running server through `server.limits`. */
export interface ExchangeSmtpLimits {
  /** Advertised as SIZE in EHLO; a larger message gets 552 5.3.4. */
  maxMessageBytes: number;
  /** Concurrently authenticated sessions per mailbox; the next one gets 432 4.3.2 at MAIL FROM. */
  maxConnectionsPerMailbox: number;
  /** Messages per `rateWindowMs`; more is recorded as a violation, never rejected (Exchange delays). */
  ratePerMinute: number;
  rateWindowMs: number;
  /** Recipients per rolling `dailyWindowMs`; more gets 554 5.2.0. */
  dailyRecipients: number;
  dailyWindowMs: number;
  /** Recipients per message; the next RCPT gets 452 4.5.3. */
  maxRecipients: number;
  /** Basic SMTP AUTH (LOGIN with the app password); false = 535 5.7.139 basic authentication is disabled. */
  basicAuthEnabled: boolean;
}

/** Fault knobs. Counters are consumed one per use; flags and delays hold until changed. */
export interface ExchangeSmtpFaults {
  /** Destroys the socket after the first chunk of DATA, for this many messages. */
  dropMidData: number;
  /** Answers this many new connections with a 421 4.3.2 greeting and closes them. */
  reply421: number;
  /** Answers this many commands with 421 4.3.2 and closes (only `reply421Command` ones when set). */
  reply421OnCommand: number;
  /** Verb (e.g. 'MAIL', 'EHLO') that `reply421OnCommand` hits; undefined = the next command of any session. */
  reply421Command: string | undefined;
  /** Delays the greeting and every reply by this many milliseconds. */
  delayMs: number;
  /** STARTTLS is neither advertised nor accepted (a misrouted or downgraded connection). */
  noStartTls: boolean;
  /** Answers this many MAIL FROM commands with 432 4.3.2 sender thread limit exceeded. */
  force432: number;
  /** Answers this many MAIL FROM commands with 430 4.2.0 mailbox logon failure. */
  logonFailure430: number;
  /** Recipients (lower-case addresses) refused at RCPT TO with 550 5.1.10, as Exchange refuses an unknown address. */
  refuseRecipients: string[];
}

/** How a session authenticated. */
export type SmtpAuthMethod = 'XOAUTH2' | 'LOGIN' | 'PLAIN';

/** Why an authentication attempt ended as it did. */
export type AuthOutcome =
  | 'ok'
  | 'not-tls'
  | 'tenant-disabled'
  | 'mailbox-disabled'
  | 'basic-disabled'
  | 'unknown-mailbox'
  | 'bad-password'
  | `token-${TokenProblem}`
  | 'wrong-tenant'
  | 'missing-role'
  | 'service-principal-not-registered'
  | 'service-principal-object-id-mismatch'
  | 'no-full-access';

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
  tlsVersion?: string;
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
  mailbox?: string;
  /** The verb being answered ('CONNECT' for the greeting, 'DATA' for the end of the message). */
  command: string;
  code: number;
  enhanced?: string;
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

/** A time source; tests pass a scaled or manual clock. */
export interface Clock {
  now(): number;
}

export interface ExchangeSmtpOptions {
  ca: CertificateAuthority;
  tenant: SandboxTenant;
  issuer: TokenIssuer;
  limits?: Partial<ExchangeSmtpLimits>;
  clock?: Clock;
  /** Host name in the greeting and diagnostics. */
  hostname?: string;
}

type Connection = SMTPServer['connections'] extends Set<infer C> ? C : never;

/** smtp-server with a hook on every new connection, before its greeting is sent. */
class HookedSmtpServer extends SMTPServer {
  onConnection: ((connection: Connection) => void) | undefined;

  override connect(...args: Parameters<SMTPServer['connect']>): void {
    super.connect(...args);
    let added: Connection | undefined;
    for (const connection of this.connections) added = connection;
    if (added && added._socket === args[0]) this.onConnection?.(added);
  }
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
const ENHANCED_CODE = /^([245]\.\d{1,3}\.\d{1,3})(?: |$)/;

function smtpError(responseCode: number, text: string): SMTPServerError {
  const error: SMTPServerError = new Error(text);
  error.responseCode = responseCode;
  return error;
}

function lower(address: string): string {
  return address.trim().toLowerCase();
}

/** The address Exchange would let `mailbox` send as: itself, or a SendAs grant for the address or its @domain. */
function maySendAs(user: string, mailbox: SandboxMailbox | undefined, address: string): boolean {
  const wanted = lower(address);
  if (wanted === lower(user)) return true;
  if (!mailbox) return false;
  const domain = wanted.slice(wanted.lastIndexOf('@'));
  for (const grant of mailbox.sendAs) {
    const g = lower(grant);
    if (g === wanted || (g.startsWith('@') && g === domain)) return true;
  }
  return false;
}

function secretEquals(a: string, b: string): boolean {
  const x = Buffer.from(a);
  const y = Buffer.from(b);
  return x.length === y.length && timingSafeEqual(x, y);
}

function fullLimits(limits: Partial<ExchangeSmtpLimits> | undefined): ExchangeSmtpLimits {
  return {
    maxMessageBytes: DEFAULT_MAX_MESSAGE_BYTES,
    maxConnectionsPerMailbox: DEFAULT_MAX_CONNECTIONS_PER_MAILBOX,
    ratePerMinute: DEFAULT_RATE_PER_MINUTE,
    rateWindowMs: DEFAULT_RATE_WINDOW_MS,
    dailyRecipients: DEFAULT_DAILY_RECIPIENTS,
    dailyWindowMs: DEFAULT_DAILY_WINDOW_MS,
    maxRecipients: DEFAULT_MAX_RECIPIENTS,
    basicAuthEnabled: true,
    ...limits,
  };
}

function noFaults(): ExchangeSmtpFaults {
  return {
    dropMidData: 0,
    reply421: 0,
    reply421OnCommand: 0,
    reply421Command: undefined,
    delayMs: 0,
    noStartTls: false,
    force432: 0,
    logonFailure430: 0,
    refuseRecipients: [],
  };
}

interface LiveSession {
  record: ExchangeSmtpSession;
  connection: Connection;
  lastVerb: string;
  /** Orders authenticated sessions of one mailbox: the first `maxConnectionsPerMailbox` may send. */
  authSequence: number;
}

/**
 * A running Exchange-like SMTP server. Records are plain arrays the tests read directly; `reset()`
 * empties them in place. Emits 'message' (ExchangeSmtpMessage), 'rejection' and 'violation'.
 */
export class ExchangeSmtpServer extends EventEmitter {
  readonly host = '127.0.0.1';
  port = 0;
  readonly limits: ExchangeSmtpLimits;
  readonly faults: ExchangeSmtpFaults = noFaults();
  readonly messages: ExchangeSmtpMessage[] = [];
  readonly sessions: ExchangeSmtpSession[] = [];
  readonly rejections: ExchangeSmtpRejection[] = [];
  readonly violations: ExchangeSmtpViolation[] = [];
  readonly authAttempts: ExchangeSmtpAuthAttempt[] = [];
  /** Every line and message content clients sent, unredacted, oldest first; see {@link ExchangeSmtpReceived}. */
  readonly received: ExchangeSmtpReceived[] = [];
  /** Every fault knob use, in order: tells injected refusals from ones the client caused. */
  readonly injected: ExchangeSmtpInjection[] = [];
  /** MAIL FROM commands received, faulted or not: one per transaction a client started. */
  mailCommands = 0;
  readonly hostname: string;

  private readonly tenant: SandboxTenant;
  private readonly issuer: TokenIssuer;
  private readonly clock: Clock;
  private readonly smtp: HookedSmtpServer;
  private readonly live = new Map<string, LiveSession>();
  /** Accepted message times per mailbox, for the rate rule. */
  private readonly sendTimes = new Map<string, number[]>();
  /** Accepted recipients per mailbox, for the daily quota. */
  private readonly recipientLog = new Map<string, { at: number; count: number }[]>();
  private readonly peakSessions = new Map<string, number>();
  /** Secrets seen in AUTH, scrubbed from any transcript line as a second line of defence. */
  private readonly secrets = new Set<string>();
  private authSequence = 0;

  /** Use {@link startExchangeSmtp}. */
  constructor(options: ExchangeSmtpOptions) {
    super();
    this.tenant = options.tenant;
    this.issuer = options.issuer;
    this.clock = options.clock ?? { now: () => Date.now() };
    this.limits = fullLimits(options.limits);
    this.hostname = options.hostname ?? SANDBOX_SMTP_HOSTNAME;
    const { keyPem, certPem } = options.ca.issueServer();
    this.smtp = new HookedSmtpServer({
      name: this.hostname,
      heloResponse: '%s Hello %s',
      key: keyPem,
      cert: certPem,
      minVersion: 'TLSv1.2',
      secure: false,
      size: this.limits.maxMessageBytes,
      // Exchange offers exactly these on 587, and only after STARTTLS (see onConnect/onSecure).
      authMethods: ['LOGIN', 'XOAUTH2'],
      authRequiredMessage: EXCHANGE_REPLIES.authRequired(this.diagnostic()),
      hideENHANCEDSTATUSCODES: false,
      disableReverseLookup: true,
      closeTimeout: CLOSE_TIMEOUT_MS,
      logger: false,
      onConnect: (session, callback) => this.onConnect(session, callback),
      onSecure: (socket, session, callback) => this.onSecure(socket as TLSSocket, session, callback),
      onAuth: (auth, session, callback) => {
        this.onAuth(auth, session).then(
          (response) => this.reply(() => callback(null, response)),
          (error: unknown) => this.reply(() => callback(error instanceof Error ? error : new Error(String(error)))),
        );
      },
      onMailFrom: (address, session, callback) => this.reply(() => callback(this.onMailFrom(address, session))),
      onRcptTo: (address, session, callback) => this.reply(() => callback(this.onRcptTo(address, session))),
      onData: (stream, session, callback) => this.onData(stream, session, callback),
      onClose: (session) => this.onClose(session),
    });
    this.smtp.onConnection = (connection) => this.hook(connection);
    this.smtp.on('error', () => {
      // Client-side resets and TLS failures surface here; the session record already tells the story.
    });
  }

  /** Starts listening on 127.0.0.1 and a free port. */
  async listen(): Promise<void> {
    await new Promise<void>((resolve, reject) => {
      this.smtp.server.once('error', reject);
      this.smtp.listen(0, this.host, () => {
        this.smtp.server.off('error', reject);
        resolve();
      });
    });
    this.port = (this.smtp.server.address() as AddressInfo).port;
  }

  /** Stops listening and drops every open session. */
  async close(): Promise<void> {
    const closed = new Promise<void>((resolve) => this.smtp.close(() => resolve()));
    for (const { connection } of this.live.values()) connection._socket.destroy();
    await closed;
  }

  /** Empties every record and clears the faults; limits and open sessions stay. */
  reset(): void {
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
    this.sendTimes.clear();
    this.recipientLog.clear();
    this.peakSessions.clear();
    Object.assign(this.faults, noFaults());
  }

  /** The most messages `mailbox` had accepted within any `limits.rateWindowMs`. */
  maxInAnyWindow(mailbox: string): number {
    const times = [...(this.sendTimes.get(lower(mailbox)) ?? [])].sort((a, b) => a - b);
    let max = 0;
    let start = 0;
    for (let end = 0; end < times.length; end++) {
      while ((times[end] ?? 0) - (times[start] ?? 0) >= this.limits.rateWindowMs) start++;
      max = Math.max(max, end - start + 1);
    }
    return max;
  }

  /** The most sessions authenticated as `mailbox` that were open at the same time. */
  maxConcurrentSessions(mailbox: string): number {
    return this.peakSessions.get(lower(mailbox)) ?? 0;
  }

  /** Recipients `mailbox` has used in the current rolling daily window. */
  recipientsInDailyWindow(mailbox: string): number {
    const since = this.clock.now() - this.limits.dailyWindowMs;
    return (this.recipientLog.get(lower(mailbox)) ?? []).filter((e) => e.at > since).reduce((n, e) => n + e.count, 0);
  }

  /** Resolves with the accepted messages once there are at least `count`; rejects after `timeoutMs`. */
  waitForMessages(count: number, timeoutMs = DEFAULT_WAIT_TIMEOUT_MS): Promise<ExchangeSmtpMessage[]> {
    return this.waitFor(
      () => this.messages.length >= count,
      timeoutMs,
      () => `${count} messages`,
    ).then(() => [...this.messages]);
  }

  /** Resolves once no session is open (useful before counting concurrent sessions); rejects after `timeoutMs`. */
  waitForIdle(timeoutMs = DEFAULT_WAIT_TIMEOUT_MS): Promise<void> {
    return this.waitFor(
      () => this.live.size === 0,
      timeoutMs,
      () => `no open sessions (${this.live.size} open)`,
    );
  }

  private waitFor(done: () => boolean, timeoutMs: number, what: () => string): Promise<void> {
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
        this.off('message', check);
      };
      this.on('message', check);
    });
  }

  /** `[host timestamp]`, the bracketed diagnostic Exchange appends to its refusals. */
  private diagnostic(): string {
    return `[${this.hostname} ${new Date(this.clock.now()).toISOString()}]`;
  }

  /** Runs `send` after the configured reply delay. */
  private reply(send: () => void): void {
    const delay = this.faults.delayMs;
    if (delay > 0) setTimeout(send, delay);
    else send();
  }

  private hook(connection: Connection): void {
    const record: ExchangeSmtpSession = {
      id: connection.id,
      remoteAddress: connection.remoteAddress,
      remotePort: connection.remotePort,
      startedAt: this.clock.now(),
      open: true,
      startedTls: false,
      authBeforeTls: false,
      transcript: [],
    };
    const live: LiveSession = { record, connection, lastVerb: 'CONNECT', authSequence: 0 };
    this.sessions.push(record);
    this.live.set(connection.id, live);
    connection.on('error', (error: Error) => {
      record.error = error.message;
    });

    const send = connection.send.bind(connection);
    connection.send = (code, data, context) => {
      const reply = this.exchangeReply(connection, code, data, context);
      const lines = Array.isArray(reply) ? reply : [reply];
      lines.forEach((line, i) => {
        const separator = i < lines.length - 1 ? '-' : ' ';
        this.transcript(record, `S: ${code}${separator}${line}`);
      });
      if (code >= 400) this.recordRejection(live, code, lines.join(' '));
      send(code, reply, false);
    };
    connection._sendGreeting = () => {
      connection.send(
        220,
        `${this.hostname} Microsoft ESMTP MAIL Service ready at ${new Date(this.clock.now()).toUTCString()}`,
        false,
      );
    };

    const onCommand = connection._onCommand.bind(connection);
    connection._onCommand = (command, callback) => {
      const line = command.toString();
      const verb = (line.split(' ')[0] ?? '').toUpperCase();
      const inAuthExchange = !!connection._nextHandler;
      this.received.push({
        sessionId: record.id,
        secure: !!connection.secure,
        kind: inAuthExchange || verb === 'AUTH' ? 'auth' : 'command',
        text: line,
      });
      const next = () => setImmediate(() => callback?.());
      if (!connection._ready || connection._upgrading) return onCommand(command, callback);
      this.transcript(record, `C: ${this.redactCommand(line, verb, inAuthExchange)}`);
      if (!inAuthExchange) live.lastVerb = SMTP_VERBS.has(verb) ? verb : 'UNKNOWN';
      if (!inAuthExchange && verb === 'MAIL') {
        this.mailCommands++;
        if (this.faults.delayMs > 0) this.inject('delay', record.id, verb);
      }

      if (!inAuthExchange && verb === 'AUTH' && !connection.secure) {
        // Exchange does not offer AUTH before STARTTLS; the credentials may already have crossed in clear.
        record.authBeforeTls = true;
        this.reply(() => {
          connection.send(504, EXCHANGE_REPLIES.unrecognizedAuth, false);
          next();
        });
        return;
      }
      const f = this.faults;
      if (
        !inAuthExchange &&
        f.reply421OnCommand > 0 &&
        (f.reply421Command === undefined || f.reply421Command.toUpperCase() === verb)
      ) {
        f.reply421OnCommand--;
        this.inject('reply421OnCommand', record.id, verb);
        this.reply(() => {
          connection.send(421, EXCHANGE_REPLIES.serviceNotAvailable, false);
          next();
        });
        return;
      }
      this.reply(() => onCommand(command, callback));
    };
  }

  /** Rewrites smtp-server's own reply texts into Exchange's and puts the enhanced status code in the text. */
  private exchangeReply(
    connection: Connection,
    code: number,
    data: string | string[] | null | undefined,
    context: string | false | undefined,
  ): string | string[] {
    if (Array.isArray(data)) return data;
    const text = data ?? '';
    if (context === false || ENHANCED_CODE.test(text)) return text;
    if (context === 'MAIL_FROM_OK') return '2.1.0 Sender OK';
    if (context === 'RCPT_TO_OK') return '2.1.5 Recipient OK';
    if (code === 220 && text === 'Ready to start TLS') return '2.0.0 SMTP server ready';
    if (code === 354) return 'Start mail input; end with <CRLF>.<CRLF>';
    if (code === 221) return '2.0.0 Service closing transmission channel';
    if (code === 235) return '2.7.0 Authentication successful';
    if (code === 552 && /maximum message size/i.test(text)) return EXCHANGE_REPLIES.messageTooBig;
    if (code === 421) return EXCHANGE_REPLIES.serviceNotAvailable;
    if (code === 500 && /not recognized/i.test(text)) return '5.3.3 Unrecognized command';
    const enhanced = connection._getEnhancedStatusCode(code, context);
    return enhanced ? `${enhanced} ${text}` : text;
  }

  private redactCommand(line: string, verb: string, inAuthExchange: boolean): string {
    // A continuation line of AUTH, or anything that is not a verb (a LOGIN answer sent after a refused AUTH), is a credential.
    if (inAuthExchange || !SMTP_VERBS.has(verb)) return '[redacted]';
    if (verb === 'AUTH') {
      const parts = line.trim().split(/\s+/);
      return parts.length > 2 ? `${parts[0]} ${parts[1]} [redacted]` : line;
    }
    return line;
  }

  private transcript(record: ExchangeSmtpSession, line: string): void {
    let safe = line;
    for (const secret of this.secrets) {
      if (secret && safe.includes(secret)) safe = safe.split(secret).join('[redacted]');
    }
    record.transcript.push(safe);
  }

  private recordRejection(live: LiveSession, code: number, reply: string): void {
    const match = ENHANCED_CODE.exec(reply);
    const rejection: ExchangeSmtpRejection = {
      sessionId: live.record.id,
      mailbox: live.record.user,
      command: live.lastVerb,
      code,
      enhanced: match?.[1],
      text: match ? reply.slice(match[0].length) : reply,
      at: this.clock.now(),
    };
    this.rejections.push(rejection);
    this.emit('rejection', rejection);
  }

  private inject(kind: ExchangeSmtpInjection['kind'], sessionId: string, command: string): void {
    this.injected.push({ kind, sessionId, command, at: this.clock.now() });
  }

  private recordViolation(violation: ExchangeSmtpViolation): void {
    this.violations.push(violation);
    this.emit('violation', violation);
  }

  private onConnect(session: SMTPServerSession, callback: (err?: Error | null) => void): void {
    this.smtp.options.size = this.limits.maxMessageBytes;
    // No AUTH offered before STARTTLS; with noStartTls there is no STARTTLS either, as on a port-25 MX.
    session.disabledCommands = this.faults.noStartTls ? ['AUTH', 'STARTTLS'] : ['AUTH'];
    if (this.faults.reply421 > 0) {
      this.faults.reply421--;
      this.inject('reply421', session.id, 'CONNECT');
      this.reply(() => callback(smtpError(421, EXCHANGE_REPLIES.serviceNotAvailable)));
      return;
    }
    this.reply(() => callback());
  }

  private onSecure(socket: TLSSocket, session: SMTPServerSession, callback: (err?: Error | null) => void): void {
    const live = this.live.get(session.id);
    if (live) {
      live.record.startedTls = true;
      live.record.tlsVersion = socket.getProtocol() ?? undefined;
    }
    session.disabledCommands = [];
    callback();
  }

  private async onAuth(
    auth: SMTPServerAuthentication,
    session: SMTPServerSession,
  ): Promise<SMTPServerAuthenticationResponse> {
    const live = this.live.get(session.id);
    const secret = auth.method === 'XOAUTH2' ? auth.accessToken : auth.password;
    if (secret) this.secrets.add(secret);
    const attempt: ExchangeSmtpAuthAttempt = {
      sessionId: session.id,
      at: this.clock.now(),
      method: auth.method,
      user: auth.username ?? '',
      ok: false,
      outcome: 'ok',
      reply: '',
    };
    const fail = (outcome: AuthOutcome, code: number, text: string): never => {
      attempt.outcome = outcome;
      attempt.reply = `${code} ${text}`;
      this.authAttempts.push(attempt);
      throw smtpError(code, text);
    };
    const unsuccessful = (outcome: AuthOutcome) =>
      fail(outcome, 535, EXCHANGE_REPLIES.authUnsuccessful(this.diagnostic()));

    if (!session.secure) fail('not-tls', 504, EXCHANGE_REPLIES.unrecognizedAuth);
    if (!this.tenant.exchange.smtpAuthEnabled) fail('tenant-disabled', 535, EXCHANGE_REPLIES.tenantAuthDisabled);
    const user = lower(auth.username ?? '');
    const mailbox = this.tenant.exchange.mailboxes.get(user);

    if (auth.method === 'XOAUTH2') {
      const check = await this.issuer.verify(auth.accessToken ?? '', EXCHANGE_AUDIENCES);
      if (!check.ok) return unsuccessful(`token-${check.problem}`);
      const claims = check.claims;
      attempt.appId = claims.appid;
      attempt.objectId = claims.oid;
      attempt.roles = claims.roles ?? [];
      if (claims.tid !== this.tenant.tenantId) unsuccessful('wrong-tenant');
      if (!claims.roles?.includes(SMTP_SEND_AS_APP_ROLE)) unsuccessful('missing-role');
      const registered = this.tenant.exchange.servicePrincipals.get(claims.appid);
      if (registered === undefined) unsuccessful('service-principal-not-registered');
      if (registered !== claims.oid) unsuccessful('service-principal-object-id-mismatch');
      if (!mailbox) return unsuccessful('unknown-mailbox');
      if (!mailbox.smtpAuthEnabled) fail('mailbox-disabled', 535, EXCHANGE_REPLIES.mailboxAuthDisabled);
      if (!mailbox.fullAccess.has(claims.oid)) unsuccessful('no-full-access');
    } else if (auth.method === 'LOGIN' || auth.method === 'PLAIN') {
      if (!this.limits.basicAuthEnabled) fail('basic-disabled', 535, EXCHANGE_REPLIES.basicAuthDisabled);
      if (!mailbox) return unsuccessful('unknown-mailbox');
      if (!mailbox.smtpAuthEnabled) fail('mailbox-disabled', 535, EXCHANGE_REPLIES.mailboxAuthDisabled);
      if (!mailbox.appPassword || !secretEquals(auth.password ?? '', mailbox.appPassword)) unsuccessful('bad-password');
    } else {
      fail('not-tls', 504, EXCHANGE_REPLIES.unrecognizedAuth);
    }

    const address = mailbox?.address ?? user;
    attempt.ok = true;
    attempt.reply = '235 2.7.0 Authentication successful';
    this.authAttempts.push(attempt);
    if (live) {
      live.record.user = address;
      live.record.authMethod = auth.method as SmtpAuthMethod;
      live.record.authenticatedAt = this.clock.now();
      live.authSequence = ++this.authSequence;
      const open = this.openSessionsOf(address).length;
      this.peakSessions.set(address, Math.max(open, this.peakSessions.get(address) ?? 0));
    }
    return { user: address };
  }

  private openSessionsOf(mailbox: string): LiveSession[] {
    return [...this.live.values()]
      .filter((s) => s.record.open && s.record.user === mailbox)
      .sort((a, b) => a.authSequence - b.authSequence);
  }

  private onMailFrom(_address: SMTPServerAddress, session: SMTPServerSession): SMTPServerError | undefined {
    const user = session.user as string | undefined;
    // Reached without a user only before STARTTLS: after it, smtp-server's own check sends the same text.
    if (!user) return smtpError(530, EXCHANGE_REPLIES.authRequired(this.diagnostic()));
    if (this.faults.logonFailure430 > 0) {
      this.faults.logonFailure430--;
      this.inject('logonFailure430', session.id, 'MAIL');
      return smtpError(430, EXCHANGE_REPLIES.logonFailure);
    }
    const threadLimit = smtpError(432, EXCHANGE_REPLIES.senderThreadLimit(`[Hostname=${this.hostname}]`));
    if (this.faults.force432 > 0) {
      this.faults.force432--;
      this.inject('force432', session.id, 'MAIL');
      return threadLimit;
    }
    const open = this.openSessionsOf(user);
    const rank = open.findIndex((s) => s.record.id === session.id);
    if (rank >= this.limits.maxConnectionsPerMailbox) {
      this.recordViolation({
        kind: 'connections',
        mailbox: user,
        at: this.clock.now(),
        count: open.length,
        limit: this.limits.maxConnectionsPerMailbox,
      });
      return threadLimit;
    }
    return undefined;
  }

  private onRcptTo(address: SMTPServerAddress, session: SMTPServerSession): SMTPServerError | undefined {
    if (session.envelope.rcptTo.length >= this.limits.maxRecipients) {
      return smtpError(452, EXCHANGE_REPLIES.tooManyRecipients);
    }
    if (this.faults.refuseRecipients.includes(lower(address.address))) {
      return smtpError(550, EXCHANGE_REPLIES.recipientNotFound(address.address));
    }
    return undefined;
  }

  private onData(
    stream: SMTPServerDataStream,
    session: SMTPServerSession,
    callback: (err?: Error | null, message?: string) => void,
  ): void {
    const live = this.live.get(session.id);
    const chunks: Buffer[] = [];
    let dropped = false;
    stream.on('error', () => {
      // The client (or the dropMidData fault) went away mid-message; nothing to answer.
    });
    if (this.faults.dropMidData > 0 && live) {
      this.faults.dropMidData--;
      this.inject('dropMidData', session.id, 'DATA');
      stream.once('data', () => {
        dropped = true;
        live.record.transcript.push('S: <connection dropped during DATA>');
        live.connection._socket.destroy();
      });
    }
    stream.on('data', (chunk: Buffer) => chunks.push(chunk));
    stream.on('end', () => {
      const raw = Buffer.concat(chunks);
      this.received.push({
        sessionId: session.id,
        secure: !!live?.connection.secure,
        kind: 'data',
        text: raw.toString(),
      });
      if (dropped) return;
      if (live) this.transcript(live.record, `C: <${raw.length} bytes of DATA>`);
      // Exchange counts a message when it has arrived, whatever the time spent checking it.
      const arrivedAt = this.clock.now();
      this.acceptOrRefuse(raw, stream.sizeExceeded, session, live, arrivedAt).then(
        (reply) => this.reply(() => callback(null, reply)),
        (error: unknown) => this.reply(() => callback(error instanceof Error ? error : new Error(String(error)))),
      );
    });
  }

  /** Decides the reply to the end of DATA, and records the message when it is accepted. */
  private async acceptOrRefuse(
    raw: Buffer,
    sizeExceeded: boolean,
    session: SMTPServerSession,
    live: LiveSession | undefined,
    arrivedAt: number,
  ): Promise<string> {
    if (sizeExceeded || raw.length > this.limits.maxMessageBytes) throw smtpError(552, EXCHANGE_REPLIES.messageTooBig);
    const user = session.user as string;
    const mailbox = this.tenant.exchange.mailboxes.get(lower(user));
    const mailFrom = session.envelope.mailFrom;
    const envelope = {
      from: mailFrom ? mailFrom.address : '',
      to: session.envelope.rcptTo.map((r) => r.address),
    };
    const parsed = await PostalMime.parse(raw);
    const headerFrom = parsed.from?.address;
    for (const address of [envelope.from, headerFrom]) {
      if (address && !maySendAs(user, mailbox, address)) {
        throw smtpError(554, EXCHANGE_REPLIES.sendAsDenied(user, address));
      }
    }
    const now = arrivedAt;
    const key = lower(user);
    if (this.recipientsInDailyWindow(key) + envelope.to.length > this.limits.dailyRecipients) {
      throw smtpError(554, EXCHANGE_REPLIES.submissionQuotaExceeded);
    }

    const log = this.recipientLog.get(key) ?? [];
    log.push({ at: now, count: envelope.to.length });
    this.recipientLog.set(key, log);
    const times = this.sendTimes.get(key) ?? [];
    times.push(now);
    this.sendTimes.set(key, times);
    const inWindow = times.filter((t) => t > now - this.limits.rateWindowMs).length;
    if (inWindow > this.limits.ratePerMinute) {
      this.recordViolation({
        kind: 'rate',
        mailbox: user,
        at: now,
        count: inWindow,
        limit: this.limits.ratePerMinute,
        windowMs: this.limits.rateWindowMs,
      });
    }

    const messageId = parsed.messageId ?? `<${randomUUID()}@${this.hostname}>`;
    const message: ExchangeSmtpMessage = {
      id: randomBytes(8).toString('hex'),
      sessionId: session.id,
      mailbox: user,
      authMethod: live?.record.authMethod ?? 'XOAUTH2',
      envelope,
      raw,
      parsed,
      receivedAt: now,
      tlsVersion: live?.record.tlsVersion,
    };
    this.messages.push(message);
    this.emit('message', message);
    return EXCHANGE_REPLIES.queued(messageId, this.hostname);
  }

  private onClose(session: SMTPServerSession): void {
    const live = this.live.get(session.id);
    if (!live) return;
    live.record.open = false;
    live.record.closedAt = this.clock.now();
    this.live.delete(session.id);
  }
}

/**
 * Starts the Exchange Online-like submission server on 127.0.0.1 and a free port: plain SMTP with
 * STARTTLS (TLS 1.2+, certificate from `ca`), AUTH LOGIN/XOAUTH2 only after STARTTLS, tokens checked
 * against `issuer` and the `tenant`'s Exchange registrations. Stop it with `close()`.
 */
export async function startExchangeSmtp(options: ExchangeSmtpOptions): Promise<ExchangeSmtpServer> {
  const server = new ExchangeSmtpServer(options);
  await server.listen();
  return server;
}
