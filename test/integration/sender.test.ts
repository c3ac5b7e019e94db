/** The core sender against the sandbox: real nodemailer, MSAL, @azure/identity and Key Vault SDK over TLS. */
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { decodeJwt } from 'jose';
import { MailError } from '../../src/errors';
import { readFileSync } from 'node:fs';
import { IDLE_CLOSE_MS } from '../../src/sender/connectionPool';
import { trustedSecureContext } from '../../src/sender/tlsTrust';
import { SMTP_SEND_AS_APP_ROLE } from '../../sandbox/tenant';
import { secretScanner, smtpMessagesDecoded, smtpWire } from '../support/secretScan';
import { startTls11Server, startTlsServer } from '../support/tlsServer';
import { message, sandboxMailer, startSandbox, type Sandbox, type TestMailer } from '../support/sandboxMailer';

let sandbox: Sandbox;
const mailers: TestMailer[] = [];

function mailer(...args: Parameters<typeof sandboxMailer> extends [unknown, ...infer R] ? R : never): TestMailer {
  const m = sandboxMailer(sandbox, ...args);
  mailers.push(m);
  return m;
}

async function sendError(m: TestMailer, input: Parameters<typeof message>[1] = {}): Promise<MailError> {
  try {
    await m.sender.send(message(m, input), { source: 'cli', id: 'msg-1' });
  } catch (error) {
    expect(error).toBeInstanceOf(MailError);
    return error as MailError;
  }
  throw new Error('expected the send to fail');
}

beforeAll(async () => {
  sandbox = await startSandbox();
});

afterAll(async () => {
  await sandbox.close();
});

beforeEach(() => {
  sandbox.smtp.reset();
});

afterEach(async () => {
  await Promise.all(mailers.splice(0).map((m) => m.close()));
  // Undo per-test tenant changes.
  const mailbox = sandbox.tenant.exchange.mailboxes.get(sandbox.settings().MAIL_SENDER as string);
  if (mailbox) {
    mailbox.smtpAuthEnabled = true;
    mailbox.sendAs.clear();
    mailbox.fullAccess.add(sandbox.tenant.app.servicePrincipalObjectId);
  }
  sandbox.tenant.exchange.smtpAuthEnabled = true;
  sandbox.tenant.exchange.servicePrincipals.set(
    sandbox.tenant.app.clientId,
    sandbox.tenant.app.servicePrincipalObjectId,
  );
  sandbox.tenant.app.roles.splice(0, sandbox.tenant.app.roles.length, SMTP_SEND_AS_APP_ROLE);
  sandbox.entra.faults.splice(0);
  sandbox.keyVault.faults.splice(0);
});

