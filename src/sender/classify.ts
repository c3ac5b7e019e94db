/** Classifies failures from nodemailer, MSAL and the Azure SDK into MailError codes, using Exchange Online's reply texts (docs/exchange-online.md). */
import { MailError, ensureError, type MailErrorCode, type SmtpReply } from '../errors';
import { isTimeoutError, isUnreachableError } from '../timeouts';

/** Socket-level error codes that mean "try again later". */
const TRANSIENT_SOCKET_CODES = new Set([
  'ECONNREFUSED',
  'ECONNRESET',
  'ETIMEDOUT',
  'EPIPE',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'EAI_AGAIN',
  'ENOTFOUND',
  'ECONNECTION',
  'ESOCKET',
  'EDNS',
  'ETIMEOUT',
]);

/** OpenSSL verification failures: the certificate, not the network. */
const CERTIFICATE_ERROR_CODES = new Set([
  'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
  'SELF_SIGNED_CERT_IN_CHAIN',
  'DEPTH_ZERO_SELF_SIGNED_CERT',
  'CERT_HAS_EXPIRED',
  'CERT_NOT_YET_VALID',
  'ERR_TLS_CERT_ALTNAME_INVALID',
  'UNABLE_TO_GET_ISSUER_CERT_LOCALLY',
  'CERT_UNTRUSTED',
]);

/** OpenSSL's codes for a handshake with no protocol version both sides allow. */
const TLS_VERSION_ERROR_CODES = new Set([
  'ERR_SSL_UNSUPPORTED_PROTOCOL',
  'ERR_SSL_TLSV1_ALERT_PROTOCOL_VERSION',
  'ERR_SSL_NO_PROTOCOLS_AVAILABLE',
]);

/** The server, not Exchange's 421 4.7.66 to an old client: this app never offers less than TLS 1.2. */
const SERVER_TLS_VERSION_HINT =
  'The SMTP server offers no TLS 1.2 or later, which this app requires, as Exchange Online does. Check MAIL_SMTP_HOST and MAIL_SMTP_PORT (smtp.office365.com, port 587), and any TLS-inspecting proxy between the app and Exchange.';

/** Enhanced status codes (and reply patterns) of Exchange Online, most specific first. */
const SMTP_RULES: Array<{ test: (reply: SmtpReply) => boolean; code: MailErrorCode }> = [
  { test: (r) => r.enhanced === '5.7.139' && /basic authentication/i.test(r.response), code: 'BASIC_AUTH_DISABLED' },
  { test: (r) => r.enhanced === '5.7.30', code: 'BASIC_AUTH_DISABLED' },
  { test: (r) => r.enhanced === '5.7.139', code: 'SMTP_AUTH_DISABLED' },
  { test: (r) => r.code === 535, code: 'AUTH_FAILED' },
  { test: (r) => r.enhanced === '5.7.57' || (r.code === 530 && r.enhanced === '5.7.0'), code: 'NOT_AUTHENTICATED' },
  { test: (r) => r.enhanced === '5.2.252' || r.enhanced === '5.7.60', code: 'SEND_AS_DENIED' },
  {
    test: (r) => r.code === 432 || (r.enhanced === '4.3.2' && /thread limit|concurrent/i.test(r.response)),
    code: 'CONCURRENCY_LIMIT',
  },
  { test: (r) => r.enhanced === '5.2.0' && /SubmissionQuotaExceeded/i.test(r.response), code: 'DAILY_QUOTA_EXCEEDED' },
  { test: (r) => r.enhanced === '5.2.2', code: 'MAILBOX_FULL' },
  { test: (r) => r.code === 430 || /MapiExceptionLogonFailed/i.test(r.response), code: 'MAILBOX_LOGON_FAILURE' },
  { test: (r) => r.enhanced === '4.7.66', code: 'TLS_VERSION' },
  { test: (r) => ['5.7.64', '5.7.68', '5.7.1'].includes(r.enhanced ?? ''), code: 'RELAY_DENIED' },
  { test: (r) => r.code === 552 || r.enhanced === '5.3.4', code: 'MESSAGE_TOO_LARGE' },
  { test: (r) => r.enhanced === '4.5.3' || r.enhanced === '5.5.3', code: 'TOO_MANY_RECIPIENTS' },
  { test: (r) => /^5\.1\.\d+$/.test(r.enhanced ?? ''), code: 'RECIPIENT_REJECTED' },
  { test: (r) => r.code === 421, code: 'SMTP_UNAVAILABLE' },
  { test: (r) => r.code >= 400 && r.code < 500, code: 'SMTP_TRANSIENT' },
  { test: (r) => r.code >= 500, code: 'SMTP_REJECTED' },
];

