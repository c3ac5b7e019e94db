/**
 * `m365-mailer doctor` against the sandbox (Entra ID, Key Vault, Exchange SMTP over real TLS) and a loopback DNS
 * server (sandbox/dns.ts): every check passing, then each one failing the way a real tenant does.
 */
import net from 'node:net';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { EXIT_OK, EXIT_USAGE, runCli } from '../../src/cli';
import { parseDoctorArgs, runDoctorCommand } from '../../src/doctor/command';
import type { CheckResult } from '../../src/doctor/report';
import { Redactor } from '../../src/redact';
import { goodDomainRecords, startSandboxDns, type SandboxDns } from '../../sandbox/dns';
import { secretScanner } from '../support/secretScan';
import { startTls11Server, startTlsServer } from '../support/tlsServer';
import { applySandboxEnv, sandboxMailer, message, startSandbox, type Sandbox } from '../support/sandboxMailer';

let sandbox: Sandbox;
let dns: SandboxDns;
let cwd: string;
const outputs: string[] = [];
const DOMAIN = 'contoso.test';

beforeAll(async () => {
  sandbox = await startSandbox();
  applySandboxEnv(sandbox);
  dns = await startSandboxDns();
  cwd = mkdtempSync(path.join(tmpdir(), 'doctor-'));
});

/** Every test starts from a healthy tenant and a domain with good records. */
function resetWorld(): void {
  dns.zone.clear();
  for (const [name, entry] of goodDomainRecords(DOMAIN)) dns.zone.set(name, entry);
  const { tenant } = sandbox;
  tenant.app.roles = ['SMTP.SendAsApp'];
  tenant.exchange.smtpAuthEnabled = true;
  tenant.exchange.servicePrincipals.set(tenant.app.clientId, tenant.app.servicePrincipalObjectId);
  sandbox.smtp.faults.noStartTls = false;
  sandbox.keyVault.faults.length = 0;
  sandbox.entra.faults.length = 0;
}

afterEach(resetWorld);

afterAll(async () => {
  await Promise.all([sandbox.close(), dns.close()]);
  rmSync(cwd, { recursive: true, force: true });
});

interface DoctorRun {
  code: number;
  results: CheckResult[];
  byName: Record<string, CheckResult>;
}

/** Runs the doctor as the CLI does, with the JSON output parsed; `now` shifts this machine's clock. */
async function doctor(
  overrides: Record<string, string | undefined> = {},
  options: { args?: string[]; now?: () => number } = {},
): Promise<DoctorRun> {
  if (dns.zone.size === 0) resetWorld();
  let out = '';
  const code = await runDoctorCommand(parseDoctorArgs(['--json', '--dns', dns.server, ...(options.args ?? [])]), {
    settings: () => ({ ...sandbox.settings(), ...overrides }),
    redactor: new Redactor(),
    write: (text) => (out += text),
    timeoutMs: 5_000,
    ...(options.now ? { now: options.now } : {}),
  });
  outputs.push(out);
  const results = out
    .trimEnd()
    .split('\n')
    .map((line) => JSON.parse(line) as CheckResult);
  return { code, results, byName: Object.fromEntries(results.map((r) => [r.name, r])) };
}

const minutes = (n: number) => () => Date.now() + n * 60_000;

async function closedPort(): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as net.AddressInfo;
  await new Promise((resolve) => server.close(resolve));
  return port;
}

describe('a healthy tenant', () => {
  it('passes every check and exits 0', async () => {
    const run = await doctor();
    expect(run.results.map((r) => [r.name, r.status])).toEqual([
      ['settings', 'pass'],
      ['clock', 'pass'],
      ['smtp-dns', 'pass'],
      ['smtp-tcp', 'pass'],
      ['smtp-starttls', 'pass'],
      ['key-vault', 'pass'],
      ['token', 'pass'],
      ['smtp-auth', 'pass'],
      ['send-as', 'pass'],
      ['spf', 'pass'],
      ['dkim', 'pass'],
      ['dmarc', 'pass'],
      ['auth-mode', 'pass'],
    ]);
    expect(run.code).toBe(0);
    expect(run.byName['smtp-starttls']?.detail).toMatch(/^STARTTLS to TLSv1\.[23] .*valid \d{4}-/);
    const { tenant } = sandbox;
    expect(run.byName.token?.detail).toContain(
      `roles=[SMTP.SendAsApp] aud=https://outlook.office365.com tid=${tenant.tenantId} appid=${tenant.app.clientId} oid=${tenant.app.servicePrincipalObjectId}`,
    );
    // AUTH without sending: the sandbox received no message.
    expect(sandbox.smtp.messages).toHaveLength(0);
  });

  it('prints text lines through the CLI and exits 0', async () => {
    resetWorld();
    let stdout = '';
    let stderr = '';
    const code = await runCli(['doctor', '--dns', dns.server], {
      stdout: (t) => (stdout += t),
      stderr: (t) => (stderr += t),
      env: sandbox.settings(),
      cwd,
    });
    outputs.push(stdout, stderr);
    expect(stderr).toBe('');
    expect(code).toBe(EXIT_OK);
    expect(stdout).toMatch(/^PASS {2}settings {7}sender alerts@contoso\.test/);
    expect(stdout.trimEnd().split('\n').at(-1)).toBe('13 passed, 0 warned, 0 failed, 0 skipped');
  });
});

