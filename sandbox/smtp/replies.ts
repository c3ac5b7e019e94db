/** Exchange Online's SMTP reply texts: the one place the sandbox writes them (docs/exchange-online.md). */
import type { SMTPServerError } from 'smtp-server';

/** Exchange's reply texts, after the code. Functions take what the real text embeds. */
export const EXCHANGE_REPLIES = {
  /** The 220 greeting. */
  greeting: (host: string, now: Date) => `${host} Microsoft ESMTP MAIL Service ready at ${now.toUTCString()}`,
  /** The first line of the EHLO reply, as smtp-server's `heloResponse` format (server name, client name). */
  helo: '%s Hello %s',
  /** `[host timestamp]`, the bracketed diagnostic Exchange appends to its refusals. */
  diagnostic: (host: string, now: Date) => `[${host} ${now.toISOString()}]`,
  startTls: '2.0.0 SMTP server ready',
  authSuccessful: '2.7.0 Authentication successful',
  senderOk: '2.1.0 Sender OK',
  recipientOk: '2.1.5 Recipient OK',
  startMailInput: 'Start mail input; end with <CRLF>.<CRLF>',
  closing: '2.0.0 Service closing transmission channel',
  unrecognizedCommand: '5.3.3 Unrecognized command',
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
  senderThreadLimit: (host: string) => `4.3.2 STOREDRV.ClientSubmit; sender thread limit exceeded [Hostname=${host}]`,
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

/** An enhanced status code (`5.7.3`) at the start of a reply text. */
export const ENHANCED_CODE = /^([245]\.\d{1,3}\.\d{1,3})(?: |$)/;

/** An error smtp-server answers with `responseCode` and `text`. */
export function smtpError(responseCode: number, text: string): SMTPServerError {
  const error: SMTPServerError = new Error(text);
  error.responseCode = responseCode;
  return error;
}

/**
 * Rewrites smtp-server's own reply texts into Exchange's and puts the enhanced status code in the text.
 * `context` is smtp-server's (false: a text already final); `enhancedCode` is smtp-server's code for the others.
 */
export function exchangeReply(
  code: number,
  data: string | string[] | null | undefined,
  context: string | false | undefined,
  enhancedCode: (code: number, context: string | undefined) => string,
): string | string[] {
  if (Array.isArray(data)) return data;
  const text = data ?? '';
  if (context === false || ENHANCED_CODE.test(text)) return text;
  if (context === 'MAIL_FROM_OK') return EXCHANGE_REPLIES.senderOk;
  if (context === 'RCPT_TO_OK') return EXCHANGE_REPLIES.recipientOk;
  if (code === 220 && text === 'Ready to start TLS') return EXCHANGE_REPLIES.startTls;
  if (code === 354) return EXCHANGE_REPLIES.startMailInput;
  if (code === 221) return EXCHANGE_REPLIES.closing;
  if (code === 235) return EXCHANGE_REPLIES.authSuccessful;
  if (code === 552 && /maximum message size/i.test(text)) return EXCHANGE_REPLIES.messageTooBig;
  if (code === 421) return EXCHANGE_REPLIES.serviceNotAvailable;
  if (code === 500 && /not recognized/i.test(text)) return EXCHANGE_REPLIES.unrecognizedCommand;
  const enhanced = enhancedCode(code, context);
  return enhanced ? `${enhanced} ${text}` : text;
}
