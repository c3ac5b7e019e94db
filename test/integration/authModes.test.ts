/**
 * Authentication outside client-secret mode against the sandbox, through the real sender: basic mode's password read
 * again after a 535, federated-identity with its managed identity endpoint down or its assertion refused, and
 * client-certificate with a certificate Entra ID does not know or that has expired. Each failure: its code, whether it
 * is retried, and the fix its hint names.
 */
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { CERTIFICATE_EXPIRED_HINT } from '../../src/sender/classify';
import { MailError } from '../../src/errors';
import { BASIC_PASSWORD_REFUSED_HINT } from '../../src/sender/mailSender';
import { certificateThumbprints } from '../../sandbox/tenant';
import { secretScanner } from '../support/secretScan';
import { message, sandboxMailer, startSandbox, type Sandbox, type TestMailer } from '../support/sandboxMailer';

let sandbox: Sandbox;
let sender: string;
let originalPassword: string;
const mailers: TestMailer[] = [];

function mailer(...args: Parameters<typeof sandboxMailer> extends [unknown, ...infer R] ? R : never): TestMailer {
  const m = sandboxMailer(sandbox, ...args);
  mailers.push(m);
  return m;
}

async function sendError(m: TestMailer, subject = 'Test'): Promise<MailError> {
  try {
    await m.sender.send(message(m, { subject }), { source: 'cli', id: 'msg-1' });
  } catch (error) {
    expect(error).toBeInstanceOf(MailError);
    return error as MailError;
  }
  throw new Error('expected the send to fail');
}

/** Successful reads of Key Vault secret `name` (the unauthenticated challenge round trip is not one). */
const vaultReads = (name: string) => sandbox.keyVault.reads.filter((r) => r.name === name && r.status === 200).length;

const mailbox = () => sandbox.tenant.exchange.mailboxes.get(sender)!;

beforeAll(async () => {
  sandbox = await startSandbox();
  sender = sandbox.settings().MAIL_SENDER!;
  originalPassword = mailbox().appPassword!;
  // MSAL keeps managed identity tokens in a process-wide cache; tokens that live less than its 5-minute renewal
  // margin are never served from it, so every assertion here really comes from the identity endpoint.
  sandbox.identity.tokenLifetimeSeconds = 60;
});

afterAll(async () => {
  await sandbox?.close();
});

beforeEach(() => {
  sandbox.smtp.reset();
});

afterEach(async () => {
  await Promise.all(mailers.splice(0).map((m) => m.close()));
  mailbox().appPassword = originalPassword;
  sandbox.keyVault.setSecret('mail-password', originalPassword);
  sandbox.tenant.app.federatedSubjects.clear();
  sandbox.tenant.app.federatedSubjects.add(sandbox.tenant.identity.principalId);
  sandbox.entra.faults.splice(0);
  sandbox.identity.faults.splice(0);
});

