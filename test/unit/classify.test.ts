import { readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { AggregateAuthenticationError, CredentialUnavailableError } from '@azure/identity';
import { AuthError } from '@azure/msal-node';
import { ERROR_CODES } from '../../src/errors';
import {
  CERTIFICATE_EXPIRED_HINT,
  classifyKeyVaultError,
  classifySmtpError,
  classifyTokenError,
  parseSmtpReply,
} from '../../src/sender/classify';

/** Builds an error the way nodemailer reports a server reply. */
function smtpError(response: string, command = 'DATA') {
  return Object.assign(new Error(`Message failed: ${response}`), {
    code: 'EMESSAGE',
    response,
    responseCode: Number(response.slice(0, 3)),
    command,
  });
}

describe('classifySmtpError: Exchange Online reply texts', () => {
  it.each([
    [
      '535 5.7.3 Authentication unsuccessful [SN4PR0601CA0001.namprd06.prod.outlook.com]',
      'AUTH_FAILED',
      false,
      /New-ServicePrincipal/,
    ],
    [
      '535 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the Tenant. Visit https://aka.ms/smtp_auth_disabled for more information.',
      'SMTP_AUTH_DISABLED',
      false,
      /Set-CASMailbox -Identity <MAIL_SENDER> -SmtpClientAuthenticationDisabled \$false/,
    ],
    [
      '535 5.7.139 Authentication unsuccessful, basic authentication is disabled.',
      'BASIC_AUTH_DISABLED',
      false,
      /OAuth/,
    ],
    ['550 5.7.30 Basic authentication is not supported for Client Submission.', 'BASIC_AUTH_DISABLED', false, /OAuth/],
    ['530 5.7.57 Client not authenticated to send mail.', 'NOT_AUTHENTICATED', false, /authentication never happened/],
    [
      '554 5.2.252 SendAsDenied; alerts@contoso.com not allowed to send as ceo@contoso.com; STOREDRV.Submission.Exception:SendAsDeniedException',
      'SEND_AS_DENIED',
      false,
      /Add-RecipientPermission/,
    ],
    [
      '550 5.7.60 SMTP; Client does not have permissions to send as this sender',
      'SEND_AS_DENIED',
      false,
      /Add-RecipientPermission/,
    ],
    [
      '432 4.3.2 STOREDRV.ClientSubmit; sender thread limit exceeded',
      'CONCURRENCY_LIMIT',
      true,
      /MAIL_MAX_CONNECTIONS/,
    ],
    [
      '554 5.2.0 STOREDRV.Submission.Exception:SubmissionQuotaExceededException',
      'DAILY_QUOTA_EXCEEDED',
      true,
      /10,000 recipients/,
    ],
    [
      '554 5.2.2 mailbox full; STOREDRV.Submission.Exception:QuotaExceededException',
      'MAILBOX_FULL',
      false,
      /Sent Items/,
    ],
    [
      '421 4.7.66 TLS 1.0 and 1.1 are not supported. Please upgrade/update your client to support TLS 1.2.',
      'TLS_VERSION',
      false,
      /TLS 1.2/,
    ],
    ['550 5.7.64 TenantAttribution; Relay Access Denied', 'RELAY_DENIED', false, /connector/],
    ['550 5.7.68 TenantInboundAttribution; Direct Send not allowed', 'RELAY_DENIED', false, /connector/],
    [
      '430 4.2.0 STOREDRV; mailbox logon failure; STOREDRV.Submission.Exception:ConnectionFailedTransientException.MapiExceptionLogonFailed',
      'MAILBOX_LOGON_FAILURE',
      false,
      /Add-MailboxPermission/,
    ],
    ['421 4.3.2 Service not available, closing transmission channel', 'SMTP_UNAVAILABLE', true, /retried/],
    ['452 4.5.3 Too many recipients', 'TOO_MANY_RECIPIENTS', false, /Split/],
    ['552 5.3.4 Message size exceeds fixed maximum message size', 'MESSAGE_TOO_LARGE', false, /35 MB/],
    [
      '550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup',
      'RECIPIENT_REJECTED',
      false,
      /recipient/,
    ],
    ['451 4.7.500 Server busy. Please try again later', 'SMTP_TRANSIENT', true, /retried/],
    ['554 5.6.0 Corrupt message content', 'SMTP_REJECTED', false, /permanently/],
  ])('%s → %s', (response, code, transient, hint) => {
    const error = classifySmtpError(smtpError(response));
    expect(error.code).toBe(code);
    expect(error.transient).toBe(transient);
    expect(error.hint).toMatch(hint);
    expect(error.smtp).toEqual(parseSmtpReply(response));
    expect(error.toJSON()).toMatchObject({ code, transient, smtp: { code: Number(response.slice(0, 3)) } });
  });

  it('classifies socket and TLS failures without a reply', () => {
    const refused = Object.assign(new Error('connect ECONNREFUSED 127.0.0.1:1'), {
      code: 'ESOCKET',
      originalCode: 'ECONNREFUSED',
    });
    expect(classifySmtpError(refused)).toMatchObject({ code: 'CONNECTION_FAILED', transient: true });
    const untrusted = Object.assign(new Error('self-signed certificate in certificate chain'), {
      code: 'ESOCKET',
      originalCode: 'SELF_SIGNED_CERT_IN_CHAIN',
    });
    expect(classifySmtpError(untrusted)).toMatchObject({ code: 'TLS_CERTIFICATE', transient: false });
  });

  it('a server with no TLS 1.2 or later → TLS_VERSION, permanent (not a connection failure to retry)', () => {
    const alert = Object.assign(
      new Error(
        '80FCF089387F0000:error:0A00042E:SSL routines:ssl3_read_bytes:tlsv1 alert protocol version:../deps/openssl/openssl/ssl/record/rec_layer_s3.c:1601:SSL alert number 70',
      ),
      { code: 'ESOCKET' },
    );
    const unsupported = Object.assign(new Error('unsupported protocol'), {
      code: 'ESOCKET',
      originalCode: 'ERR_SSL_UNSUPPORTED_PROTOCOL',
    });
    for (const error of [alert, unsupported]) {
      expect(classifySmtpError(error)).toMatchObject({ code: 'TLS_VERSION', transient: false });
      expect(classifySmtpError(error).hint).toContain('MAIL_SMTP_HOST');
    }
    // A reset during the handshake stays a transient connection failure.
    const reset = Object.assign(
      new Error('Client network socket disconnected before secure TLS connection was established'),
      {
        code: 'ESOCKET',
        originalCode: 'ECONNRESET',
      },
    );
    expect(classifySmtpError(reset)).toMatchObject({ code: 'CONNECTION_FAILED', transient: true });
  });
});

describe('classifyTokenError', () => {
  it.each([
    ['AADSTS7000215: Invalid client secret provided.', 'TOKEN_INVALID_CLIENT_SECRET', false],
    ['AADSTS7000222: The provided client secret keys for app are expired.', 'TOKEN_INVALID_CLIENT_SECRET', false],
    ['AADSTS700016: Application with identifier was not found in the directory', 'TOKEN_UNKNOWN_APP', false],
    ['AADSTS70011: The provided request must include a scope input parameter.', 'TOKEN_INVALID_SCOPE', false],
    ['AADSTS700027: Client assertion failed signature validation.', 'TOKEN_CERTIFICATE', false],
    ['AADSTS700213: No matching federated identity record found', 'TOKEN_FEDERATION', false],
  ])('%s → %s', (text, code, transient) => {
    const error = classifyTokenError(
      Object.assign(new Error(text), { errorCode: 'invalid_client', errorMessage: text }),
    );
    expect(error).toMatchObject({ code, transient });
  });

  it('an expired certificate (AADSTS700027 "The key used is expired") gets the renewal fix, not "upload it"', () => {
    const text =
      "AADSTS700027: Client assertion contains an invalid signature. [Reason - The key used is expired., Thumbprint of key used by client: 'AB12', Found key 'Start=01/28/2025 16:00:00, End=01/28/2026 16:00:00']";
    const error = classifyTokenError(
      Object.assign(new Error(text), { errorCode: 'invalid_client', errorMessage: text }),
    );
    expect(error).toMatchObject({ code: 'TOKEN_CERTIFICATE', transient: false, hint: CERTIFICATE_EXPIRED_HINT });
    expect(error.hint).not.toBe(ERROR_CODES.TOKEN_CERTIFICATE.hint);
  });

  it('treats token endpoint 5xx as transient', () => {
    const error = classifyTokenError(
      Object.assign(new Error('server_error'), { errorCode: 'server_error', status: 503 }),
    );
    expect(error).toMatchObject({ code: 'TOKEN_ENDPOINT_UNAVAILABLE', transient: true });
  });
});

describe('classifyKeyVaultError', () => {
  it('separates 403 (RBAC role missing) from 404 (no such secret)', () => {
    const forbidden = classifyKeyVaultError(
      Object.assign(new Error('Forbidden'), { statusCode: 403, code: 'Forbidden' }),
      'mail-client-secret',
    );
    expect(forbidden.code).toBe('KEY_VAULT_FORBIDDEN');
    expect(forbidden.hint).toMatch(/Key Vault Secrets User/);
    const missing = classifyKeyVaultError(
      Object.assign(new Error('nf'), { statusCode: 404, code: 'SecretNotFound' }),
      'mail-client-secret',
    );
    expect(missing.code).toBe('KEY_VAULT_SECRET_NOT_FOUND');
    expect(missing.message).toContain("'mail-client-secret'");
    const down = classifyKeyVaultError(Object.assign(new Error('unavailable'), { statusCode: 503 }), 'x');
    expect(down).toMatchObject({ code: 'KEY_VAULT_UNAVAILABLE', transient: true });
  });

  it('a credential chain that gave up on an unreachable identity endpoint is transient; one without an identity is not', () => {
    // The shape DefaultAzureCredential throws when the managed identity endpoint is cut or refuses (MSAL's
    // network_error under ManagedIdentityCredential's "Network unreachable"), then the CLIs are not found.
    const unreachable = new AggregateAuthenticationError(
      [
        new CredentialUnavailableError('EnvironmentCredential is unavailable.'),
        new CredentialUnavailableError('ManagedIdentityCredential: Network unreachable. Message: network_error', {
          cause: new AuthError('network_error', ''),
        }),
        new CredentialUnavailableError('Azure CLI could not be found.'),
      ],
      'ChainedTokenCredential authentication failed.',
    );
    const classified = classifyKeyVaultError(unreachable, 'mail-client-secret');
    expect(classified).toMatchObject({ code: 'KEY_VAULT_UNAVAILABLE', transient: true });
    expect(classified.message).toContain('managed identity endpoint');

    const noIdentity = new AggregateAuthenticationError(
      [
        new CredentialUnavailableError('EnvironmentCredential is unavailable.'),
        new CredentialUnavailableError(
          'ManagedIdentityCredential: Authentication failed. Message Attempted to use the IMDS endpoint, but it is not available.',
        ),
      ],
      'ChainedTokenCredential authentication failed.',
    );
    expect(classifyKeyVaultError(noIdentity, 'mail-client-secret')).toMatchObject({
      code: 'KEY_VAULT_AUTH',
      transient: false,
    });
  });
});

describe('docs/troubleshooting.md', () => {
  it('documents every error code of the table, with its transient flag', () => {
    const doc = readFileSync(path.join(__dirname, '../../docs/troubleshooting.md'), 'utf8');
    for (const [code, { transient }] of Object.entries(ERROR_CODES)) {
      const row = doc.split('\n').find((line) => line.startsWith(`| \`${code}\` |`));
      expect(row, `${code} has a row`).toBeDefined();
      expect(
        row?.split('|').map((c) => c.trim()),
        `${code} transient flag`,
      ).toContain(transient ? 'yes' : 'no');
    }
  });
});
