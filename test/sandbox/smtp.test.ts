/** The Exchange-like sandbox SMTP server, driven by the real nodemailer (and raw sockets where exact bytes matter). */
import net from 'node:net';
import tls from 'node:tls';
import { afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import nodemailer from 'nodemailer';
import type SMTPTransport from 'nodemailer/lib/smtp-transport';
import type SMTPPool from 'nodemailer/lib/smtp-pool';
import { createCertificateAuthority, type CertificateAuthority } from '../../sandbox/ca';
import { TokenIssuer, type AccessTokenClaims } from '../../sandbox/tokens';
import { createTenant, SMTP_SEND_AS_APP_ROLE, type SandboxMailbox, type SandboxTenant } from '../../sandbox/tenant';
import type { Clock, ExchangeSmtpLimits } from '../../sandbox/smtp/mailboxLimits';
import { startExchangeSmtp, type ExchangeSmtpServer, SANDBOX_SMTP_HOSTNAME } from '../../sandbox/smtp/server';
import { secretScanner, smtpWire, type Leak } from '../support/secretScan';

const TOKEN_LIFETIME_S = 3600;
const RECIPIENT = 'bob@fabrikam.test';

/** What nodemailer puts on an SMTP failure. */
interface SmtpFailure extends Error {
  code?: string;
  command?: string;
  responseCode?: number;
  response?: string;
}

let ca: CertificateAuthority;
let issuer: TokenIssuer;
let tenant: SandboxTenant;
let mailbox: SandboxMailbox;
let server: ExchangeSmtpServer;
const transports: { close(): void }[] = [];

beforeAll(() => {
  ca = createCertificateAuthority('smtp test CA');
  issuer = new TokenIssuer('https://sts.windows.net/sandbox/');
});

async function start(limits: Partial<ExchangeSmtpLimits> = {}, clock?: Clock): Promise<ExchangeSmtpServer> {
  await server?.close();
  server = await startExchangeSmtp({ ca, tenant, issuer, limits, clock });
  return server;
}

beforeEach(async () => {
  tenant = createTenant();
  mailbox = [...tenant.exchange.mailboxes.values()][0]!;
  await start();
});

afterEach(async () => {
  for (const t of transports.splice(0)) t.close();
  await server.close();
});

/** A token shaped like Entra's app-only token for Exchange Online. */
function appToken(overrides: Partial<AccessTokenClaims> = {}, lifetimeSeconds = TOKEN_LIFETIME_S): Promise<string> {
  return issuer.sign(
    {
      aud: 'https://outlook.office365.com',
      tid: tenant.tenantId,
      appid: tenant.app.clientId,
      oid: tenant.app.servicePrincipalObjectId,
      roles: [SMTP_SEND_AS_APP_ROLE],
      idtyp: 'app',
      ...overrides,
    },
    lifetimeSeconds,
  );
}

function baseOptions(): SMTPTransport.Options {
  return {
    host: server.host,
    port: server.port,
    secure: false,
    requireTLS: true,
    tls: { ca: ca.certPem, servername: 'localhost' },
    connectionTimeout: 5_000,
    greetingTimeout: 5_000,
  };
}

function oauthTransport(accessToken: string, user = mailbox.address) {
  const t = nodemailer.createTransport({ ...baseOptions(), auth: { type: 'OAuth2', user, accessToken } });
  transports.push(t);
  return t;
}

function pooledOauthTransport(accessToken: string) {
  const options: SMTPPool.Options = {
    ...baseOptions(),
    pool: true,
    maxConnections: 1,
    auth: { type: 'OAuth2', user: mailbox.address, accessToken },
  };
  const t = nodemailer.createTransport(options);
  transports.push(t);
  return t;
}

function basicTransport(pass: string) {
  const t = nodemailer.createTransport({ ...baseOptions(), auth: { user: mailbox.address, pass } });
  transports.push(t);
  return t;
}

function mail(overrides: Record<string, unknown> = {}) {
  return {
    from: mailbox.address,
    to: RECIPIENT,
    subject: 'Disk almost full',
    text: 'Volume /data is at 91%.',
    html: '<p>Volume <b>/data</b> is at 91%.</p>',
    ...overrides,
  };
}

async function failure(promise: Promise<unknown>): Promise<SmtpFailure> {
  try {
    await promise;
  } catch (error) {
    return error as SmtpFailure;
  }
  throw new Error('expected the send to fail');
}

function everythingRecorded(): string {
  return JSON.stringify({
    sessions: server.sessions,
    authAttempts: server.authAttempts,
    rejections: server.rejections,
    violations: server.violations,
  });
}

/**
 * `values` found in any encoding (the base64 an AUTH line carries them in, at whatever offset) in what the server
 * recorded for display: the sessions' transcripts, auth attempts, rejections and violations.
 */
function recordedLeaks(values: Record<string, string>): Leak[] {
  const scan = secretScanner(Object.entries(values).map(([label, value]) => ({ kind: 'secret', label, value })));
  return scan.find(everythingRecorded(), 'server records');
}

/** A line-oriented SMTP client over a raw socket, for replies nodemailer would not let us see. */
class RawSmtp {
  private buffer = '';
  private waiting: (() => void) | undefined;
  private constructor(private socket: net.Socket | tls.TLSSocket) {
    this.listen();
  }

  static async connect(port: number): Promise<RawSmtp> {
    const socket = net.connect(port, '127.0.0.1');
    await new Promise<void>((resolve, reject) => socket.once('connect', resolve).once('error', reject));
    return new RawSmtp(socket);
  }

  private listen(): void {
    this.socket.on('data', (chunk: Buffer) => {
      this.buffer += chunk.toString('utf8');
      this.waiting?.();
    });
  }

  /** One complete (possibly multi-line) reply. */
  async read(): Promise<string> {
    for (;;) {
      const match = /^(?:\d{3}-.*\r\n)*\d{3}(?: .*)?\r\n/.exec(this.buffer);
      if (match) {
        this.buffer = this.buffer.slice(match[0].length);
        return match[0].trimEnd();
      }
      await new Promise<void>((resolve) => (this.waiting = resolve));
    }
  }

  async command(line: string): Promise<string> {
    this.socket.write(`${line}\r\n`);
    return this.read();
  }

  async startTls(extra: tls.ConnectionOptions = {}): Promise<string> {
    const reply = await this.command('STARTTLS');
    this.socket.removeAllListeners('data');
    const secure = tls.connect({
      socket: this.socket,
      ca: ca.certPem,
      servername: 'localhost',
      ...extra,
    });
    await new Promise<void>((resolve, reject) => secure.once('secureConnect', resolve).once('error', reject));
    this.socket = secure;
    this.listen();
    return reply;
  }

  close(): void {
    this.socket.destroy();
  }
}

describe('submission over STARTTLS with XOAUTH2', () => {
  it('accepts a message and records envelope, MIME, TLS and a redacted transcript', async () => {
    const token = await appToken();
    const info = await oauthTransport(token).sendMail(
      mail({ attachments: [{ filename: 'usage.csv', content: 'volume,used\n/data,91\n', contentType: 'text/csv' }] }),
    );

    expect(info.response).toMatch(/^250 2\.0\.0 OK <.+> \[Hostname=/);
    const [message] = await server.waitForMessages(1);
    expect(message!.mailbox).toBe(mailbox.address);
    expect(message!.authMethod).toBe('XOAUTH2');
    expect(message!.envelope).toEqual({ from: mailbox.address, to: [RECIPIENT] });
    expect(message!.tlsVersion).toMatch(/^TLSv1\.[23]$/);
    expect(message!.parsed.subject).toBe('Disk almost full');
    expect(message!.parsed.text?.trim()).toBe('Volume /data is at 91%.');
    expect(message!.parsed.html).toContain('<b>/data</b>');
    expect(message!.parsed.attachments).toHaveLength(1);
    expect(message!.parsed.attachments[0]!.filename).toBe('usage.csv');
    expect(Buffer.from(message!.parsed.attachments[0]!.content as ArrayBuffer).toString()).toBe(
      'volume,used\n/data,91\n',
    );

    const session = server.sessions.find((s) => s.id === message!.sessionId)!;
    expect(session).toMatchObject({ startedTls: true, authBeforeTls: false, user: mailbox.address });
    const t = session.transcript;
    expect(t[0]).toMatch(new RegExp(`^S: 220 ${SANDBOX_SMTP_HOSTNAME} Microsoft ESMTP MAIL Service ready at `));
    const startTls = t.indexOf('C: STARTTLS');
    const auth = t.findIndex((l) => l.startsWith('C: AUTH'));
    expect(startTls).toBeGreaterThan(0);
    expect(auth).toBeGreaterThan(startTls);
    expect(t[auth]).toBe('C: AUTH XOAUTH2 [redacted]');
    expect(t[auth + 1]).toBe('S: 235 2.7.0 Authentication successful');
    // Before STARTTLS the EHLO offers STARTTLS and no AUTH; after it, AUTH and the size limit.
    const plainEhlo = t.slice(0, startTls).join('\n');
    expect(plainEhlo).toContain('S: 250-STARTTLS');
    expect(plainEhlo).not.toContain('AUTH');
    const tlsEhlo = t.slice(startTls + 2, auth).join('\n');
    expect(tlsEhlo).toContain('AUTH LOGIN XOAUTH2');
    expect(tlsEhlo).toContain('SIZE 36700160');
    expect(tlsEhlo).not.toContain('STARTTLS');

    expect(recordedLeaks({ token })).toEqual([]);
    expect(everythingRecorded()).not.toContain(token.slice(0, 40));
    // The raw record does hold it, in the AUTH command after STARTTLS: the check above had something to miss.
    const wire = smtpWire(server);
    expect(
      secretScanner([{ kind: 'access-token', label: 'token', value: token }]).findAll({ auth: wire.auth }),
    ).toHaveLength(1);
    expect(
      secretScanner([{ kind: 'access-token', label: 'token', value: token }]).findAll({ elsewhere: wire.elsewhere }),
    ).toEqual([]);
    expect(server.authAttempts).toEqual([
      expect.objectContaining({ ok: true, outcome: 'ok', method: 'XOAUTH2', appId: tenant.app.clientId }),
    ]);
    expect(server.rejections).toEqual([]);
  });

  it('accepts the token with the Exchange app id as audience', async () => {
    const token = await appToken({ aud: '00000002-0000-0ff1-ce00-000000000000' });
    await oauthTransport(token).sendMail(mail());
    expect(server.messages).toHaveLength(1);
  });
});

describe('535 authentication failures (answered directly, no 334 challenge)', () => {
  const cases: {
    name: string;
    outcome: string;
    arrange: () => Promise<string>;
  }[] = [
    { name: 'expired token', outcome: 'token-expired', arrange: () => appToken({}, -60) },
    {
      name: 'wrong audience (a Graph token)',
      outcome: 'token-audience',
      arrange: () => appToken({ aud: 'https://graph.microsoft.com' }),
    },
    { name: 'no SMTP.SendAsApp role', outcome: 'missing-role', arrange: () => appToken({ roles: [] }) },
    {
      name: 'service principal registered with the App Registration object id',
      outcome: 'service-principal-object-id-mismatch',
      arrange: () => {
        tenant.exchange.servicePrincipals.set(tenant.app.clientId, tenant.app.applicationObjectId);
        return appToken();
      },
    },
    {
      name: 'app never registered with New-ServicePrincipal',
      outcome: 'service-principal-not-registered',
      arrange: () => {
        tenant.exchange.servicePrincipals.clear();
        return appToken();
      },
    },
    {
      name: 'no FullAccess on the mailbox',
      outcome: 'no-full-access',
      arrange: () => {
        mailbox.fullAccess.clear();
        return appToken();
      },
    },
    { name: 'token from another tenant', outcome: 'wrong-tenant', arrange: () => appToken({ tid: 'another-tenant' }) },
  ];

  it.each(cases)('$name → 535 5.7.3', async ({ outcome, arrange }) => {
    const token = await arrange();
    const error = await failure(oauthTransport(token).sendMail(mail()));

    expect(error.code).toBe('EAUTH');
    expect(error.command).toBe('AUTH XOAUTH2');
    expect(error.responseCode).toBe(535);
    expect(error.response).toMatch(
      new RegExp(`^535 5\\.7\\.3 Authentication unsuccessful \\[${SANDBOX_SMTP_HOSTNAME} `),
    );
    expect(server.authAttempts).toEqual([expect.objectContaining({ ok: false, outcome })]);
    const transcript = server.sessions[0]!.transcript;
    expect(transcript.filter((l) => l.startsWith('C: AUTH'))).toHaveLength(1);
    expect(transcript.some((l) => l.startsWith('S: 334'))).toBe(false);
    expect(server.rejections[0]).toMatchObject({ code: 535, enhanced: '5.7.3', command: 'AUTH' });
    expect(server.messages).toEqual([]);
    expect(recordedLeaks({ token })).toEqual([]);
  });

  it('tenant-wide SMTP AUTH disabled → 535 5.7.139 ... for the Tenant', async () => {
    tenant.exchange.smtpAuthEnabled = false;
    const error = await failure(oauthTransport(await appToken()).sendMail(mail()));
    expect(error.responseCode).toBe(535);
    expect(error.response).toBe(
      '535 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the Tenant. Visit https://aka.ms/smtp_auth_disabled for more information.',
    );
    expect(server.authAttempts[0]!.outcome).toBe('tenant-disabled');
  });

  it('mailbox SMTP AUTH disabled → 535 5.7.139 ... for the Mailbox', async () => {
    mailbox.smtpAuthEnabled = false;
    const error = await failure(oauthTransport(await appToken()).sendMail(mail()));
    expect(error.response).toBe(
      '535 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the Mailbox. Visit https://aka.ms/smtp_auth_disabled for more information.',
    );
    expect(server.authAttempts[0]!.outcome).toBe('mailbox-disabled');
  });
});

describe('no authentication', () => {
  it('MAIL FROM without AUTH → 530 5.7.57', async () => {
    const t = nodemailer.createTransport(baseOptions());
    transports.push(t);
    const error = await failure(t.sendMail(mail()));
    expect(error.code).toBe('EENVELOPE');
    expect(error.command).toBe('MAIL FROM');
    expect(error.responseCode).toBe(530);
    expect(error.response).toMatch(/^530 5\.7\.57 Client not authenticated to send mail\. \[/);
    expect(server.sessions[0]!.startedTls).toBe(true);
  });

  it('before STARTTLS: no AUTH offered, AUTH refused and flagged, MAIL FROM → 530 5.7.57', async () => {
    const raw = await RawSmtp.connect(server.port);
    try {
      expect(await raw.read()).toMatch(/^220 .* Microsoft ESMTP MAIL Service ready at /);
      const ehlo = await raw.command('EHLO client.test');
      expect(ehlo).toContain('250-STARTTLS');
      expect(ehlo).not.toContain('AUTH');
      const secretBlob = Buffer.from(`user=${mailbox.address}\x01auth=Bearer not-a-real-token-123\x01\x01`).toString(
        'base64',
      );
      expect(await raw.command(`AUTH XOAUTH2 ${secretBlob}`)).toBe('504 5.7.4 Unrecognized authentication type');
      expect(await raw.command(`MAIL FROM:<${mailbox.address}>`)).toMatch(/^530 5\.7\.57 Client not authenticated/);
      // A client that answers a refused AUTH LOGIN anyway sends its password as a bare line.
      expect(await raw.command('AUTH LOGIN')).toMatch(/^504 /);
      expect(await raw.command(Buffer.from('hunter2-password').toString('base64'))).toMatch(/^500 5\.3\.3/);

      expect(await raw.startTls()).toBe('220 2.0.0 SMTP server ready');
      const secureEhlo = await raw.command('EHLO client.test');
      expect(secureEhlo).toContain('250-AUTH LOGIN XOAUTH2');
      expect(await raw.command('QUIT')).toBe('221 2.0.0 Service closing transmission channel');
    } finally {
      raw.close();
    }
    const session = server.sessions[0]!;
    expect(session.authBeforeTls).toBe(true);
    expect(session.transcript).toContain('C: AUTH XOAUTH2 [redacted]');
    expect(session.transcript).toContain('C: [redacted]');
    const values = { token: 'not-a-real-token-123', password: 'hunter2-password' };
    expect(recordedLeaks(values)).toEqual([]);
    // Sent in clear before STARTTLS: the raw record keeps both outside any AUTH exchange, where scans flag them.
    const leaks = secretScanner(Object.entries(values).map(([label, value]) => ({ kind: 'secret', label, value })));
    expect(
      leaks
        .findAll({ elsewhere: smtpWire(server).elsewhere })
        .map((l) => [l.label, l.form])
        .sort(),
    ).toEqual([
      ['password', 'base64@0'],
      ['token', `base64@${(18 + mailbox.address.length) % 3}`],
    ]);
  });
});

describe('TLS', () => {
  it('refuses TLS 1.1 during the STARTTLS handshake', async () => {
    const raw = await RawSmtp.connect(server.port);
    try {
      await raw.read();
      await raw.command('EHLO client.test');
      const handshake = raw.startTls({ minVersion: 'TLSv1', maxVersion: 'TLSv1.1', ciphers: 'DEFAULT@SECLEVEL=0' });
      await expect(handshake).rejects.toMatchObject({ code: 'ERR_SSL_TLSV1_ALERT_PROTOCOL_VERSION' });
    } finally {
      raw.close();
    }
    await expect.poll(() => server.sessions[0]!.open).toBe(false);
    expect(server.sessions[0]).toMatchObject({ startedTls: false });
    expect(server.sessions[0]!.error).toMatch(/unsupported protocol/i);
  });
});

describe('SendAs', () => {
  it('envelope sender the mailbox may not send as → 554 5.2.252 after DATA', async () => {
    const error = await failure(oauthTransport(await appToken()).sendMail(mail({ from: 'ceo@contoso.test' })));
    expect(error.responseCode).toBe(554);
    expect(error.command).toBe('DATA');
    expect(error.response).toBe(
      `554 5.2.252 SendAsDenied; ${mailbox.address} not allowed to send as ceo@contoso.test; STOREDRV.Submission.Exception:SendAsDeniedException; Failed to process message due to a permanent exception with message [BeginDiagnosticData]Cannot submit message.[EndDiagnosticData]`,
    );
    expect(server.messages).toEqual([]);
  });

  it('From: header differing from MAIL FROM is checked too', async () => {
    const error = await failure(
      oauthTransport(await appToken()).sendMail(
        mail({ from: 'ceo@contoso.test', envelope: { from: mailbox.address, to: [RECIPIENT] } }),
      ),
    );
    expect(error.response).toMatch(/^554 5\.2\.252 SendAsDenied; .* not allowed to send as ceo@contoso\.test;/);
  });

  it('a SendAs grant for the address or its @domain lets it through', async () => {
    const transport = oauthTransport(await appToken());
    mailbox.sendAs.add('noreply@contoso.test');
    await transport.sendMail(mail({ from: 'NoReply@contoso.test' }));
    mailbox.sendAs.add('@fabrikam.test');
    await transport.sendMail(mail({ from: 'alerts@fabrikam.test' }));
    expect(server.messages.map((m) => m.envelope.from)).toEqual(['NoReply@contoso.test', 'alerts@fabrikam.test']);
  });
});

describe('per-mailbox limits', () => {
  it('a 4th concurrently authenticated session gets 432 4.3.2 at MAIL FROM', async () => {
    const token = await appToken();
    const pools = [0, 1, 2].map(() => pooledOauthTransport(token));
    // Each pool keeps its authenticated connection open after sending.
    await Promise.all(pools.map((p) => p.sendMail(mail())));
    const fourth = pooledOauthTransport(token);

    const error = await failure(fourth.sendMail(mail()));
    expect(error.responseCode).toBe(432);
    expect(error.command).toBe('MAIL FROM');
    expect(error.response).toMatch(/^432 4\.3\.2 STOREDRV\.ClientSubmit; sender thread limit exceeded \[/);
    expect(server.violations).toEqual([
      expect.objectContaining({ kind: 'connections', mailbox: mailbox.address, count: 4, limit: 3 }),
    ]);
    expect(server.maxConcurrentSessions(mailbox.address)).toBe(4);

    // Once one of the three goes away, the fourth may send.
    pools[0]!.close();
    await expect.poll(() => server.sessions.filter((s) => s.open && s.user).length).toBe(3);
    await fourth.sendMail(mail());
    expect(server.messages).toHaveLength(4);
  });

  it('more than ratePerMinute messages in a window is recorded, not rejected', async () => {
    let now = 1_000_000;
    await start({ ratePerMinute: 5, rateWindowMs: 1_000 }, { now: () => now });
    const transport = pooledOauthTransport(await appToken());
    for (let i = 0; i < 6; i++) {
      await transport.sendMail(mail({ subject: `#${i}` }));
      now += 100;
    }
    expect(server.messages).toHaveLength(6);
    expect(server.violations).toEqual([
      { kind: 'rate', mailbox: mailbox.address, at: 1_000_500, count: 6, limit: 5, windowMs: 1_000 },
    ]);
    expect(server.maxInAnyWindow(mailbox.address)).toBe(6);

    now += 5_000;
    for (let i = 0; i < 5; i++) {
      await transport.sendMail(mail());
      now += 250;
    }
    expect(server.violations).toHaveLength(1);
    expect(server.maxInAnyWindow(mailbox.address)).toBe(6);
  });

  it('daily recipient quota → 554 5.2.0, and frees up as the window rolls', async () => {
    let now = 5_000_000;
    await start({ dailyRecipients: 5, dailyWindowMs: 10_000 }, { now: () => now });
    const transport = pooledOauthTransport(await appToken());
    const three = ['a@fabrikam.test', 'b@fabrikam.test', 'c@fabrikam.test'];
    await transport.sendMail(mail({ to: three }));
    now += 1_000;
    const error = await failure(transport.sendMail(mail({ to: three })));
    expect(error.responseCode).toBe(554);
    expect(error.response).toBe(
      '554 5.2.0 STOREDRV.Submission.Exception:SubmissionQuotaExceededException; Failed to process message due to a permanent exception with message [BeginDiagnosticData]Cannot submit message.[EndDiagnosticData]',
    );
    expect(server.recipientsInDailyWindow(mailbox.address)).toBe(3);
    now += 9_500;
    await transport.sendMail(mail({ to: three }));
    expect(server.messages).toHaveLength(2);
  });

  it('recipients beyond maxRecipients get 452 4.5.3 (nodemailer still sends to the rest)', async () => {
    await start({ maxRecipients: 3 });
    const to = ['a@fabrikam.test', 'b@fabrikam.test', 'c@fabrikam.test', 'd@fabrikam.test'];
    const info = await oauthTransport(await appToken()).sendMail(mail({ to }));
    expect(info.rejected).toEqual(['d@fabrikam.test']);
    const rejected = (info as unknown as { rejectedErrors: SmtpFailure[] }).rejectedErrors[0]!;
    expect(rejected.responseCode).toBe(452);
    expect(rejected.response).toBe('452 4.5.3 Too many recipients');
    expect(server.messages[0]!.envelope.to).toEqual(to.slice(0, 3));
    expect(server.rejections).toEqual([expect.objectContaining({ code: 452, enhanced: '4.5.3', command: 'RCPT' })]);
  });

  it('a message over maxMessageBytes → 552 5.3.4', async () => {
    await start({ maxMessageBytes: 10_000 });
    const error = await failure(
      oauthTransport(await appToken()).sendMail(
        mail({ attachments: [{ filename: 'big.bin', content: Buffer.alloc(20_000, 7) }] }),
      ),
    );
    expect(error.responseCode).toBe(552);
    expect(error.response).toBe('552 5.3.4 Message size exceeds fixed maximum message size');
    expect(server.sessions[0]!.transcript.join('\n')).toContain('SIZE 10000');
    expect(server.messages).toEqual([]);
  });
});

describe('fault knobs', () => {
  it('dropMidData: the socket dies during DATA, nothing is recorded, the next send works', async () => {
    server.faults.dropMidData = 1;
    const transport = oauthTransport(await appToken());
    const error = await failure(transport.sendMail(mail()));
    expect(error.code).toMatch(/^(ECONNECTION|ESOCKET|ESTREAM)$/);
    expect(server.messages).toEqual([]);
    await transport.sendMail(mail());
    expect(server.messages).toHaveLength(1);
  });

  it('reply421: the greeting is 421 4.3.2', async () => {
    server.faults.reply421 = 1;
    const error = await failure(oauthTransport(await appToken()).sendMail(mail()));
    expect(error.code).toBe('EPROTOCOL');
    expect(error.responseCode).toBe(421);
    expect(error.response).toBe('421 4.3.2 Service not available, closing transmission channel');
    expect(server.rejections[0]).toMatchObject({ code: 421, command: 'CONNECT' });
  });

  it('reply421OnCommand: MAIL FROM is answered 421 4.3.2', async () => {
    server.faults.reply421OnCommand = 1;
    server.faults.reply421Command = 'MAIL';
    const error = await failure(oauthTransport(await appToken()).sendMail(mail()));
    expect(error.responseCode).toBe(421);
    expect(error.command).toBe('MAIL FROM');
    expect(error.response).toBe('421 4.3.2 Service not available, closing transmission channel');
  });

  it('delayMs delays every reply', async () => {
    server.faults.delayMs = 60;
    const started = Date.now();
    await oauthTransport(await appToken()).sendMail(mail());
    // greeting, EHLO, STARTTLS, EHLO, AUTH, MAIL, RCPT, DATA, end of data: at least 9 delayed replies
    expect(Date.now() - started).toBeGreaterThanOrEqual(9 * 60);
  });

  it('noStartTls: nodemailer with requireTLS refuses, and no AUTH ever reaches the server', async () => {
    server.faults.noStartTls = true;
    const error = await failure(oauthTransport(await appToken()).sendMail(mail()));
    expect(error.code).toBe('ETLS');
    const session = server.sessions[0]!;
    expect(session.startedTls).toBe(false);
    expect(session.transcript.join('\n')).not.toContain('STARTTLS\nS: 220');
    expect(session.transcript.some((l) => l.startsWith('C: AUTH'))).toBe(false);
    expect(server.authAttempts).toEqual([]);
  });

  it('force432 and logonFailure430 answer MAIL FROM once each', async () => {
    const transport = pooledOauthTransport(await appToken());
    server.faults.force432 = 1;
    server.faults.logonFailure430 = 1;
    const first = await failure(transport.sendMail(mail()));
    expect(first.response).toBe(
      '430 4.2.0 STOREDRV; mailbox logon failure; STOREDRV.Submission.Exception:ConnectionFailedTransientException.MapiExceptionLogonFailed',
    );
    const second = await failure(transport.sendMail(mail()));
    expect(second.responseCode).toBe(432);
    await transport.sendMail(mail());
    expect(server.messages).toHaveLength(1);
  });
});

describe('basic authentication (legacy app password)', () => {
  it('AUTH LOGIN with the app password works and the password never shows', async () => {
    await basicTransport(mailbox.appPassword!).sendMail(mail());
    expect(server.messages[0]!.authMethod).toBe('LOGIN');
    expect(recordedLeaks({ 'app password': mailbox.appPassword! })).toEqual([]);
  });

  it('a wrong password → 535 5.7.3', async () => {
    const error = await failure(basicTransport('wrong').sendMail(mail()));
    expect(error.code).toBe('EAUTH');
    expect(error.command).toBe('AUTH LOGIN');
    expect(error.response).toMatch(/^535 5\.7\.3 Authentication unsuccessful/);
  });

  it('basic auth switched off → 535 5.7.139 basic authentication is disabled', async () => {
    server.limits.basicAuthEnabled = false;
    const error = await failure(basicTransport(mailbox.appPassword!).sendMail(mail()));
    expect(error.responseCode).toBe(535);
    expect(error.response).toBe('535 5.7.139 Authentication unsuccessful, basic authentication is disabled.');
    expect(server.authAttempts[0]!.outcome).toBe('basic-disabled');
  });
});

describe('records', () => {
  it('reset() empties the records and the faults', async () => {
    server.faults.force432 = 3;
    await failure(oauthTransport(await appToken()).sendMail(mail()));
    server.reset();
    expect(server.sessions).toEqual([]);
    expect(server.rejections).toEqual([]);
    expect(server.faults.force432).toBe(0);
  });
});
