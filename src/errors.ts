/** MailError and the single table of error codes: every failure the sender can meet, with its transient flag and the admin's fix. */

/** One row per failure. `transient` says whether the same message may succeed later unchanged. */
export const ERROR_CODES = {
  CONFIG_INVALID: {
    transient: false,
    hint: 'Fix the named setting (app settings in Azure, local.settings.json locally) and restart.',
  },
  INVALID_MESSAGE: { transient: false, hint: 'Correct the named field of the message.' },
  TEMPLATE_NOT_FOUND: {
    transient: false,
    hint: 'No template by that name is deployed. Use the name of a folder under templates/ (lower-case letters, digits and dashes); a new template needs a build and deploy.',
  },
  SENDER_NOT_ALLOWED: {
    transient: false,
    hint: 'Send from MAIL_SENDER, or add the address (or @domain) to MAIL_ALLOWED_FROM and grant SendAs in Exchange: Add-RecipientPermission -Identity <from> -Trustee <MAIL_SENDER> -AccessRights SendAs.',
  },
  TOO_MANY_RECIPIENTS: {
    transient: false,
    hint: 'Split the message: Exchange Online accepts at most MAIL_MAX_RECIPIENTS (default 500) recipients per message.',
  },
  MESSAGE_TOO_LARGE: {
    transient: false,
    hint: 'Reduce the message size (attachments): Exchange Online accepts 35 MB by default (MAIL_MAX_MESSAGE_BYTES).',
  },
  SMTP_AUTH_DISABLED: {
    transient: false,
    hint: 'SMTP AUTH is disabled for the tenant or mailbox. Enable it for the mailbox: Set-CASMailbox -Identity <MAIL_SENDER> -SmtpClientAuthenticationDisabled $false (tenant: Set-TransportConfig -SmtpClientAuthenticationDisabled $false). See https://aka.ms/smtp_auth_disabled.',
  },
  BASIC_AUTH_DISABLED: {
    transient: false,
    hint: 'Basic authentication is disabled for SMTP. Switch MAIL_AUTH_MODE to client-secret, client-certificate or federated-identity (OAuth 2.0); Basic SMTP AUTH is off by default from the end of December 2026.',
  },
  AUTH_FAILED: {
    transient: false,
    hint: 'Exchange refused the token (535 5.7.3). Register the Enterprise Application (not the App Registration) object id and grant the mailbox: New-ServicePrincipal -AppId <appid> -ObjectId <oid>; Add-MailboxPermission -Identity <MAIL_SENDER> -User <oid> -AccessRights FullAccess. Also check SMTP.SendAsApp has admin consent. `m365-mailer doctor` prints both lines filled in from the token.',
  },
  NOT_AUTHENTICATED: {
    transient: false,
    hint: 'The server received MAIL FROM without a successful AUTH (530 5.7.57): authentication never happened. Check that STARTTLS is offered and that the client sends AUTH XOAUTH2 before MAIL FROM.',
  },
  SEND_AS_DENIED: {
    transient: false,
    hint: 'The mailbox may not send as this From address: Add-RecipientPermission -Identity <from> -Trustee <MAIL_SENDER> -AccessRights SendAs (allow up to an hour to apply).',
  },
  MAILBOX_LOGON_FAILURE: {
    transient: false,
    hint: 'Exchange could not log on to the mailbox for the app (430 4.2.0): the service principal has no permission on it. Add-MailboxPermission -Identity <MAIL_SENDER> -User <oid> -AccessRights FullAccess.',
  },
  MAILBOX_FULL: {
    transient: false,
    hint: "The sender's mailbox (Sent Items) is over quota (554 5.2.2): clear it or raise the quota.",
  },
  DAILY_QUOTA_EXCEEDED: {
    transient: true,
    hint: "The mailbox reached Exchange's 10,000 recipients in 24 hours (554 5.2.0), counting mail other apps or people sent from it. The outbox waits without spending attempts and tries again every MAIL_DAILY_WINDOW_SECONDS / 96 (15 minutes) until the rolling window frees; to send more, spread load over more sender mailboxes, or use HVE.",
  },
  CONCURRENCY_LIMIT: {
    transient: true,
    hint: 'More than 3 concurrent SMTP sessions for this mailbox (432 4.3.2): another app or device is using the same mailbox, or MAIL_MAX_CONNECTIONS is above 3. The outbox waits without spending attempts and tries again; give other senders their own mailbox, or lower MAIL_MAX_CONNECTIONS.',
  },
  CONNECTION_SLOTS_BUSY: {
    transient: true,
    hint: 'Every one of the MAIL_MAX_CONNECTIONS SMTP connection slots of this mailbox is held by other instances (blob leases in the mail-pacing container). The message is retried shortly; for more throughput add sender mailboxes rather than connections.',
  },
  RELAY_DENIED: {
    transient: false,
    hint: 'Exchange refused to relay (550 5.7.1/5.7.64/5.7.68): authenticate with SMTP AUTH on smtp.office365.com:587, or configure a connector for port 25.',
  },
  RECIPIENT_REJECTED: { transient: false, hint: 'A recipient address was rejected by the server: check the address.' },
  TLS_VERSION: { transient: false, hint: 'Exchange Online requires TLS 1.2 or later (421 4.7.66).' },
  STARTTLS_UNAVAILABLE: {
    transient: false,
    hint: 'The server did not offer STARTTLS, so no token was sent. Check MAIL_SMTP_HOST/MAIL_SMTP_PORT (smtp.office365.com:587) and any proxy that strips STARTTLS.',
  },
  TLS_CERTIFICATE: {
    transient: false,
    hint: "The SMTP server's certificate was not trusted (wrong host, expired, unknown CA, or this machine's clock is wrong). For a private CA set MAIL_TLS_CA_FILE; verification is never turned off.",
  },
  SMTP_UNAVAILABLE: {
    transient: true,
    hint: 'The SMTP service is temporarily unavailable (421); the message is retried.',
  },
  SMTP_TRANSIENT: {
    transient: true,
    hint: 'The server answered with a temporary failure (4xx); the message is retried.',
  },
  SMTP_REJECTED: { transient: false, hint: 'The server rejected the message permanently (5xx); see smtp.response.' },
  CONNECTION_FAILED: {
    transient: true,
    hint: 'Could not reach the SMTP server (DNS, TCP 587 or the connection dropped). Check outbound 587 from the app; the message is retried.',
  },
  TOKEN_INVALID_CLIENT_SECRET: {
    transient: false,
    hint: 'Entra ID refused the client secret (AADSTS7000215/7000222: wrong value or expired). Put the secret VALUE (not its id) of a current secret into the Key Vault secret named by MAIL_CLIENT_SECRET_NAME.',
  },
  TOKEN_UNKNOWN_APP: {
    transient: false,
    hint: 'Entra ID does not know this client id in this tenant (AADSTS700016). Check MAIL_CLIENT_ID and MAIL_TENANT_ID.',
  },
  TOKEN_INVALID_SCOPE: {
    transient: false,
    hint: 'Use MAIL_SMTP_SCOPE=https://outlook.office365.com/.default (the /.default of the Exchange resource), not a permission name.',
  },
  TOKEN_CERTIFICATE: {
    transient: false,
    hint: 'Entra ID refused the certificate assertion (AADSTS700027): upload the certificate in the Key Vault secret MAIL_CLIENT_CERT_NAME to the app registration (Certificates & secrets).',
  },
  TOKEN_FEDERATION: {
    transient: false,
    hint: "No federated credential matches the managed identity (AADSTS700213/70021): add one to the app registration with issuer https://login.microsoftonline.com/<tenant>/v2.0 and subject = the managed identity's object (principal) id.",
  },
  TOKEN_ENDPOINT_UNAVAILABLE: {
    transient: true,
    hint: 'The Entra ID token endpoint failed, could not be reached or did not answer in time; the message is retried. Check MAIL_AUTHORITY_HOST and outbound HTTPS.',
  },
  TOKEN_FAILED: { transient: false, hint: 'Entra ID refused the token request; see the AADSTS code in the message.' },
  KEY_VAULT_FORBIDDEN: {
    transient: false,
    hint: "The app's identity may not read the secret (403). Grant it the 'Key Vault Secrets User' role on the vault (RBAC), and set AZURE_CLIENT_ID for a user-assigned identity.",
  },
  KEY_VAULT_SECRET_NOT_FOUND: {
    transient: false,
    hint: 'No such secret in the vault (404). Create it, or point the *_NAME setting at the right secret.',
  },
  KEY_VAULT_UNAVAILABLE: {
    transient: true,
    hint: 'Key Vault, or the managed identity endpoint that gives its token, failed (5xx, 429), could not be reached or did not answer in time; the read is retried. If it persists, check outbound HTTPS to the vault and its firewall (selected networks, private endpoint).',
  },
  KEY_VAULT_AUTH: {
    transient: false,
    hint: 'No identity could get a token for Key Vault. In Azure, assign a managed identity (AZURE_CLIENT_ID for user-assigned); locally, run the sandbox or sign in with az login.',
  },
  IDEMPOTENCY_CONFLICT: {
    transient: false,
    hint: 'This idempotency key was already used with a different message. Reuse a key only to retry the same request; use a new key for a new message.',
  },
  PAYLOAD_TOO_LARGE: {
    transient: false,
    hint: 'The request body is over the limit (MAIL_MAX_MESSAGE_BYTES × 4/3 for base64, plus JSON overhead). Send smaller attachments.',
  },
  UNSUPPORTED_MEDIA_TYPE: { transient: false, hint: 'Send the body as JSON with Content-Type: application/json.' },
  NOT_FOUND: { transient: false, hint: 'Nothing by that id or name exists here; check the path.' },
  STORAGE_UNAVAILABLE: {
    transient: true,
    hint: "Azure Storage (AzureWebJobsStorage: queue, table or blob) did not answer or refused the request; retry later. If it persists, check the account, and with identity-based connections the app identity's roles: Storage Queue Data Contributor, Storage Table Data Contributor and Storage Blob Data Owner.",
  },
  PAYLOAD_MISSING: {
    transient: false,
    hint: "The message's payload blob (mail-payloads/<id>.json) is gone, so it cannot be sent: it was deleted by hand or by a lifecycle rule shorter than the outbox's retry window. Send the message again.",
  },
  RETRIES_EXHAUSTED: {
    transient: false,
    hint: 'The message used up its delivery attempts without an SMTP outcome (workers crashed or storage failed mid-send). See the function logs for outboxDeliver, then send it again.',
  },
  PAYLOAD_INVALID: {
    transient: false,
    hint: "The message's payload blob (mail-payloads/<id>.json) is not a payload this app wrote (edited by hand, or truncated), so it cannot be sent. Send the message again.",
  },
  POISON_MESSAGE: {
    transient: false,
    hint: 'The outbox worker failed on this message maxDequeueCount times (host.json extensions.queues) without recording an SMTP outcome, usually because storage was unreachable. See the function logs for the invocations of outboxDeliver, then send the message again.',
  },
  UNSUBSCRIBE_NOT_CONFIGURED: {
    transient: false,
    hint: 'Bulk mail carries List-Unsubscribe links, which need MAIL_UNSUBSCRIBE_BASE_URL (the public https base of this app, e.g. https://<app>.azurewebsites.net) and a Key Vault (MAIL_KEY_VAULT_URL) holding the signing key named by MAIL_UNSUBSCRIBE_KEY_NAME. Set them and restart, or send the batch as transactional.',
  },
  UNSUBSCRIBE_TOKEN_INVALID: {
    transient: false,
    hint: 'The unsubscribe link is malformed, was altered, has expired, or was signed with a key that is neither the current unsubscribe key nor the previous one (MAIL_UNSUBSCRIBE_KEY_NAME, <name>-previous). Use the link of a more recent message.',
  },
  UNKNOWN: { transient: true, hint: 'Unexpected error; the message is retried. Report it with the error id.' },
} as const satisfies Record<string, { transient: boolean; hint: string }>;