describe('happy path (client secret)', () => {
  it('delivers over STARTTLS with XOAUTH2 as MAIL_SENDER, envelope sender = From, and the MIME asked for', async () => {
    const m = mailer();
    const pdf = Buffer.from('%PDF-1.4 fake pdf bytes \u0000\u0001\u0002', 'binary');
    const result = await m.sender.send(
      message(m, {
        to: ['a@example.com', { address: 'b@example.com', name: 'Bée Ünicode' }],
        cc: 'c@example.com',
        bcc: 'hidden@example.com',
        subject: 'Grüße — your order ✓',
        text: 'Plain body',
        html: '<p>HTML <b>body</b></p>',
        attachments: [
          { filename: 'invoice.pdf', contentType: 'application/pdf', contentBase64: pdf.toString('base64') },
        ],
        headers: { 'X-Order': 'A-1' },
      }),
      { source: 'cli', id: 'msg-happy' },
    );
    expect(result.smtp.code).toBe(250);
    expect(result.accepted).toEqual(['a@example.com', 'b@example.com', 'c@example.com', 'hidden@example.com']);

    expect(sandbox.smtp.messages).toHaveLength(1);
    const received = sandbox.smtp.messages[0]!;
    const sender = m.config.sender;
    expect(received.mailbox).toBe(sender);
    expect(received.authMethod).toBe('XOAUTH2');
    expect(received.envelope.from).toBe(sender);
    expect(received.envelope.to).toEqual(['a@example.com', 'b@example.com', 'c@example.com', 'hidden@example.com']);
    expect(received.tlsVersion).toMatch(/^TLSv1\.[23]$/);
    const parsed = received.parsed;
    expect(parsed.subject).toBe('Grüße — your order ✓');
    expect(parsed.from?.address).toBe(sender);
    expect(parsed.to?.map((a) => a.address)).toEqual(['a@example.com', 'b@example.com']);
    expect(parsed.to?.[1]?.name).toBe('Bée Ünicode');
    expect(parsed.bcc ?? []).toEqual([]);
    expect(received.raw.toString('latin1')).not.toMatch(/hidden@example\.com/);
    expect(parsed.text?.trim()).toBe('Plain body');
    expect(parsed.html).toContain('<p>HTML <b>body</b></p>');
    expect(parsed.attachments).toHaveLength(1);
    expect(parsed.attachments[0]?.filename).toBe('invoice.pdf');
    expect(parsed.attachments[0]?.mimeType).toBe('application/pdf');
    expect(Buffer.from(parsed.attachments[0]!.content as ArrayBuffer).equals(pdf)).toBe(true);
    expect(parsed.headers.find((h) => h.key === 'x-order')?.value).toBe('A-1');
    expect(parsed.messageId).toBe(result.messageId);

    const session = sandbox.smtp.sessions.find((s) => s.id === received.sessionId)!;
    expect(session.startedTls).toBe(true);
    expect(session.authBeforeTls).toBe(false);
    const starttls = session.transcript.findIndex((l) => /^C: STARTTLS/i.test(l));
    const auth = session.transcript.findIndex((l) => /^C: AUTH XOAUTH2/i.test(l));
    expect(starttls).toBeGreaterThanOrEqual(0);
    expect(auth).toBeGreaterThan(starttls);
    const attempt = sandbox.smtp.authAttempts.at(-1)!;
    expect(attempt).toMatchObject({ method: 'XOAUTH2', user: sender, ok: true, appId: sandbox.tenant.app.clientId });
  });

  it('reuses one pooled connection and the cached token for consecutive sends', async () => {
    const m = mailer();
    const before = sandbox.entra.requests.length;
    for (let i = 0; i < 5; i++) await m.sender.send(message(m, { subject: `n${i}` }), { source: 'cli' });
    expect(sandbox.smtp.messages).toHaveLength(5);
    expect(new Set(sandbox.smtp.messages.map((x) => x.sessionId)).size).toBe(1);
    expect(sandbox.entra.requests.length - before).toBe(1);
  });
});

describe('connection hygiene', () => {
  it('closes an idle pooled connection quickly (idle sessions count against the 3-connection limit)', async () => {
    const m = mailer();
    await m.sender.send(message(m), { source: 'cli' });
    const session = sandbox.smtp.sessions.find((s) => s.id === sandbox.smtp.messages[0]?.sessionId);
    expect(session?.open).toBe(true);
    await new Promise((r) => setTimeout(r, IDLE_CLOSE_MS + 1_000));
    expect(session?.open).toBe(false);
    expect(session?.transcript.some((l) => /^C: QUIT/.test(l))).toBe(true);
  });
});

describe('TLS with the extra CA (MAIL_TLS_CA_FILE): one context for every connection, verification on', () => {
  it('builds the context once per CA: reconnections do not parse the CA list again', async () => {
    const pem = readFileSync(sandbox.settings().MAIL_TLS_CA_FILE as string, 'utf8');
    expect(trustedSecureContext(pem)).toBe(trustedSecureContext(pem));
    expect(trustedSecureContext(undefined)).toBeUndefined();
    // Two mailers, two pools, each its own connection: both verified against the shared context.
    const [a, b] = [mailer(), mailer()];
    await Promise.all([a.sender.send(message(a), { source: 'cli' }), b.sender.send(message(b), { source: 'cli' })]);
    expect(sandbox.smtp.messages).toHaveLength(2);
    expect(new Set(sandbox.smtp.messages.map((m) => m.sessionId)).size).toBe(2);
  });

  it('refuses a server that speaks only TLS 1.1', async () => {
    const server = await startTls11Server(sandbox.ca.issueServer());
    try {
      const error = await sendError(mailer('client-secret', { MAIL_SMTP_PORT: String(server.port) }));
      // Not a connection failure to retry: the server can never meet the TLS 1.2 minimum.
      expect(error).toMatchObject({ code: 'TLS_VERSION', transient: false });
      expect(error.message).toMatch(/protocol version/i);
      expect(error.hint).toContain('TLS 1.2');
    } finally {
      await server.close();
    }
  });

  it('refuses a certificate of the trusted CA issued for another host name (TLS_CERTIFICATE)', async () => {
    const cert = sandbox.ca.issueServer(['smtp.elsewhere.test']);
    const server = await startTlsServer({ key: cert.keyPem, cert: cert.certPem });
    try {
      const error = await sendError(mailer('client-secret', { MAIL_SMTP_PORT: String(server.port) }));
      expect(error).toMatchObject({ code: 'TLS_CERTIFICATE', transient: false });
      expect(error.message).toMatch(/smtp\.elsewhere\.test|altname|Host/i);
    } finally {
      await server.close();
    }
  });
});

