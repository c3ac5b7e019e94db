/** The core sender: SendAs check, pooled nodemailer over STARTTLS with per-connection XOAUTH2, one fresh-token retry, classified outcomes, telemetry. */
import nodemailer from 'nodemailer';
import type { Config } from '../config';
import type { ConnectionSlot, ConnectionSlots } from '../pacing/connectionSlots';
import { classifySmtpError, classifyTokenError, parseSmtpReply } from './classify';
import { MailError, ensureError, type SmtpReply } from '../errors';
import { silentLogger, type Logger } from '../logger';
import { allRecipients, type Address, type MailMessage } from '../message';
import type { SmtpAuthSource, SmtpLogin } from './smtpAuth';
import type { MailEventProperties, Telemetry } from '../telemetry';
import { trustedCas } from './tlsTrust';

/** Pooled connections idle longer than this are closed: idle sessions count against Exchange's 3-connection limit. */
export const IDLE_CLOSE_MS = 5_000;
/** Messages per pooled connection before it is recycled. */
export const MESSAGES_PER_CONNECTION = 100;
export const CONNECTION_TIMEOUT_MS = 15_000;
export const GREETING_TIMEOUT_MS = 15_000;
export const SOCKET_TIMEOUT_MS = 60_000;

/** Names of our nodemailer custom auth handlers; they speak AUTH XOAUTH2 and AUTH LOGIN on the wire. */
const XOAUTH2_HANDLER = 'M365-XOAUTH2';
const LOGIN_HANDLER = 'M365-LOGIN';

export const BASIC_AUTH_DEPRECATION =
  'MAIL_AUTH_MODE=basic is deprecated: Microsoft turns Basic SMTP AUTH off by default at the end of December 2026. Move to client-secret, client-certificate or federated-identity.';

/** AUTH_FAILED in basic mode is about the password, not a token: the fix differs from the code's usual one. */
export const BASIC_PASSWORD_REFUSED_HINT =
  "Exchange refused the mailbox's password (535 5.7.3), also after reading it again from Key Vault: put the mailbox's current password (an app password if the account uses MFA) in the Key Vault secret MAIL_PASSWORD_SECRET_NAME. Better, switch MAIL_AUTH_MODE to client-secret, client-certificate or federated-identity: Basic SMTP AUTH is off by default from the end of December 2026.";

export type MailSource = 'http' | 'notification' | 'digest' | 'cli';

/** Who is sending and why, for telemetry and logs. No addresses. */
export interface SendContext {
  id?: string;
  source: MailSource;
  attempt?: number;
  template?: string;
  batchId?: string;
  invocationId?: string;
}

export interface SendResult {
  messageId: string;
  smtp: { code: number; response: string };
  accepted: string[];
  /** Recipients the server refused while accepting the others. */
  rejected: string[];
  /** The same recipients, each with the server's reply to its RCPT TO. */
  refused: RefusedRecipient[];
  durationMs: number;
}

/** A recipient the server refused while it accepted the message for others. */
export interface RefusedRecipient {
  address: string;
  smtp?: SmtpReply;
}

interface RecipientError {
  recipient?: string;
  response?: string;
  responseCode?: number;
}

type Transporter = ReturnType<typeof nodemailer.createTransport>;

/** With a shared connection cap: one SMTP connection per leased slot. */
interface Lane {
  slot: ConnectionSlot;
  /**
   * The instance's first connection, kept until idle for IDLE_CLOSE_MS. Further ones are given back as soon as they
   * are idle, so that one busy instance does not keep every slot from the others.
   */
  primary: boolean;
  transporter: Transporter;
  inFlight: number;
  idleTimer?: NodeJS.Timeout;
}

/** A closed connection is gone from the server's count a moment after the socket closes; its slot is freed after this. */
const SLOT_RELEASE_DELAY_MS = 200;

interface CustomAuthContext {
  auth: { credentials?: { user?: string } };
  sendCommand(command: string): Promise<{ status: number; response: string; code?: string }>;
}