export type MailErrorCode = keyof typeof ERROR_CODES;

/**
 * Replies that mean "the mailbox is over one of Exchange's limits right now", whoever used it up. Delivery treats
 * them like its own pacing: the message waits, no attempt is spent, and the wait says why. (The CLI, which sends
 * inline, reports them at once.)
 */
export const MAILBOX_THROTTLES = {
  DAILY_QUOTA_EXCEEDED: 'exchange-daily-quota',
  CONCURRENCY_LIMIT: 'exchange-concurrency',
} as const satisfies Partial<Record<MailErrorCode, string>>;
export type MailboxThrottle = (typeof MAILBOX_THROTTLES)[keyof typeof MAILBOX_THROTTLES];

/** The throttle an error means, if it is one of {@link MAILBOX_THROTTLES}. */
export function mailboxThrottleOf(error: MailError): MailboxThrottle | undefined {
  return Object.hasOwn(MAILBOX_THROTTLES, error.code)
    ? MAILBOX_THROTTLES[error.code as keyof typeof MAILBOX_THROTTLES]
    : undefined;
}

/** What the SMTP server answered, when there was an answer. */
export interface SmtpReply {
  /** Basic reply code, e.g. 535. */
  code: number;
  /** Enhanced status code, e.g. "5.7.3". */
  enhanced?: string;
  /** The server's reply line. Never contains credentials: servers do not echo them. */
  response: string;
}