describe('auth modes', () => {
  it('client-certificate: MSAL signs an assertion with the Key Vault PEM', async () => {
    const m = mailer('client-certificate');
    await m.sender.send(message(m), { source: 'cli' });
    expect(sandbox.smtp.messages).toHaveLength(1);
    expect(sandbox.entra.requests.at(-1)).toMatchObject({ grant: 'client_certificate', status: 200 });
  });

  it('federated-identity: the managed identity token is the client assertion; no secret anywhere', async () => {
    const m = mailer('federated-identity');
    expect(m.secrets).toBeUndefined();
    await m.sender.send(message(m), { source: 'cli' });
    expect(sandbox.smtp.messages).toHaveLength(1);
    expect(sandbox.entra.requests.at(-1)).toMatchObject({ grant: 'federated', status: 200 });
    expect(sandbox.identity.requests.at(-1)).toMatchObject({ resource: 'api://AzureADTokenExchange', status: 200 });
  });

  it('basic: AUTH LOGIN with the app password from Key Vault, with a deprecation warning', async () => {
    const m = mailer('basic');
    await m.sender.send(message(m), { source: 'cli' });
    expect(sandbox.smtp.messages.at(-1)?.authMethod).toBe('LOGIN');
    expect(m.logs.join('\n')).toMatch(/WARN .*MAIL_AUTH_MODE=basic is deprecated.*December 2026/);
  });
});