/**
 * What the auth handlers attach to the error they raise. nodemailer relabels whatever a handler throws
 * (code EAUTH, message suffix), so a classified credential failure travels beside it, untouched.
 */
interface AuthFailureMarker {
  tokenFromCache?: boolean;
  credentialError?: MailError;
}

/** Gets credentials inside an auth handler; a failure (Key Vault, Entra ID) is carried out as-is. */
async function credentials(auth: SmtpAuthSource): Promise<SmtpLogin> {
  try {
    return await auth.get();
  } catch (error) {
    const credentialError = error instanceof MailError ? error : classifyTokenError(error);
    throw Object.assign(new Error(`Credentials unavailable: ${credentialError.code}`), { credentialError });
  }
}

/** Returns true when `from` is the sender or allowed by MAIL_ALLOWED_FROM (address or @domain). */
export function isAllowedFrom(from: string, allowedFrom: readonly string[]): boolean {
  const address = from.toLowerCase();
  const domain = address.slice(address.lastIndexOf('@'));
  return allowedFrom.includes(address) || allowedFrom.includes(domain);
}

/** Each refused recipient with the server's reply to its RCPT TO, when nodemailer kept it. */
function refusals(rejected: string[], errors: RecipientError[] | undefined): RefusedRecipient[] {
  return rejected.map((address) => {
    const error = errors?.find((e) => e.recipient?.toLowerCase() === address.toLowerCase());
    const smtp = error?.response ? parseSmtpReply(error.response, error.responseCode) : undefined;
    return { address, ...(smtp ? { smtp } : {}) };
  });
}

function toNodemailerAddress(a: Address): { name: string; address: string } | string {
  return a.name ? { name: a.name, address: a.address } : a.address;
}

/**
 * Sends mail as one Microsoft 365 mailbox. One instance per process and mailbox: it owns the connection pool.
 * Dependencies come in as parameters so tests run the real thing against the sandbox.
 */
export class MailSender {
  private transporter?: Transporter;
  private readonly lanes: Lane[] = [];
  private acquiring?: Promise<Lane | undefined>;
  private readonly logger: Logger;

  constructor(
    private readonly config: Config,
    private readonly auth: SmtpAuthSource,
    private readonly options: {
      telemetry?: Telemetry;
      logger?: Logger;
      now?: () => number;
      /** The mailbox's shared connection cap. Without it the process alone keeps to MAIL_MAX_CONNECTIONS. */
      slots?: ConnectionSlots;
      /** How long the first capped connection is kept idle; default {@link IDLE_CLOSE_MS}. */
      idleCloseMs?: number;
    } = {},
  ) {
    this.logger = options.logger ?? silentLogger;
    if (auth.mode === 'basic') {
      this.logger.warn(BASIC_AUTH_DEPRECATION);
    }
  }