/** The serialisable shape of a classified error, as HTTP bodies, status records and the CLI show it. */
export interface ClassifiedError {
  code: MailErrorCode;
  message: string;
  transient: boolean;
  smtp?: SmtpReply;
  hint: string;
  /** Field-level problems of invalid input, each naming its field path (e.g. "to[1]"). */
  details?: FieldProblem[];
}

/** One invalid field of a request or message. */
export interface FieldProblem {
  path: string;
  message: string;
}

/** The one error class of the sender. Its message is safe to show: it never holds addresses' passwords, tokens or secrets. */
export class MailError extends Error {
  override readonly name = 'MailError';
  readonly code: MailErrorCode;
  readonly transient: boolean;
  readonly smtp: SmtpReply | undefined;
  readonly hint: string;
  readonly details: FieldProblem[] | undefined;

  constructor(
    code: MailErrorCode,
    message: string,
    options: {
      cause?: unknown;
      smtp?: SmtpReply | undefined;
      hint?: string;
      transient?: boolean;
      details?: FieldProblem[] | undefined;
    } = {},
  ) {
    super(message, { cause: options.cause });
    this.code = code;
    this.transient = options.transient ?? ERROR_CODES[code].transient;
    this.smtp = options.smtp;
    this.hint = options.hint ?? ERROR_CODES[code].hint;
    this.details = options.details;
  }

  toJSON(): ClassifiedError {
    return {
      code: this.code,
      message: this.message,
      transient: this.transient,
      ...(this.smtp ? { smtp: this.smtp } : {}),
      hint: this.hint,
      ...(this.details ? { details: this.details } : {}),
    };
  }
}

/** Turns anything thrown into an Error (after @azure/functions' ensureErrorType). */
export function ensureError(value: unknown): Error {
  if (value instanceof Error) return value;
  return new Error(typeof value === 'string' ? value : `Non-error thrown: ${JSON.stringify(value)}`);
}