describe('federated identity', () => {
  it.each([503, 500] as const)(
    'the managed identity endpoint answering %i → TOKEN_FEDERATION, transient, the hint names the endpoint; it passes',
    async (status) => {
      // Regression: an identity endpoint answering 5xx was told to assign a managed identity and add a federated credential.
      const m = mailer('federated-identity');
      // More than the identity client's own retries.
      for (let i = 0; i < 10; i++) sandbox.identity.faults.push({ kind: 'status', status });
      const error = await sendError(m);
      expect(error).toMatchObject({ code: 'TOKEN_FEDERATION', transient: true });
      expect(error.message).toContain(`the endpoint answered ${status}`);
      expect(error.hint).toMatch(
        /managed identity endpoint \(IDENTITY_ENDPOINT\) failed or did not answer; the message is retried/,
      );
      expect(sandbox.identity.requests.filter((r) => r.status === status).length).toBeGreaterThan(0);
      expect(sandbox.smtp.authAttempts).toHaveLength(0);

      sandbox.identity.faults.splice(0);
      await m.sender.send(message(m, { subject: 'endpoint back' }), { source: 'cli' });
      expect(sandbox.smtp.messages.map((x) => x.parsed.subject)).toEqual(['endpoint back']);
    },
    60_000,
  );

  it('a managed identity the endpoint does not know (wrong AZURE_CLIENT_ID) → TOKEN_FEDERATION, not transient, naming AZURE_CLIENT_ID', async () => {
    // Regression: the endpoint refusing the identity (400) was marked transient, so the message was retried for hours.
    const m = mailer('federated-identity', { AZURE_CLIENT_ID: '00000000-0000-4000-8000-000000000001' });
    const error = await sendError(m);
    expect(error).toMatchObject({ code: 'TOKEN_FEDERATION', transient: false });
    expect(error.message).toMatch(/the endpoint answered 400.*Unable to load the proper Managed Identity/);
    expect(error.hint).toMatch(/AZURE_CLIENT_ID/);
    expect(error.hint).toMatch(/federated credential of the app registration/);
  });

  it.each([
    ['no federated credential matches the identity', 'AADSTS700213'],
    ['Entra refuses the assertion', 'AADSTS70021'],
  ] as const)(
    '%s (%s) → TOKEN_FEDERATION, not transient, the hint says which federated credential to add',
    async (_, code) => {
      const m = mailer('federated-identity');
      if (code === 'AADSTS700213') sandbox.tenant.app.federatedSubjects.clear();
      else sandbox.entra.faults.push({ kind: 'aadsts', code: 70021 });
      const error = await sendError(m);
      expect(error).toMatchObject({ code: 'TOKEN_FEDERATION', transient: false });
      expect(error.message).toContain(code);
      expect(error.hint).toMatch(
        /add one to the app registration with issuer https:\/\/login\.microsoftonline\.com\/<tenant>\/v2\.0/,
      );
      expect(error.hint).toMatch(/subject = the managed identity's object \(principal\) id/);
      // The assertion came from the identity endpoint; Entra refused it; nothing reached Exchange.
      expect(sandbox.identity.requests.at(-1)).toMatchObject({ resource: 'api://AzureADTokenExchange', status: 200 });
      expect(sandbox.entra.requests.at(-1)).toMatchObject({ grant: 'federated', status: 401 });
      expect(sandbox.smtp.authAttempts).toHaveLength(0);

      // The admin's fix applies without a restart.
      sandbox.tenant.app.federatedSubjects.add(sandbox.tenant.identity.principalId);
      await m.sender.send(message(m, { subject: 'federated again' }), { source: 'cli' });
      expect(sandbox.entra.requests.at(-1)).toMatchObject({
        grant: 'federated',
        status: 200,
        credentialId: sandbox.tenant.identity.principalId,
      });
    },
  );
});

describe('basic (app password)', () => {
  it('a password rotated in Key Vault is read again after the 535 and the retry succeeds, without a restart', async () => {
    const m = mailer('basic');
    await m.sender.send(message(m, { subject: 'before rotation' }), { source: 'cli' });
    const readsBefore = vaultReads('mail-password');

    const rotated = `rotated-app-password-${Date.now()}`;
    mailbox().appPassword = rotated;
    sandbox.keyVault.setSecret('mail-password', rotated);
    await m.sender.close(); // a new connection logs in with the password read before the rotation (cached for 5 minutes)
    await m.sender.send(message(m, { subject: 'after rotation' }), { source: 'cli' });

    expect(sandbox.smtp.authAttempts.map((a) => [a.method, a.outcome])).toEqual([
      ['LOGIN', 'ok'],
      ['LOGIN', 'bad-password'],
      ['LOGIN', 'ok'],
    ]);
    expect(vaultReads('mail-password') - readsBefore).toBe(1);
    expect(sandbox.smtp.messages.map((x) => x.parsed.subject)).toEqual(['before rotation', 'after rotation']);
    const scan = secretScanner([
      ...sandbox.secrets(),
      { kind: 'app-password', label: 'the password before the rotation', value: originalPassword },
      { kind: 'app-password', label: 'the rotated password', value: rotated },
    ]);
    expect(scan.find(m.logs.join('\n'), 'logs')).toEqual([]);
  });

  it('a password Exchange still refuses after the re-read → AUTH_FAILED, not transient, with the Key Vault fix', async () => {
    // Regression: in basic mode a refused password carried the XOAUTH2 hint (New-ServicePrincipal …), which cannot fix it.
    const m = mailer('basic');
    const readsBefore = vaultReads('mail-password');
    mailbox().appPassword = `changed-in-exchange-only-${Date.now()}`;
    const error = await sendError(m);
    expect(error).toMatchObject({ code: 'AUTH_FAILED', transient: false, smtp: { code: 535, enhanced: '5.7.3' } });
    expect(error.hint).toBe(BASIC_PASSWORD_REFUSED_HINT);
    expect(error.hint).toContain('MAIL_PASSWORD_SECRET_NAME');
    expect(error.hint).not.toMatch(/New-ServicePrincipal/);
    // One re-read of the vault and one more try, never more.
    expect(sandbox.smtp.authAttempts.map((a) => a.outcome)).toEqual(['bad-password', 'bad-password']);
    expect(vaultReads('mail-password') - readsBefore).toBe(2);
    expect(sandbox.smtp.messages).toHaveLength(0);
  });
});

describe('client certificate', () => {
  it('a certificate not registered on the app (wrong thumbprint) → TOKEN_CERTIFICATE, not transient, the hint says to upload it; once uploaded the next send works', async () => {
    const stranger = sandbox.ca.issueClient('not uploaded to the app registration');
    sandbox.keyVault.setSecret('stranger-cert', `${stranger.keyPem}\n${stranger.certPem}`, 'application/x-pem-file');
    const m = mailer('client-certificate', { MAIL_CLIENT_CERT_NAME: 'stranger-cert' });
    const error = await sendError(m);
    expect(error).toMatchObject({ code: 'TOKEN_CERTIFICATE', transient: false });
    expect(error.message).toContain('AADSTS700027');
    expect(error.message).toContain('is not registered on application');
    // Entra names the thumbprint it was shown: the certificate from Key Vault.
    expect(error.message).toContain(certificateThumbprints(stranger.certPem).hex);
    expect(error.hint).toMatch(
      /upload the certificate in the Key Vault secret MAIL_CLIENT_CERT_NAME to the app registration/,
    );
    expect(sandbox.entra.requests.slice(-2)).toMatchObject([
      { grant: 'client_certificate', status: 401, errorCode: 700027 },
      { grant: 'client_certificate', status: 401, errorCode: 700027 },
    ]);
    expect(sandbox.smtp.authAttempts).toHaveLength(0);

    sandbox.tenant.app.certificates.set(certificateThumbprints(stranger.certPem).base64url, stranger.certPem);
    try {
      await m.sender.send(message(m, { subject: 'after the upload' }), { source: 'cli' });
      expect(sandbox.smtp.messages.map((x) => x.parsed.subject)).toEqual(['after the upload']);
    } finally {
      sandbox.tenant.app.certificates.delete(certificateThumbprints(stranger.certPem).base64url);
    }
  });

  it('an expired certificate → TOKEN_CERTIFICATE, not transient, the hint says to renew it; a renewed one in Key Vault is used without a restart', async () => {
    // Regression: an expired certificate was told to be uploaded again, and a renewed one in Key Vault was never read.
    const day = 24 * 60 * 60 * 1000;
    const expired = sandbox.ca.issueClient('expired yesterday', {
      notBefore: new Date(Date.now() - 366 * day),
      notAfter: new Date(Date.now() - day),
    });
    // Uploaded while it was valid: still registered, past its end date.
    const expiredId = certificateThumbprints(expired.certPem).base64url;
    sandbox.tenant.app.certificates.set(expiredId, expired.certPem);
    sandbox.keyVault.setSecret('renewing-cert', `${expired.keyPem}\n${expired.certPem}`, 'application/x-pem-file');
    const m = mailer('client-certificate', { MAIL_CLIENT_CERT_NAME: 'renewing-cert' });
    const renewed = sandbox.ca.issueClient('renewed');
    const renewedId = certificateThumbprints(renewed.certPem).base64url;
    try {
      const error = await sendError(m);
      expect(error).toMatchObject({ code: 'TOKEN_CERTIFICATE', transient: false });
      expect(error.message).toContain('The key used is expired');
      expect(error.hint).toBe(CERTIFICATE_EXPIRED_HINT);
      expect(error.hint).toMatch(
        /new certificate in Key Vault .*MAIL_CLIENT_CERT_NAME.* upload it to the app registration/,
      );
      expect(sandbox.smtp.authAttempts).toHaveLength(0);

      // The admin renews it: a new version in Key Vault, uploaded to the app registration.
      sandbox.tenant.app.certificates.set(renewedId, renewed.certPem);
      sandbox.keyVault.setSecret('renewing-cert', `${renewed.keyPem}\n${renewed.certPem}`, 'application/x-pem-file');
      await m.sender.send(message(m, { subject: 'renewed certificate' }), { source: 'cli' });
      expect(sandbox.entra.requests.at(-1)).toMatchObject({
        grant: 'client_certificate',
        status: 200,
        credentialId: renewedId,
      });
      expect(sandbox.smtp.messages.map((x) => x.parsed.subject)).toEqual(['renewed certificate']);
    } finally {
      sandbox.tenant.app.certificates.delete(expiredId);
      sandbox.tenant.app.certificates.delete(renewedId);
    }
  });
});

// Last: it stops the sandbox's identity endpoint for good (MSAL keeps its address for the life of the process).
describe('federated identity, the managed identity endpoint gone', () => {
  it('connection refused → TOKEN_FEDERATION, transient, the hint names the endpoint', async () => {
    const m = mailer('federated-identity');
    await sandbox.identity.close();
    const error = await sendError(m);
    expect(error).toMatchObject({ code: 'TOKEN_FEDERATION', transient: true });
    expect(error.message).toMatch(/could not be reached/);
    expect(error.hint).toMatch(
      /managed identity endpoint \(IDENTITY_ENDPOINT\) failed or did not answer; the message is retried/,
    );
    expect(sandbox.smtp.authAttempts).toHaveLength(0);
  }, 60_000);
});