  /** Sends `message`. Resolves on 250; rejects with a classified MailError otherwise. */
  async send(message: MailMessage, context: SendContext): Promise<SendResult> {
    const now = this.options.now ?? Date.now;
    const started = now();
    const recipients = allRecipients(message);
    const baseProps: MailEventProperties = {
      ...(context.id ? { id: context.id } : {}),
      source: context.source,
      ...(context.template ? { template: context.template } : {}),
      ...(context.batchId ? { batchId: context.batchId } : {}),
      ...(context.invocationId ? { invocationId: context.invocationId } : {}),
      attempt: context.attempt ?? 1,
      recipientCount: recipients.length,
    };
    try {
      this.checkEnvelope(message);
      const info = await this.sendWithTokenRetry(message);
      const durationMs = now() - started;
      const reply = info.response as string;
      const result: SendResult = {
        messageId: info.messageId as string,
        smtp: { code: Number(/^\d{3}/.exec(reply)?.[0] ?? 250), response: reply },
        accepted: (info.accepted as Array<string | { address: string }>).map((a) =>
          typeof a === 'string' ? a : a.address,
        ),
        rejected: (info.rejected as Array<string | { address: string }>).map((a) =>
          typeof a === 'string' ? a : a.address,
        ),
        refused: [],
        durationMs,
      };
      result.refused = refusals(result.rejected, (info as { rejectedErrors?: RecipientError[] }).rejectedErrors);
      this.options.telemetry?.trackEvent('MailSent', {
        ...baseProps,
        durationMs,
        smtpCode: result.smtp.code,
        ...(result.refused.length > 0 ? { refusedCount: result.refused.length } : {}),
      });
      this.options.telemetry?.trackDuration(durationMs, { source: context.source, outcome: 'sent' });
      this.logger.info('mail sent', { id: context.id, source: context.source, durationMs, smtpCode: result.smtp.code });
      return result;
    } catch (thrown) {
      const error = thrown instanceof MailError ? thrown : classifySmtpError(thrown);
      const durationMs = now() - started;
      this.options.telemetry?.trackEvent('MailFailed', {
        ...baseProps,
        durationMs,
        errorCode: error.code,
        transient: error.transient,
        ...(error.smtp ? { smtpCode: error.smtp.code } : {}),
      });
      this.options.telemetry?.trackDuration(durationMs, { source: context.source, outcome: 'failed' });
      this.logger.warn('mail failed', {
        id: context.id,
        code: error.code,
        transient: error.transient,
        smtp: error.smtp?.response,
      });
      throw error;
    }
  }

  /** Connects, upgrades with STARTTLS and authenticates without sending anything (health check, doctor). */
  async verify(): Promise<{ smtp?: SmtpReply }> {
    const transporter = this.createTransport(false);
    try {
      await transporter.verify();
      return {};
    } catch (error) {
      throw error instanceof MailError ? error : classifySmtpError(error);
    } finally {
      transporter.close();
    }
  }

  /** Closes pooled connections and gives back their connection slots (on shutdown, or to let the process exit). */
  async close(): Promise<void> {
    this.transporter?.close();
    this.transporter = undefined;
    await Promise.all([...this.lanes].map((lane) => this.closeLane(lane)));
  }

  /** SMTP connections this process holds slots for (tests, the doctor). */
  get heldSlots(): number {
    return this.lanes.length;
  }

  /** SendAs: refused before any connection; the envelope MAIL FROM is the From address. */
  private checkEnvelope(message: MailMessage): void {
    if (!isAllowedFrom(message.from.address, this.config.allowedFrom)) {
      throw new MailError(
        'SENDER_NOT_ALLOWED',
        `From address is not MAIL_SENDER and not allowed by MAIL_ALLOWED_FROM`,
        { details: [{ path: 'from', message: 'not an allowed sender for this mailbox' }] },
      );
    }
    const count = allRecipients(message).length;
    if (count > this.config.limits.maxRecipients) {
      throw new MailError(
        'TOO_MANY_RECIPIENTS',
        `${count} recipients; the limit is ${this.config.limits.maxRecipients}`,
        {
          details: [{ path: 'to', message: `at most ${this.config.limits.maxRecipients} recipients per message` }],
        },
      );
    }
  }

