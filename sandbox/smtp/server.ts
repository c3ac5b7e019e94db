/** The sandbox's Exchange Online-like SMTP submission server (smtp.office365.com:587): smtp-server wired to Exchange's replies, AUTH checks, per-mailbox limits, fault knobs and records. */
import { EventEmitter } from 'node:events';
import { randomBytes, randomUUID } from 'node:crypto';
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
import type { CertificateAuthority } from '../ca';
import type { TokenIssuer } from '../tokens';
import type { SandboxTenant } from '../tenant';
import { lower, maySendAs } from './addresses';
import { checkSmtpAuth, type SmtpAuthMethod } from './auth';
import { noFaults, takeFault, type CountedFault, type ExchangeSmtpFaults } from './faults';
import { fullLimits, MailboxAccounting, type Clock, type ExchangeSmtpLimits } from './mailboxLimits';
import {
  isSmtpVerb,
  SmtpRecords,
  waitFor,
  type ExchangeSmtpAuthAttempt,
  type ExchangeSmtpInjection,
  type ExchangeSmtpMessage,
  type ExchangeSmtpReceived,
  type ExchangeSmtpRejection,
  type ExchangeSmtpSession,
  type ExchangeSmtpViolation,
} from './observation';
import { EXCHANGE_REPLIES, exchangeReply, smtpError } from './replies';

/** Host name in the greeting, EHLO reply and diagnostics; shaped like an Exchange front end, clearly not one. */
export const SANDBOX_SMTP_HOSTNAME = 'SBX0PR00CA0001.outlook.sandbox.test';

/** How long close() lets smtp-server wait for sessions before it answers them 421 itself. */
const CLOSE_TIMEOUT_MS = 1_000;
const DEFAULT_WAIT_TIMEOUT_MS = 5_000;

export interface ExchangeSmtpOptions {
  ca: CertificateAuthority;
  tenant: SandboxTenant;
  issuer: TokenIssuer;
  limits?: Partial<ExchangeSmtpLimits>;
  clock?: Clock | undefined;
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
  readonly messages: ExchangeSmtpMessage[];
  readonly sessions: ExchangeSmtpSession[];
  readonly rejections: ExchangeSmtpRejection[];
  readonly violations: ExchangeSmtpViolation[];
  readonly authAttempts: ExchangeSmtpAuthAttempt[];
  /** Every line and message content clients sent, unredacted, oldest first; see {@link ExchangeSmtpReceived}. */
  readonly received: ExchangeSmtpReceived[];
  /** Every fault knob use, in order: tells injected refusals from ones the client caused. */
  readonly injected: ExchangeSmtpInjection[];
  readonly hostname: string;

  private readonly tenant: SandboxTenant;
  private readonly issuer: TokenIssuer;
  private readonly clock: Clock;
  private readonly records: SmtpRecords;
  private readonly accounting: MailboxAccounting;
  private readonly smtp: HookedSmtpServer;
  private readonly live = new Map<string, LiveSession>();
  private authSequence = 0;