describe('settings', () => {
  it('fails with loadConfig’s problems, skips the rest and exits 1', async () => {
    const run = await doctor({ MAIL_SENDER: undefined, MAIL_CLIENT_ID: 'not-a-guid' });
    expect(run.byName.settings?.status).toBe('fail');
    expect(run.byName.settings?.detail).toContain('MAIL_SENDER is required');
    expect(run.byName.settings?.detail).toContain('MAIL_CLIENT_ID is invalid');
    expect(run.results.slice(1).every((r) => r.status === 'skip' && r.detail.includes('settings'))).toBe(true);
    expect(run.code).toBe(1);
  });
  it('warns without MAIL_UNSUBSCRIBE_BASE_URL: bulk mail and digests cannot be sent; the other checks still run', async () => {
    const run = await doctor({ MAIL_UNSUBSCRIBE_BASE_URL: undefined });
    expect(run.byName.settings?.status).toBe('warn');
    expect(run.byName.settings?.detail).toContain('MAIL_UNSUBSCRIBE_BASE_URL is not set');
    expect(run.byName.settings?.detail).toContain('UNSUBSCRIBE_NOT_CONFIGURED');
    expect(run.byName.token?.status).toBe('pass');
    expect(run.code).toBe(0);
  });
});

describe('clock', () => {
  it('warns at 3 minutes of skew', async () => {
    const run = await doctor({}, { now: minutes(3) });
    expect(run.byName.clock).toMatchObject({ status: 'warn' });
    expect(run.byName.clock?.detail).toMatch(/is 1[78]\d s ahead of 127\.0\.0\.1/);
    expect(run.code).toBe(0);
  });
  it('fails at 10 minutes either way', async () => {
    for (const offset of [10, -10]) {
      const run = await doctor({}, { now: minutes(offset) });
      expect(run.byName.clock?.status).toBe('fail');
      expect(run.byName.clock?.detail).toContain(offset > 0 ? 'ahead of' : 'behind');
      expect(run.byName.clock?.fix).toContain('about 5 minutes of skew');
      expect(run.code).toBe(1);
    }
  });
});

describe('smtp-dns', () => {
  it('resolves a host name through --dns', async () => {
    resetWorld();
    dns.zone.set('smtp.contoso.test', { a: ['127.0.0.1'] });
    const run = await doctor({ MAIL_SMTP_HOST: 'smtp.contoso.test' });
    expect(run.byName['smtp-dns']).toMatchObject({ status: 'pass', detail: 'smtp.contoso.test resolves to 127.0.0.1' });
    expect(run.byName['smtp-tcp']?.status).toBe('pass');
    // Verification stays on: the sandbox's certificate is not for smtp.contoso.test.
    expect(run.byName['smtp-starttls']?.status).toBe('fail');
    expect(run.byName['smtp-starttls']?.detail).toContain('TLS_CERTIFICATE');
  });
  it('fails on NXDOMAIN and skips the connection checks', async () => {
    const run = await doctor({ MAIL_SMTP_HOST: 'smtp.nowhere.test' });
    expect(run.byName['smtp-dns']).toMatchObject({ status: 'fail' });
    expect(run.byName['smtp-dns']?.detail).toContain('NXDOMAIN');
    expect(run.byName['smtp-dns']?.fix).toContain('MAIL_SMTP_HOST');
    for (const name of ['smtp-tcp', 'smtp-starttls', 'smtp-auth']) expect(run.byName[name]?.status).toBe('skip');
  });
});