describe('classified failures', () => {
  it('SMTP AUTH disabled for the tenant → SMTP_AUTH_DISABLED with the Set-CASMailbox fix', async () => {
    sandbox.tenant.exchange.smtpAuthEnabled = false;
    const error = await sendError(mailer());
    expect(error).toMatchObject({
      code: 'SMTP_AUTH_DISABLED',
      transient: false,
      smtp: { code: 535, enhanced: '5.7.139' },
    });
    expect(error.smtp?.response).toMatch(/disabled for the Tenant/);
    expect(error.hint).toMatch(/Set-CASMailbox/);
  });

  it('SMTP AUTH disabled for the mailbox → SMTP_AUTH_DISABLED', async () => {
    sandbox.tenant.exchange.mailboxes.get(sandbox.settings().MAIL_SENDER!)!.smtpAuthEnabled = false;
    const error = await sendError(mailer());
    expect(error).toMatchObject({ code: 'SMTP_AUTH_DISABLED', smtp: { enhanced: '5.7.139' } });
    expect(error.smtp?.response).toMatch(/for the Mailbox/);
  });

  it('service principal registered with the App Registration object id → AUTH_FAILED after one fresh-token retry', async () => {
    sandbox.tenant.exchange.servicePrincipals.set(sandbox.tenant.app.clientId, sandbox.tenant.app.applicationObjectId);
    const m = mailer();
    const before = sandbox.entra.requests.length;
    const error = await sendError(m);
    expect(error).toMatchObject({ code: 'AUTH_FAILED', transient: false, smtp: { code: 535, enhanced: '5.7.3' } });
    expect(error.hint).toMatch(/New-ServicePrincipal -AppId <appid> -ObjectId <oid>/);
    // The first token came fresh from Entra, so there was nothing cached to blame: no retry.
    expect(sandbox.entra.requests.length - before).toBe(1);
    expect(sandbox.smtp.authAttempts.filter((a) => !a.ok)).toHaveLength(1);
  });

  it('no FullAccess on the mailbox or no SMTP.SendAsApp role → AUTH_FAILED', async () => {
    sandbox.tenant.exchange.mailboxes.get(sandbox.settings().MAIL_SENDER!)!.fullAccess.clear();
    expect((await sendError(mailer())).code).toBe('AUTH_FAILED');
    sandbox.tenant.exchange.mailboxes
      .get(sandbox.settings().MAIL_SENDER!)!
      .fullAccess.add(sandbox.tenant.app.servicePrincipalObjectId);
    sandbox.tenant.app.roles.splice(0);
    expect((await sendError(mailer())).code).toBe('AUTH_FAILED');
    expect(sandbox.smtp.authAttempts.map((a) => a.outcome)).toEqual(['no-full-access', 'missing-role']);
  });

  it('a From the app may use but Exchange has no SendAs for → SEND_AS_DENIED (554 5.2.252)', async () => {
    const m = mailer('client-secret', { MAIL_ALLOWED_FROM: `ceo@${sandbox.tenant.domain}` });
    const error = await sendError(m, { from: `ceo@${sandbox.tenant.domain}` });
    expect(error).toMatchObject({ code: 'SEND_AS_DENIED', transient: false, smtp: { code: 554, enhanced: '5.2.252' } });
    expect(error.hint).toMatch(/Add-RecipientPermission/);
    // With the grant it goes through, and the envelope sender is the From address.
    sandbox.tenant.exchange.mailboxes.get(sandbox.settings().MAIL_SENDER!)!.sendAs.add(`ceo@${sandbox.tenant.domain}`);
    await m.sender.send(message(m, { from: `ceo@${sandbox.tenant.domain}` }), { source: 'cli' });
    expect(sandbox.smtp.messages.at(-1)?.envelope.from).toBe(`ceo@${sandbox.tenant.domain}`);
  });

  it('a From that MAIL_ALLOWED_FROM does not allow is refused before any connection', async () => {
    const m = mailer();
    const sessions = sandbox.smtp.sessions.length;
    const tokens = sandbox.entra.requests.length;
    const error = await sendError(m, { from: 'someone-else@contoso.test' });
    expect(error.code).toBe('SENDER_NOT_ALLOWED');
    expect(error.details).toEqual([{ path: 'from', message: 'not an allowed sender for this mailbox' }]);
    expect(sandbox.smtp.sessions.length).toBe(sessions);
    expect(sandbox.entra.requests.length).toBe(tokens);
  });

  it.each([
    ['force432', 'CONCURRENCY_LIMIT', true, 432],
    ['logonFailure430', 'MAILBOX_LOGON_FAILURE', false, 430],
    ['reply421OnCommand', 'SMTP_UNAVAILABLE', true, 421],
  ] as const)('fault %s → %s', async (fault, code, transient, smtpCode) => {
    if (fault === 'reply421OnCommand') {
      sandbox.smtp.faults.reply421OnCommand = 1;
      sandbox.smtp.faults.reply421Command = 'MAIL';
    } else sandbox.smtp.faults[fault] = 1;
    const error = await sendError(mailer());
    expect(error).toMatchObject({ code, transient, smtp: { code: smtpCode } });
  });

  it('connection dropped mid-DATA → CONNECTION_FAILED, transient', async () => {
    sandbox.smtp.faults.dropMidData = 1;
    const error = await sendError(mailer());
    expect(error).toMatchObject({ code: 'CONNECTION_FAILED', transient: true });
  });

  it('daily recipient quota → DAILY_QUOTA_EXCEEDED (554 5.2.0)', async () => {
    const saved = sandbox.smtp.limits.dailyRecipients;
    sandbox.smtp.limits.dailyRecipients = 1;
    try {
      const m = mailer();
      await m.sender.send(message(m), { source: 'cli' });
      const error = await sendError(m);
      expect(error).toMatchObject({ code: 'DAILY_QUOTA_EXCEEDED', smtp: { code: 554, enhanced: '5.2.0' } });
    } finally {
      sandbox.smtp.limits.dailyRecipients = saved;
    }
  });

  it('a message over the server size limit → MESSAGE_TOO_LARGE (552 5.3.4)', async () => {
    const saved = sandbox.smtp.limits.maxMessageBytes;
    sandbox.smtp.limits.maxMessageBytes = 20_000;
    try {
      const error = await sendError(mailer(), { text: 'x'.repeat(30_000) });
      expect(error).toMatchObject({ code: 'MESSAGE_TOO_LARGE', smtp: { code: 552 } });
    } finally {
      sandbox.smtp.limits.maxMessageBytes = saved;
    }
  });

  it('too many recipients for the server → TOO_MANY_RECIPIENTS is caught before sending', () => {
    const m = mailer('client-secret', { MAIL_MAX_RECIPIENTS: '2' });
    expect(() => message(m, { to: ['a@x.com', 'b@x.com', 'c@x.com'] })).toThrow(/at most 2 recipients/);
  });

  it('a server that offers no STARTTLS never receives a token', async () => {
    sandbox.smtp.faults.noStartTls = true;
    try {
      const error = await sendError(mailer());
      expect(error).toMatchObject({ code: 'STARTTLS_UNAVAILABLE', transient: false });
      expect(sandbox.smtp.authAttempts).toHaveLength(0);
      expect(sandbox.smtp.sessions.every((s) => !s.transcript.some((l) => /^C: AUTH/i.test(l)))).toBe(true);
    } finally {
      sandbox.smtp.faults.noStartTls = false;
    }
  });

  it('a server certificate from a CA that is not trusted is refused (verification stays on)', async () => {
    const other = await startSandbox();
    try {
      // Trust our sandbox's CA, but talk to the other sandbox's SMTP server.
      const m = mailer('client-secret', { MAIL_SMTP_PORT: String(other.smtp.port) });
      const error = await sendError(m);
      expect(error).toMatchObject({ code: 'TLS_CERTIFICATE', transient: false });
      expect(other.smtp.authAttempts).toHaveLength(0);
    } finally {
      await other.close();
    }
  });

  it('token endpoint 503 → TOKEN_ENDPOINT_UNAVAILABLE, transient', async () => {
    sandbox.entra.faults.push(...Array.from({ length: 5 }, () => ({ kind: 'status' as const, status: 503 as const })));
    const error = await sendError(mailer());
    expect(error).toMatchObject({ code: 'TOKEN_ENDPOINT_UNAVAILABLE', transient: true });
  });

  it('Key Vault 403 → KEY_VAULT_FORBIDDEN naming the RBAC role; 404 → KEY_VAULT_SECRET_NOT_FOUND; 503 → transient', async () => {
    sandbox.keyVault.faults.push({ kind: 'status', status: 403 });
    const forbidden = await sendError(mailer());
    expect(forbidden).toMatchObject({ code: 'KEY_VAULT_FORBIDDEN', transient: false });
    expect(forbidden.hint).toMatch(/Key Vault Secrets User/);

    const missing = await sendError(mailer('client-secret', { MAIL_CLIENT_SECRET_NAME: 'no-such-secret' }));
    expect(missing).toMatchObject({ code: 'KEY_VAULT_SECRET_NOT_FOUND', transient: false });
    expect(missing.message).toContain("'no-such-secret'");

    sandbox.keyVault.faults.push(
      ...Array.from({ length: 5 }, () => ({ kind: 'status' as const, status: 503 as const })),
    );
    const down = await sendError(mailer());
    expect(down).toMatchObject({ code: 'KEY_VAULT_UNAVAILABLE', transient: true });
  });

  it('a wrong client secret in Key Vault → TOKEN_INVALID_CLIENT_SECRET (after one re-read)', async () => {
    sandbox.keyVault.setSecret('wrong-secret', 'definitely-not-the-secret-value');
    const m = mailer('client-secret', { MAIL_CLIENT_SECRET_NAME: 'wrong-secret' });
    const error = await sendError(m);
    expect(error).toMatchObject({ code: 'TOKEN_INVALID_CLIENT_SECRET', transient: false });
    expect(error.message).toMatch(/AADSTS7000215/);
    expect(sandbox.keyVault.reads.filter((r) => r.name === 'wrong-secret' && r.status === 200)).toHaveLength(2);
  });
});