  /** Use {@link startExchangeSmtp}. */
  constructor(options: ExchangeSmtpOptions) {
    super();
    this.tenant = options.tenant;
    this.issuer = options.issuer;
    this.clock = options.clock ?? { now: () => Date.now() };
    this.limits = fullLimits(options.limits);
    this.hostname = options.hostname ?? SANDBOX_SMTP_HOSTNAME;
    this.records = new SmtpRecords(this.clock, (event, ...args) => this.emit(event, ...args));
    this.accounting = new MailboxAccounting(this.limits, this.clock);
    this.messages = this.records.messages;
    this.sessions = this.records.sessions;
    this.rejections = this.records.rejections;
    this.violations = this.records.violations;
    this.authAttempts = this.records.authAttempts;
    this.received = this.records.received;
    this.injected = this.records.injected;
    const { keyPem, certPem } = options.ca.issueServer();
    this.smtp = new HookedSmtpServer({
      name: this.hostname,
      heloResponse: EXCHANGE_REPLIES.helo,
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

  /** The server's time (its `clock`): what `receivedAt`, `at` and the rate windows are measured in. */
  now(): number {
    return this.clock.now();
  }

  /** MAIL FROM commands received, faulted or not: one per transaction a client started. */
  get mailCommands(): number {
    return this.records.mailCommands;
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
    this.records.clear();
    this.accounting.clear();
    Object.assign(this.faults, noFaults());
  }

  /** The most messages `mailbox` had accepted within any `limits.rateWindowMs`. */
  maxInAnyWindow(mailbox: string): number {
    return this.accounting.maxInAnyWindow(mailbox);
  }

  /** The most sessions authenticated as `mailbox` that were open at the same time. */
  maxConcurrentSessions(mailbox: string): number {
    return this.accounting.maxConcurrentSessions(mailbox);
  }

  /** Recipients `mailbox` has used in the current rolling daily window. */
  recipientsInDailyWindow(mailbox: string): number {
    return this.accounting.recipientsInDailyWindow(mailbox);
  }

  /** Resolves with the accepted messages once there are at least `count`; rejects after `timeoutMs`. */
  waitForMessages(count: number, timeoutMs = DEFAULT_WAIT_TIMEOUT_MS): Promise<ExchangeSmtpMessage[]> {
    return waitFor(
      this,
      () => this.messages.length >= count,
      timeoutMs,
      () => `${count} messages`,
    ).then(() => [...this.messages]);
  }

  /** Resolves once no session is open (useful before counting concurrent sessions); rejects after `timeoutMs`. */
  waitForIdle(timeoutMs = DEFAULT_WAIT_TIMEOUT_MS): Promise<void> {
    return waitFor(
      this,
      () => this.live.size === 0,
      timeoutMs,
      () => `no open sessions (${this.live.size} open)`,
    );
  }

  /** `[host timestamp]`, the bracketed diagnostic Exchange appends to its refusals. */
  private diagnostic(): string {
    return EXCHANGE_REPLIES.diagnostic(this.hostname, new Date(this.clock.now()));
  }

  /** Runs `send` after the configured reply delay. */
  private reply(send: () => void): void {
    const delay = this.faults.delayMs;
    if (delay > 0) setTimeout(send, delay);
    else send();
  }

  /** Takes one use of a counted fault knob and records it as injected. */
  private takeFault(knob: CountedFault, sessionId: string, command: string): boolean {
    if (!takeFault(this.faults, knob)) return false;
    this.records.injection(knob, sessionId, command);
    return true;
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
      const reply = exchangeReply(code, data, context, (c, ctx) => connection._getEnhancedStatusCode(c, ctx));
      const lines = Array.isArray(reply) ? reply : [reply];
      lines.forEach((line, i) => {
        const separator = i < lines.length - 1 ? '-' : ' ';
        this.records.transcript(record, `S: ${code}${separator}${line}`);
      });
      if (code >= 400) this.records.rejection(record.id, record.user, live.lastVerb, code, lines.join(' '));
      send(code, reply, false);
    };
    connection._sendGreeting = () => {
      connection.send(220, EXCHANGE_REPLIES.greeting(this.hostname, new Date(this.clock.now())), false);
    };

    const onCommand = connection._onCommand.bind(connection);
    connection._onCommand = (command, callback) => {
      const line = command.toString();
      const verb = (line.split(' ')[0] ?? '').toUpperCase();
      const inAuthExchange = !!connection._nextHandler;
      this.records.received.push({
        sessionId: record.id,
        secure: !!connection.secure,
        kind: inAuthExchange || verb === 'AUTH' ? 'auth' : 'command',
        text: line,
      });
      const next = () => setImmediate(() => callback?.());
      if (!connection._ready || connection._upgrading) return onCommand(command, callback);
      this.records.command(record, line, verb, inAuthExchange);
      if (!inAuthExchange) live.lastVerb = isSmtpVerb(verb) ? verb : 'UNKNOWN';
      if (!inAuthExchange && verb === 'MAIL') {
        this.records.mailCommands++;
        if (this.faults.delayMs > 0) this.records.injection('delay', record.id, verb);
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
        (f.reply421Command === undefined || f.reply421Command.toUpperCase() === verb) &&
        this.takeFault('reply421OnCommand', record.id, verb)
      ) {
        this.reply(() => {
          connection.send(421, EXCHANGE_REPLIES.serviceNotAvailable, false);
          next();
        });
        return;
      }
      this.reply(() => onCommand(command, callback));
    };
  }

  private onConnect(session: SMTPServerSession, callback: (err?: Error | null) => void): void {
    this.smtp.options.size = this.limits.maxMessageBytes;
    // No AUTH offered before STARTTLS; with noStartTls there is no STARTTLS either, as on a port-25 MX.
    session.disabledCommands = this.faults.noStartTls ? ['AUTH', 'STARTTLS'] : ['AUTH'];
    if (this.takeFault('reply421', session.id, 'CONNECT')) {
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
    if (secret) this.records.addSecret(secret);
    const attempt: ExchangeSmtpAuthAttempt = {
      sessionId: session.id,
      at: this.clock.now(),
      method: auth.method,
      user: auth.username ?? '',
      ok: false,
      outcome: 'ok',
      reply: '',
    };
    const verdict = await checkSmtpAuth(auth, {
      tenant: this.tenant,
      issuer: this.issuer,
      basicAuthEnabled: this.limits.basicAuthEnabled,
      secure: !!session.secure,
      diagnostic: () => this.diagnostic(),
    });
    if (verdict.token) Object.assign(attempt, verdict.token);
    attempt.outcome = verdict.outcome;
    attempt.reply = `${verdict.code} ${verdict.text}`;
    attempt.ok = verdict.user !== undefined;
    this.records.authAttempts.push(attempt);
    if (verdict.user === undefined) throw smtpError(verdict.code, verdict.text);

    const address = verdict.user;
    if (live) {
      live.record.user = address;
      live.record.authMethod = auth.method as SmtpAuthMethod;
      live.record.authenticatedAt = this.clock.now();
      live.authSequence = ++this.authSequence;
      this.accounting.sessionsOpen(address, this.openSessionsOf(address).length);
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
    if (this.takeFault('logonFailure430', session.id, 'MAIL')) return smtpError(430, EXCHANGE_REPLIES.logonFailure);
    const threadLimit = smtpError(432, EXCHANGE_REPLIES.senderThreadLimit(this.hostname));
    if (this.takeFault('force432', session.id, 'MAIL')) return threadLimit;
    const open = this.openSessionsOf(user);
    const rank = open.findIndex((s) => s.record.id === session.id);
    const violation = this.accounting.overConnectionLimit(user, rank, open.length);
    if (violation) {
      this.records.violation(violation);
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
    if (live && this.takeFault('dropMidData', session.id, 'DATA')) {
      stream.once('data', () => {
        dropped = true;
        live.record.transcript.push('S: <connection dropped during DATA>');
        live.connection._socket.destroy();
      });
    }
    stream.on('data', (chunk: Buffer) => chunks.push(chunk));
    stream.on('end', () => {
      const raw = Buffer.concat(chunks);
      this.records.received.push({
        sessionId: session.id,
        secure: !!live?.connection.secure,
        kind: 'data',
        text: raw.toString(),
      });
      if (dropped) return;
      if (live) this.records.transcript(live.record, `C: <${raw.length} bytes of DATA>`);
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
    if (this.accounting.overDailyQuota(user, envelope.to.length)) {
      throw smtpError(554, EXCHANGE_REPLIES.submissionQuotaExceeded);
    }
    const violation = this.accounting.countAccepted(user, arrivedAt, envelope.to.length);
    if (violation) this.records.violation(violation);

    const messageId = parsed.messageId ?? `<${randomUUID()}@${this.hostname}>`;
    this.records.message({
      id: randomBytes(8).toString('hex'),
      sessionId: session.id,
      mailbox: user,
      authMethod: live?.record.authMethod ?? 'XOAUTH2',
      envelope,
      raw,
      parsed,
      receivedAt: arrivedAt,
      tlsVersion: live?.record.tlsVersion,
    });
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