describe('smtp-tcp', () => {
  it('fails on a closed port with CONNECTION_FAILED and skips STARTTLS and AUTH', async () => {
    const run = await doctor({ MAIL_SMTP_PORT: String(await closedPort()) });
    expect(run.byName['smtp-tcp']?.status).toBe('fail');
    expect(run.byName['smtp-tcp']?.detail).toContain('ECONNREFUSED');
    expect(run.byName['smtp-tcp']?.fix).toContain('outbound 587');
    expect(run.byName['smtp-starttls']).toMatchObject({ status: 'skip', detail: 'skipped: smtp-tcp failed' });
    expect(run.byName['smtp-auth']?.status).toBe('skip');
  });
});

describe('smtp-starttls', () => {
  it('fails when STARTTLS is not offered (STARTTLS_UNAVAILABLE) and skips AUTH', async () => {
    resetWorld();
    sandbox.smtp.faults.noStartTls = true;
    const run = await doctor();
    expect(run.byName['smtp-starttls']?.status).toBe('fail');
    expect(run.byName['smtp-starttls']?.detail).toContain('STARTTLS_UNAVAILABLE');
    expect(run.byName['smtp-auth']?.status).toBe('skip');
  });
  it('fails when the certificate is not trusted (no MAIL_TLS_CA_FILE): verification stays on', async () => {
    const run = await doctor({ MAIL_TLS_CA_FILE: undefined });
    expect(run.byName['smtp-starttls']?.status).toBe('fail');
    expect(run.byName['smtp-starttls']?.detail).toContain('TLS_CERTIFICATE');
    expect(run.byName['smtp-starttls']?.fix).toContain('MAIL_TLS_CA_FILE');
  });
  it('fails a server that speaks only TLS 1.1 (TLS_VERSION)', async () => {
    const server = await startTls11Server(sandbox.ca.issueServer());
    try {
      const run = await doctor({ MAIL_SMTP_PORT: String(server.port) });
      expect(run.byName['smtp-tcp']?.status).toBe('pass');
      expect(run.byName['smtp-starttls']?.status).toBe('fail');
      expect(run.byName['smtp-starttls']?.detail).toContain('TLS_VERSION');
      expect(run.byName['smtp-starttls']?.fix).toContain('TLS 1.2 or later');
    } finally {
      await server.close();
    }
  });
  it('fails a server whose certificate has expired (TLS_CERTIFICATE), and passes the same server with a valid one', async () => {
    const day = 24 * 60 * 60 * 1000;
    const expired = sandbox.ca.issueServer(undefined, {
      notBefore: new Date(Date.now() - 30 * day),
      notAfter: new Date(Date.now() - day),
    });
    const valid = sandbox.ca.issueServer();
    const servers = await Promise.all([
      startTlsServer({ key: expired.keyPem, cert: expired.certPem }),
      startTlsServer({ key: valid.keyPem, cert: valid.certPem }),
    ]);
    try {
      const bad = await doctor({ MAIL_SMTP_PORT: String(servers[0].port) });
      expect(bad.byName['smtp-starttls']?.status).toBe('fail');
      expect(bad.byName['smtp-starttls']?.detail).toContain('CERT_HAS_EXPIRED');
      expect(bad.byName['smtp-starttls']?.detail).toContain('TLS_CERTIFICATE');
      const good = await doctor({ MAIL_SMTP_PORT: String(servers[1].port) });
      expect(good.byName['smtp-starttls']?.status).toBe('pass');
    } finally {
      await Promise.all(servers.map((server) => server.close()));
    }
  });
  it('fails when the certificate has expired by this machine’s clock', async () => {
    const run = await doctor({}, { now: minutes(60 * 24 * 400) });
    expect(run.byName['smtp-starttls']?.status).toBe('fail');
    expect(run.byName['smtp-starttls']?.detail).toMatch(/valid .* to .*: TLS_CERTIFICATE/);
  });
});