describe('token lifecycle', () => {
  it('a revoked cached token: 535 5.7.3, then one retry with a fresh token succeeds', async () => {
    const m = mailer();
    await m.sender.send(message(m), { source: 'cli' });
    const login = await m.auth.get();
    expect(login.kind).toBe('xoauth2');
    if (login.kind !== 'xoauth2') return;
    expect(login.fromCache).toBe(true);
    sandbox.issuer.revoke(decodeJwt(login.accessToken).jti as string);
    await m.sender.close(); // force a new connection, which presents the cached (revoked) token
    const before = sandbox.entra.requests.length;
    await m.sender.send(message(m, { subject: 'after revocation' }), { source: 'cli' });
    expect(sandbox.entra.requests.length - before).toBe(1);
    expect(sandbox.smtp.authAttempts.map((a) => a.ok)).toEqual([true, false, true]);
    expect(sandbox.smtp.messages.map((x) => x.parsed.subject)).toEqual(['Test', 'after revocation']);
  });

  it('an expired token is never presented: new connections after expiry get a new token', async () => {
    const saved = sandbox.entra.tokenLifetimeSeconds;
    sandbox.entra.tokenLifetimeSeconds = 2;
    try {
      const m = mailer();
      await m.sender.send(message(m), { source: 'cli' });
      await new Promise((r) => setTimeout(r, 2500));
      await m.sender.close();
      await m.sender.send(message(m, { subject: 'later' }), { source: 'cli' });
      expect(sandbox.smtp.authAttempts.map((a) => a.outcome)).toEqual(['ok', 'ok']);
      expect(sandbox.smtp.messages).toHaveLength(2);
    } finally {
      sandbox.entra.tokenLifetimeSeconds = saved;
    }
  });

  it('a client secret rotated in Key Vault is picked up without a restart', async () => {
    const m = mailer();
    await m.sender.send(message(m), { source: 'cli' });
    const oldSecret = sandbox.tenant.app.secrets[0]!;
    const newSecret = `rotated~${Date.now()}-value`;
    sandbox.tenant.app.secrets.splice(0, 1, newSecret);
    sandbox.keyVault.setSecret('mail-client-secret', newSecret);
    try {
      m.auth.invalidate(); // as when the cached token expires
      await m.sender.close();
      await m.sender.send(message(m, { subject: 'after rotation' }), { source: 'cli' });
      const last = sandbox.entra.requests.slice(-2);
      expect(last.map((r) => r.status)).toEqual([401, 200]);
      expect(last[0]?.errorCode).toBe(7000215);
      expect(sandbox.smtp.messages.at(-1)?.parsed.subject).toBe('after rotation');
    } finally {
      sandbox.tenant.app.secrets.splice(0, 1, oldSecret);
      sandbox.keyVault.setSecret('mail-client-secret', oldSecret);
    }
  });
});

