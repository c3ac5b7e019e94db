/** The core sender: the SendAs check, one SMTP transaction on the pool, one fresh-token retry, classified outcomes, telemetry. */
import { BASIC_AUTH_DEPRECATION, isAllowedFrom, type Config } from '../config';
import type { ConnectionSlots } from '../pacing/connectionSlots';
import { classifySmtpError } from './classify';
import { MailError, ensureError } from '../errors';
import { invocationTelemetry, type Invocation } from '../invocation';
import { silentLogger, type Logger } from '../logger';
import { allRecipients, type MailMessage, type MailSource } from '../message';
import type { SmtpAuthSource } from './smtpAuth';
import type { MailEventProperties, Telemetry } from '../telemetry';
import { ProcessPool, SlotPool, type ConnectionPool } from './connectionPool';
import { readSentInfo, toNodemailerMessage, type RefusedRecipient, type SentInfo } from './nodemailerMessage';
import { type AuthFailureMarker } from './smtpTransport';

export type { RefusedRecipient } from './nodemailerMessage';

/** AUTH_FAILED in basic mode is about the password, not a token: the fix differs from the code's usual one. */
export const BASIC_PASSWORD_REFUSED_HINT =
  "Exchange refused the mailbox's password (535 5.7.3), also after reading it again from Key Vault: put the mailbox's current password (an app password if the account uses MFA) in the Key Vault secret MAIL_PASSWORD_SECRET_NAME. Better, switch MAIL_AUTH_MODE to client-secret, client-certificate or federated-identity: Basic SMTP AUTH is off by default from the end of December 2026.";

/** Who is sending and why, for telemetry and logs, in which invocation. No addresses. */
export interface SendContext extends Invocation {
  id?: string;
  source: MailSource;
  attempt?: number;
  template?: string;
  batchId?: string;
  /** The operation id of the invocation that accepted the message into the outbox (when another one delivers it). */
  acceptOperationId?: string;
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

/**
 * Sends mail as one Microsoft 365 mailbox. One instance per process and mailbox: it owns the connection pool.
 * Dependencies come in as parameters so tests run the real thing against the sandbox.
 */
export class MailSender {
  private readonly pool: ConnectionPool;
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
    this.pool = options.slots
      ? new SlotPool(config, auth, options.slots, {
          logger: this.logger,
          ...(options.idleCloseMs !== undefined ? { idleCloseMs: options.idleCloseMs } : {}),
        })
      : new ProcessPool(config, auth);
    if (auth.mode === 'basic') {
      this.logger.warn(BASIC_AUTH_DEPRECATION);
    }
  }

  /** Sends `message`. Resolves on 250; rejects with a classified MailError otherwise. */
  async send(message: MailMessage, context: SendContext): Promise<SendResult> {
    const now = this.options.now ?? Date.now;
    const started = now();
    const recipients = allRecipients(message);
    const logger = context.logger ?? this.logger;
    const baseProps: MailEventProperties = {
      ...(context.id ? { id: context.id } : {}),
      source: context.source,
      ...(context.template ? { template: context.template } : {}),
      ...(context.batchId ? { batchId: context.batchId } : {}),
      ...invocationTelemetry(context),
      ...(context.acceptOperationId ? { acceptOperationId: context.acceptOperationId } : {}),
      attempt: context.attempt ?? 1,
      recipientCount: recipients.length,
    };
    try {
      this.checkEnvelope(message);
      const info = await this.sendWithTokenRetry(message, logger);
      const result: SendResult = { ...readSentInfo(info), durationMs: now() - started };
      const { durationMs } = result;
      this.options.telemetry?.trackEvent('MailSent', {
        ...baseProps,
        durationMs,
        smtpCode: result.smtp.code,
        ...(result.refused.length > 0 ? { refusedCount: result.refused.length } : {}),
      });
      this.options.telemetry?.trackDuration(durationMs, { source: context.source, outcome: 'sent' });
      logger.info('mail sent', { id: context.id, source: context.source, durationMs, smtpCode: result.smtp.code });
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
        ...(error.smtp?.enhanced ? { smtpEnhancedCode: error.smtp.enhanced } : {}),
      });
      this.options.telemetry?.trackDuration(durationMs, { source: context.source, outcome: 'failed' });
      logger.warn('mail failed', {
        id: context.id,
        code: error.code,
        transient: error.transient,
        // The codes, not the reply's text: Exchange's replies name the mailbox and recipients.
        smtpCode: error.smtp?.code,
        smtpEnhancedCode: error.smtp?.enhanced,
      });
      throw error;
    }
  }

  /** Closes pooled connections and gives back their connection slots (on shutdown, or to let the process exit). */
  async close(): Promise<void> {
    await this.pool.close();
  }

  /** SMTP connections this process holds slots for (tests). */
  get heldSlots(): number {
    return this.pool.heldSlots;
  }

  /**
   * True when this process holds a connection slot of the mailbox, or got one now; false when other instances
   * hold them all. Always true without a shared connection cap.
   */
  connectionReady(): Promise<boolean> {
    return this.pool.connectionReady();
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
  private async sendWithTokenRetry(message: MailMessage, logger: Logger): Promise<SentInfo> {
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
      logger.info('SMTP refused a cached credential; retrying once with a fresh one', {
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

  /** One SMTP transaction on the pool. */
  private async sendOnce(message: MailMessage): Promise<SentInfo> {
    return (await this.pool.send(toNodemailerMessage(message))) as SentInfo;
  }
}