describe('key-vault', () => {
  it('separates 403 (no Key Vault Secrets User) and skips the token', async () => {
    resetWorld();
    sandbox.keyVault.faults.push({ kind: 'status', status: 403 });
    const run = await doctor();
    expect(run.byName['key-vault']?.status).toBe('fail');
    expect(run.byName['key-vault']?.detail).toContain('403');
    expect(run.byName['key-vault']?.detail).toContain('KEY_VAULT_FORBIDDEN');
    expect(run.byName['key-vault']?.fix).toContain('Key Vault Secrets User');
    expect(run.byName.token).toMatchObject({ status: 'skip', detail: 'skipped: key-vault failed' });
    expect(run.byName['smtp-auth']?.status).toBe('skip');
  });
  it('separates 404 (no such secret)', async () => {
    const run = await doctor({ MAIL_CLIENT_SECRET_NAME: 'no-such-secret' });
    expect(run.byName['key-vault']?.status).toBe('fail');
    expect(run.byName['key-vault']?.detail).toContain("404: no secret 'no-such-secret' (MAIL_CLIENT_SECRET_NAME)");
    expect(run.byName['key-vault']?.detail).toContain('KEY_VAULT_SECRET_NOT_FOUND');
  });
  it('reads the certificate secret in client-certificate mode', async () => {
    const run = await doctor(sandbox.settings('client-certificate'));
    expect(run.byName['key-vault']).toMatchObject({ status: 'pass' });
    expect(run.byName['key-vault']?.detail).toContain("'mail-client-cert' (MAIL_CLIENT_CERT_NAME)");
    expect(run.byName.token?.status).toBe('pass');
    expect(run.byName['smtp-auth']?.status).toBe('pass');
  });
  it('is skipped for federated-identity, which reads no secret; the token still passes', async () => {
    const run = await doctor(sandbox.settings('federated-identity'));
    expect(run.byName['key-vault']?.status).toBe('skip');
    expect(run.byName.token?.status).toBe('pass');
    expect(run.byName['smtp-auth']?.status).toBe('pass');
  });
});

describe('token', () => {
  it('fails when the token has no SMTP.SendAsApp role', async () => {
    resetWorld();
    sandbox.tenant.app.roles = [];
    const run = await doctor();
    expect(run.byName.token?.status).toBe('fail');
    expect(run.byName.token?.detail).toContain('roles has no SMTP.SendAsApp');
    expect(run.byName.token?.fix).toContain('admin consent');
  });
  it('fails with Entra ID’s classified error (TOKEN_INVALID_CLIENT_SECRET) and skips AUTH', async () => {
    resetWorld();
    // The sender re-reads Key Vault and retries once on this code: both tries are refused.
    sandbox.entra.faults.push({ kind: 'aadsts', code: 7000215 }, { kind: 'aadsts', code: 7000215 });
    const run = await doctor();
    expect(run.byName.token?.status).toBe('fail');
    expect(run.byName.token?.detail).toMatch(/^TOKEN_INVALID_CLIENT_SECRET: /);
    expect(run.byName['smtp-auth']).toMatchObject({ status: 'skip', detail: 'skipped: token failed' });
  });
});