  /** Exchange answers a refused token with 535 5.7.3 directly, so nodemailer never renews: drop the token and retry once. */
  private async sendWithTokenRetry(message: MailMessage) {
    try {
      return await this.sendOnce(message);
    } catch (first) {
      if (first instanceof MailError) throw first;
      const marker = ensureError(first) as AuthFailureMarker;
      if (marker.credentialError) throw marker.credentialError;
      const error = classifySmtpError(first);
      const retryable = error.code === 'AUTH_FAILED' && (marker.tokenFromCache ?? true) && this.auth.mode !== 'basic';
      const rotatedPassword =
        (error.code === 'AUTH_FAILED' || error.code === 'BASIC_AUTH_DISABLED') && this.auth.mode === 'basic';
      if (!retryable && !rotatedPassword) throw error;
      this.logger.info('SMTP refused a cached credential; retrying once with a fresh one', {
        code: error.smtp?.enhanced,
      });
      this.auth.invalidate();
      try {
        return await this.sendOnce(message);
      } catch (second) {
        if (second instanceof MailError) throw second;
        const credentialError = (ensureError(second) as AuthFailureMarker).credentialError;
        if (credentialError) throw credentialError;
        const refused = classifySmtpError(second);
        if (refused.code !== 'AUTH_FAILED' || this.auth.mode !== 'basic') throw refused;
        throw new MailError('AUTH_FAILED', refused.message, {
          cause: second,
          ...(refused.smtp ? { smtp: refused.smtp } : {}),
          hint: BASIC_PASSWORD_REFUSED_HINT,
        });
      }
    }
  }

  /** One SMTP transaction: on the process pool, or on a connection whose slot this process holds. */
  private async sendOnce(message: MailMessage) {
    if (!this.options.slots) {
      this.transporter ??= this.createTransport(true, this.config.limits.maxConnections);
      return this.transporter.sendMail(this.toNodemailer(message));
    }
    const lane = await this.takeLane();
    lane.inFlight++;
    clearTimeout(lane.idleTimer);
    try {
      return await lane.transporter.sendMail(this.toNodemailer(message));
    } finally {
      lane.inFlight--;
      if (lane.inFlight === 0) this.idle(lane);
    }
  }

  /**
   * True when this process holds a connection slot of the mailbox, or got one now; false when other instances
   * hold them all. Delivery asks before it takes a send slot, so that a send slot is not spent on a message that
   * could not get a connection. Always true without a shared connection cap.
   */
  async connectionReady(): Promise<boolean> {
    if (!this.options.slots || this.lanes.length > 0) return true;
    this.acquiring ??= this.acquireLane().finally(() => (this.acquiring = undefined));
    const lane = await this.acquiring;
    if (lane?.inFlight === 0) this.idle(lane);
    return lane !== undefined;
  }

  private idle(lane: Lane): void {
    if (!this.lanes.includes(lane)) return;
    clearTimeout(lane.idleTimer);
    const keepMs = lane.primary ? (this.options.idleCloseMs ?? IDLE_CLOSE_MS) : 0;
    lane.idleTimer = setTimeout(() => void this.closeLane(lane), keepMs);
    lane.idleTimer.unref();
  }

  /**
   * The least busy connection this process holds a slot for; a further slot when all are busy and one is free.
   * Throws CONNECTION_SLOTS_BUSY when every slot of the mailbox is held by other instances.
   */
  private async takeLane(): Promise<Lane> {
    const best = this.lanes.reduce<Lane | undefined>((a, b) => (a && a.inFlight <= b.inFlight ? a : b), undefined);
    if (best && (best.inFlight === 0 || this.lanes.length >= this.config.limits.maxConnections)) return best;
    this.acquiring ??= this.acquireLane().finally(() => (this.acquiring = undefined));
    const lane = (await this.acquiring) ?? best;
    if (lane) return lane;
    throw new MailError(
      'CONNECTION_SLOTS_BUSY',
      `All ${this.config.limits.maxConnections} SMTP connection slots of the mailbox are held by other instances`,
    );
  }

  private async acquireLane(): Promise<Lane | undefined> {
    const lane: Partial<Lane> = {};
    const slot = await this.options.slots!.acquire(() => {
      // The lease could not be renewed: another instance may take the slot, so the connection must go now.
      if (lane.slot) void this.closeLane(lane as Lane);
    });
    if (!slot) return undefined;
    Object.assign(lane, {
      slot,
      primary: !this.lanes.some((other) => other.primary),
      transporter: this.createTransport(true, 1),
      inFlight: 0,
    });
    this.lanes.push(lane as Lane);
    return lane as Lane;
  }