/** Parses "535 5.7.3 Authentication unsuccessful" into its parts. */
export function parseSmtpReply(response: string, responseCode?: number): SmtpReply | undefined {
  const match = /^(\d{3})[ -](?:(\d\.\d{1,3}\.\d{1,3})\s)?/.exec(response.trim());
  const code = responseCode ?? (match ? Number(match[1]) : undefined);
  if (!code) return undefined;
  return { code, ...(match?.[2] ? { enhanced: match[2] } : {}), response: response.trim().slice(0, 500) };
}

interface NodemailerLikeError extends Error {
  code?: string;
  /** nodemailer keeps a socket error's own code here when it relabels it (ESOCKET, ECONNECTION). */
  originalCode?: string;
  responseCode?: number;
  response?: string;
  command?: string;
  rejected?: string[];
  rejectedErrors?: NodemailerLikeError[];
}

/** Classifies an error thrown by nodemailer's sendMail/verify. */
export function classifySmtpError(value: unknown): MailError {
  if (value instanceof MailError) return value;
  const error = ensureError(value) as NodemailerLikeError;
  // EENVELOPE carries the first recipient rejection in rejectedErrors; use its reply.
  // requireTLS and no usable STARTTLS: refused before AUTH, whatever the server answered.
  if (error.code === 'ETLS' || error.command === 'STARTTLS') {
    return new MailError('STARTTLS_UNAVAILABLE', `STARTTLS failed or was not offered: ${error.message}`, {
      cause: error,
      ...(error.response ? { smtp: parseSmtpReply(error.response, error.responseCode) } : {}),
    });
  }
  const source = error.rejectedErrors?.[0] ?? error;
  const response = source.response ?? error.response;
  if (response) {
    const reply = parseSmtpReply(response, source.responseCode ?? error.responseCode);
    if (reply) {
      const rule = SMTP_RULES.find((r) => r.test(reply));
      const code = rule?.code ?? 'SMTP_REJECTED';
      return new MailError(code, `SMTP ${source.command ?? error.command ?? 'reply'}: ${reply.response}`, {
        cause: error,
        smtp: reply,
      });
    }
  }
  const causeCode = error.originalCode ?? (error.cause as { code?: string } | undefined)?.code;
  const tlsCode = [error.code, causeCode].find((c) => c && CERTIFICATE_ERROR_CODES.has(c));
  if (tlsCode || /certificate|self[- ]signed|altname/i.test(error.message)) {
    return new MailError('TLS_CERTIFICATE', `TLS certificate of the SMTP server not trusted: ${error.message}`, {
      cause: error,
    });
  }
  if (
    [error.code, causeCode].some((c) => c && TLS_VERSION_ERROR_CODES.has(c)) ||
    /alert protocol version|unsupported protocol|no protocols available/i.test(error.message)
  ) {
    return new MailError('TLS_VERSION', `TLS handshake with the SMTP server failed: ${error.message}`, {
      cause: error,
      hint: SERVER_TLS_VERSION_HINT,
    });
  }
  if (error.code === 'ETLS' || /STARTTLS/i.test(error.message)) {
    return new MailError('STARTTLS_UNAVAILABLE', `STARTTLS failed or was not offered: ${error.message}`, {
      cause: error,
    });
  }
  if ((error.code && TRANSIENT_SOCKET_CODES.has(error.code)) || (causeCode && TRANSIENT_SOCKET_CODES.has(causeCode))) {
    return new MailError('CONNECTION_FAILED', `SMTP connection failed (${error.code}): ${error.message}`, {
      cause: error,
    });
  }
  if (error.code === 'EAUTH') {
    return new MailError('AUTH_FAILED', `SMTP authentication failed: ${error.message}`, { cause: error });
  }
  return new MailError('UNKNOWN', `SMTP send failed: ${error.message}`, { cause: error });
}

/**
 * AADSTS700027 for a certificate past its end date. Uploading the certificate (the code's usual fix) does not help:
 * it takes a new one.
 */
export const CERTIFICATE_EXPIRED_HINT =
  "Entra ID refused the certificate because it has expired (AADSTS700027, 'The key used is expired'; the dates are in the message). Put a new certificate in Key Vault (a new version of the secret MAIL_CLIENT_CERT_NAME, or let the Key Vault certificate's policy renew it) and upload it to the app registration (Certificates & secrets). The app reads Key Vault again when Entra ID refuses its certificate, so no restart is needed.";

interface MsalLikeError extends Error {
  errorCode?: string;
  errorMessage?: string;
  subError?: string;
  status?: number;
}