describe('smtp-auth', () => {
  it('on 535 5.7.3 prints New-ServicePrincipal and Add-MailboxPermission filled in from the token', async () => {
    resetWorld();
    const { tenant } = sandbox;
    // The common mistake: Exchange knows the app under the App Registration's object id.
    tenant.exchange.servicePrincipals.set(tenant.app.clientId, tenant.app.applicationObjectId);
    const run = await doctor();
    const auth = run.byName['smtp-auth'];
    expect(auth?.status).toBe('fail');
    expect(auth?.detail).toMatch(/^AUTH_FAILED \(535 5\.7\.3 Authentication unsuccessful/);
    const oid = tenant.app.servicePrincipalObjectId;
    expect(auth?.fix.split('\n').slice(0, 2)).toEqual([
      `New-ServicePrincipal -AppId ${tenant.app.clientId} -ObjectId ${oid}`,
      `Add-MailboxPermission -Identity ${sandbox.settings().MAIL_SENDER} -User ${oid} -AccessRights FullAccess`,
    ]);
    expect(run.code).toBe(1);
  });
  it('on 535 5.7.139 says SMTP AUTH is disabled, with Set-CASMailbox', async () => {
    resetWorld();
    sandbox.tenant.exchange.smtpAuthEnabled = false;
    const run = await doctor();
    expect(run.byName['smtp-auth']?.detail).toMatch(/^SMTP_AUTH_DISABLED \(535 5\.7\.139 /);
    expect(run.byName['smtp-auth']?.fix).toContain(
      'Set-CASMailbox -Identity <MAIL_SENDER> -SmtpClientAuthenticationDisabled $false',
    );
  });
  it('passes with AUTH LOGIN in basic mode, with the deprecation warning', async () => {
    const run = await doctor(sandbox.settings('basic'));
    expect(run.byName.token?.status).toBe('skip');
    expect(run.byName['smtp-auth']).toMatchObject({ status: 'pass' });
    expect(run.byName['smtp-auth']?.detail).toContain('AUTH LOGIN');
    expect(run.byName['auth-mode']?.status).toBe('warn');
    expect(run.code).toBe(0);
  });
});

describe('send-as', () => {
  it('warns for an allowed From other than the sender, with the grant to check', async () => {
    const run = await doctor({ MAIL_ALLOWED_FROM: 'billing@contoso.test' });
    expect(run.byName['send-as']?.status).toBe('warn');
    expect(run.byName['send-as']?.fix).toContain(
      'Add-RecipientPermission -Identity billing@contoso.test -Trustee alerts@contoso.test -AccessRights SendAs',
    );
  });
  it('why it cannot probe: Exchange refuses SendAs only after DATA (554 5.2.252), MAIL FROM is accepted', async () => {
    const mailer = sandboxMailer(sandbox, 'client-secret', { MAIL_ALLOWED_FROM: 'billing@contoso.test' });
    try {
      const error = await mailer.sender
        .send(message(mailer, { from: 'billing@contoso.test' }), { source: 'cli' })
        .catch((e: unknown) => e);
      expect(error).toMatchObject({ code: 'SEND_AS_DENIED', smtp: { enhanced: '5.2.252' } });
      const session = sandbox.smtp.sessions.at(-1);
      const transcript = session?.transcript ?? [];
      const mailFrom = transcript.findIndex((l) => l.startsWith('C: MAIL FROM'));
      expect(transcript[mailFrom + 1]).toMatch(/^S: 250 /);
      expect(transcript.some((l) => /^C: <\d+ bytes of DATA>/.test(l))).toBe(true);
    } finally {
      await mailer.close();
    }
  });
});

describe('spf, dkim, dmarc', () => {
  it('fail for a domain with no records (--domain)', async () => {
    const run = await doctor({}, { args: ['--domain', 'fabrikam.test'] });
    expect(run.byName.spf?.detail).toBe('fabrikam.test has no v=spf1 TXT record');
    expect(run.byName.dkim?.detail).toContain('selector1._domainkey.fabrikam.test');
    expect(run.byName.dmarc?.detail).toBe('_dmarc.fabrikam.test has no v=DMARC1 TXT record');
    for (const name of ['spf', 'dkim', 'dmarc']) expect(run.byName[name]?.status).toBe('fail');
  });
  it('fails SPF without Exchange Online’s include, DKIM with one selector missing', async () => {
    resetWorld();
    dns.zone.set(DOMAIN, { txt: [['v=spf1 ip4:192.0.2.1', ' -all'], 'google-site-verification=x'] });
    dns.zone.delete(`selector2._domainkey.${DOMAIN}`);
    const run = await doctor();
    expect(run.byName.spf?.status).toBe('fail');
    expect(run.byName.spf?.fix).toContain('include:spf.protection.outlook.com');
    expect(run.byName.dkim).toMatchObject({ status: 'fail', detail: `no CNAME at selector2._domainkey.${DOMAIN}` });
  });
  it('warns on DMARC p=none', async () => {
    resetWorld();
    dns.zone.set(`_dmarc.${DOMAIN}`, { txt: ['v=DMARC1; p=none'] });
    const run = await doctor();
    expect(run.byName.dmarc?.status).toBe('warn');
    expect(run.byName.dmarc?.fix).toContain('p=quarantine');
    expect(run.code).toBe(0);
  });
  it('fail when the DNS server does not answer', async () => {
    const run = await doctor({}, { args: ['--dns', `127.0.0.1:${await closedPort()}`] });
    expect(run.byName.spf?.detail).toMatch(/^could not look up TXT contoso\.test/);
    expect(run.byName.spf?.status).toBe('fail');
  });
});

describe('the CLI', () => {
  it('refuses a bad --dns naming the flag, exit 2', async () => {
    let stdout = '';
    let stderr = '';
    const io = { stdout: (t: string) => (stdout += t), stderr: (t: string) => (stderr += t), env: {}, cwd };
    expect(await runCli(['doctor', '--dns', 'dns.example.com'], io)).toBe(EXIT_USAGE);
    expect(stderr).toMatch(/^m365-mailer doctor: --dns must be an IP address/);
    expect(await runCli(['doctor', '--dns', 'x', '--json'], io)).toBe(EXIT_USAGE);
    expect(JSON.parse(stdout)).toMatchObject({ ok: false, error: { code: 'USAGE', option: '--dns' } });
  });
  it('never prints a secret or a token', () => {
    expect(outputs.length).toBeGreaterThan(10);
    expect(secretScanner(sandbox.secrets()).findAll({ outputs })).toEqual([]);
  });
});