  /** Closes the lane's connection, then gives its slot back once the server has seen the socket close. */
  private async closeLane(lane: Lane): Promise<void> {
    const index = this.lanes.indexOf(lane);
    if (index < 0) return;
    this.lanes.splice(index, 1);
    clearTimeout(lane.idleTimer);
    lane.transporter.close();
    await new Promise((resolve) => setTimeout(resolve, SLOT_RELEASE_DELAY_MS));
    await lane.slot.release();
  }

  private createTransport(pool: boolean, maxConnections = 1): Transporter {
    const { host, port } = this.config.smtp;
    const xoauth2 = this.auth.mode !== 'basic';
    const options = {
      host,
      port,
      secure: false,
      requireTLS: true,
      tls: {
        minVersion: 'TLSv1.2' as const,
        rejectUnauthorized: true,
        ...(trustedCas(this.config.extraCaPem) ? { ca: trustedCas(this.config.extraCaPem) } : {}),
      },
      connectionTimeout: CONNECTION_TIMEOUT_MS,
      greetingTimeout: GREETING_TIMEOUT_MS,
      socketTimeout: SOCKET_TIMEOUT_MS,
      disableFileAccess: true,
      disableUrlAccess: true,
      logger: false,
      // A method name of our own: nodemailer replaces a plain 'XOAUTH2' with the server's first mechanism (LOGIN)
      // when it has no token generator, and our handler supplies the token per connection instead.
      auth: { type: 'custom', method: xoauth2 ? XOAUTH2_HANDLER : LOGIN_HANDLER, user: this.config.sender },
      customAuth: xoauth2
        ? { [XOAUTH2_HANDLER]: (ctx: CustomAuthContext) => this.xoauth2(ctx) }
        : { [LOGIN_HANDLER]: (ctx: CustomAuthContext) => this.login(ctx) },
    };
    if (!pool) return nodemailer.createTransport(options as never);
    return nodemailer.createTransport({
      ...options,
      pool: true,
      maxConnections,
      maxMessages: MESSAGES_PER_CONNECTION,
      idleTimeout: IDLE_CLOSE_MS,
    } as never);
  }

  /** AUTH XOAUTH2 with a token fetched for this connection, so a long-lived pool never presents an expired token. */
  private async xoauth2(ctx: CustomAuthContext): Promise<void> {
    const login = await credentials(this.auth);
    if (login.kind !== 'xoauth2') throw new MailError('CONFIG_INVALID', 'XOAUTH2 needs an OAuth MAIL_AUTH_MODE');
    const payload = Buffer.from(`user=${login.user}\x01auth=Bearer ${login.accessToken}\x01\x01`).toString('base64');
    let reply = await ctx.sendCommand(`AUTH XOAUTH2 ${payload}`);
    // RFC 7628: a 334 carries an error challenge; an empty line then ends the exchange with the final status.
    if (reply.status === 334) reply = await ctx.sendCommand('');
    if (reply.status !== 235) {
      const error = Object.assign(new Error(`Authentication failed`), { tokenFromCache: login.fromCache });
      throw error;
    }
  }

  /** AUTH LOGIN with the app password (legacy basic mode). */
  private async login(ctx: CustomAuthContext): Promise<void> {
    const login = await credentials(this.auth);
    if (login.kind !== 'password') throw new MailError('CONFIG_INVALID', 'AUTH LOGIN needs MAIL_AUTH_MODE=basic');
    const steps = [
      'AUTH LOGIN',
      Buffer.from(login.user).toString('base64'),
      Buffer.from(login.password).toString('base64'),
    ];
    for (const [index, step] of steps.entries()) {
      const reply = await ctx.sendCommand(step);
      const expected = index < steps.length - 1 ? 334 : 235;
      if (reply.status !== expected) throw new Error('Authentication failed');
    }
  }

  private toNodemailer(message: MailMessage) {
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
}