/** Classifies an MSAL (Entra ID) token failure by its AADSTS code or HTTP status. */
export function classifyTokenError(value: unknown): MailError {
  if (value instanceof MailError) return value;
  const error = ensureError(value) as MsalLikeError;
  const text = `${error.errorCode ?? ''} ${error.errorMessage ?? ''} ${error.message}`;
  const aadsts = /AADSTS(\d+)/.exec(text)?.[1];
  const first = (error.errorMessage ?? error.message).split(/\r?\n/)[0] ?? '';
  const message = `Token request to Entra ID failed: ${first}`.slice(0, 600);
  const byAadsts: Record<string, MailErrorCode> = {
    '7000215': 'TOKEN_INVALID_CLIENT_SECRET',
    '7000222': 'TOKEN_INVALID_CLIENT_SECRET',
    '700016': 'TOKEN_UNKNOWN_APP',
    '90002': 'TOKEN_UNKNOWN_APP',
    '70011': 'TOKEN_INVALID_SCOPE',
    '1002012': 'TOKEN_INVALID_SCOPE',
    '700027': 'TOKEN_CERTIFICATE',
    '700213': 'TOKEN_FEDERATION',
    '70021': 'TOKEN_FEDERATION',
  };
  if (aadsts === '700027' && /key used is expired/i.test(text)) {
    return new MailError('TOKEN_CERTIFICATE', message, { cause: error, hint: CERTIFICATE_EXPIRED_HINT });
  }
  if (aadsts && byAadsts[aadsts]) return new MailError(byAadsts[aadsts], message, { cause: error });
  if (/invalid_scope/.test(text)) return new MailError('TOKEN_INVALID_SCOPE', message, { cause: error });
  // After a 429 or 5xx, MSAL refuses the same request itself for Retry-After or 60 s, replaying the answer as a
  // ServerError whose code is the AADSTS number(s) and which has no HTTP status: the same transient failure.
  const throttleReplay =
    error.name === 'ServerError' && error.status === undefined && /^\d+(?: \d+)*$/.test(error.errorCode ?? '');
  if (
    throttleReplay ||
    (error.status !== undefined && error.status >= 500) ||
    /\b5\d\d\b|network|ECONNREFUSED|ECONNRESET|ETIMEDOUT|timed out|server_error|temporarily_unavailable|endpoints_resolution_error|fetch failed/i.test(
      text,
    )
  ) {
    return new MailError('TOKEN_ENDPOINT_UNAVAILABLE', message, { cause: error });
  }
  return new MailError('TOKEN_FAILED', message, { cause: error });
}

interface RestLikeError extends Error {
  statusCode?: number;
  code?: string;
}

/** Classifies a Key Vault read failure (RestError from @azure/keyvault-secrets, or a credential error). */
export function classifyKeyVaultError(value: unknown, secretName: string): MailError {
  if (value instanceof MailError) return value;
  const error = ensureError(value) as RestLikeError;
  const what = `Key Vault secret '${secretName}'`;
  if (error.statusCode === 403) {
    return new MailError('KEY_VAULT_FORBIDDEN', `${what}: access denied (403 ${error.code ?? 'Forbidden'})`, {
      cause: error,
    });
  }
  if (error.statusCode === 404) {
    return new MailError('KEY_VAULT_SECRET_NOT_FOUND', `${what}: not found (404)`, { cause: error });
  }
  const credentialError =
    error.name === 'CredentialUnavailableError' ||
    error.name === 'AggregateAuthenticationError' ||
    error.name === 'AuthenticationError';
  // No answer in time, from the vault or from the identity endpoint behind the credential: transient, not a setup
  // error. (The credential chain reports an unreachable identity endpoint as "unavailable" and moves on.)
  if (isTimeoutError(error) || (credentialError && isUnreachableError(error))) {
    const detail = credentialError
      ? 'the managed identity endpoint could not be reached or did not answer in time'
      : error.message.split('\n')[0];
    return new MailError('KEY_VAULT_UNAVAILABLE', `${what}: ${detail}`, { cause: error });
  }
  if (credentialError) {
    return new MailError('KEY_VAULT_AUTH', `${what}: no credential could get a Key Vault token (${error.name})`, {
      cause: error,
    });
  }
  if (error.statusCode === undefined || error.statusCode >= 500 || error.statusCode === 429) {
    return new MailError(
      'KEY_VAULT_UNAVAILABLE',
      `${what}: ${error.statusCode ?? error.code ?? 'network'} ${error.message.split('\n')[0]}`,
      { cause: error },
    );
  }
  return new MailError('KEY_VAULT_UNAVAILABLE', `${what}: HTTP ${error.statusCode}`, {
    cause: error,
    transient: false,
  });
}