describe('telemetry and secrets', () => {
  it('MailSent and MailFailed reach the ingestion endpoint, with no secret, token, address or subject anywhere', async () => {
    sandbox.ingestion.reset();
    const m = mailer();
    await m.sender.send(message(m, { subject: 'Secret subject line', to: 'private.person@example.com' }), {
      source: 'cli',
      id: 'msg-telemetry',
    });
    sandbox.tenant.exchange.smtpAuthEnabled = false;
    await m.sender.close();
    m.auth.invalidate();
    const error = await sendError(m);
    await m.telemetry.flush();

    const arrived = await sandbox.ingestion.waitFor(
      () => sandbox.ingestion.events('MailFailed').some((e) => e.properties.id === 'msg-1'),
      10_000,
    );
    expect(arrived).toBe(true);
    const events = sandbox.ingestion.events();
    const mailSent = events.find((e) => e.name === 'MailSent' && e.properties.id === 'msg-telemetry');
    expect(mailSent?.properties).toMatchObject({
      id: 'msg-telemetry',
      source: 'cli',
      smtpCode: '250',
      attempt: '1',
      recipientCount: '1',
    });
    const mailFailed = events.find((e) => e.name === 'MailFailed' && e.properties.id === 'msg-1');
    expect(mailFailed?.properties).toMatchObject({
      errorCode: 'SMTP_AUTH_DISABLED',
      transient: 'false',
      smtpCode: '535',
    });

    // Every secret and every token issued so far (the two sends' and the Key Vault reads'), in every encoding.
    const scan = secretScanner(sandbox.secrets());
    const wire = smtpWire(sandbox.smtp);
    expect(m.logs.length).toBeGreaterThan(0);
    expect(sandbox.ingestion.rawBodies.length).toBeGreaterThan(0);
    // The tokens did go out, in the one place they belong: the AUTH commands after STARTTLS.
    expect(scan.findAll({ auth: wire.auth }).filter((l) => l.kind === 'access-token').length).toBeGreaterThanOrEqual(2);
    expect(
      scan.findAll({
        logs: m.logs,
        error: [JSON.stringify(error.toJSON()), error.message],
        telemetry: sandbox.ingestion.rawBodies,
        transcript: sandbox.smtp.sessions.flatMap((s) => s.transcript),
        wire: wire.elsewhere,
        messages: smtpMessagesDecoded(sandbox.smtp),
      }),
    ).toEqual([]);
    const telemetryText = sandbox.ingestion.rawBodies.join('\n');
    expect(telemetryText).not.toContain('private.person@example.com');
    expect(telemetryText).not.toContain('Secret subject line');
    expect(telemetryText).not.toContain(m.config.sender);
  });
});
