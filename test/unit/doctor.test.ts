/** The doctor's pure parts: DNS record readers, JWT claims, clock verdicts, report formatting, argument parsing. */
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { ERROR_CODES } from '../../src/errors';
import { CHECK_NAMES } from '../../src/doctor/runDoctor';
import { loadConfig } from '../../src/config';
import { checkAuthMode } from '../../src/doctor/checks/authMode';
import { judgeSkew } from '../../src/doctor/checks/clock';
import { checkSendAs } from '../../src/doctor/checks/sendAs';
import { servicePrincipalFix } from '../../src/doctor/checks/smtpAuthentication';
import { claimProblems, describeClaims } from '../../src/doctor/checks/token';
import { DoctorUsageError, parseDoctorArgs } from '../../src/doctor/command';
import { dnsServerProblem } from '../../src/doctor/dnsResolver';
import { joinTxtRecords, MAX_TXT_RECORD_CHARS, readDmarc, readSpf } from '../../src/doctor/dnsRecords';
import { MAX_TOKEN_CHARS, readTokenClaims } from '../../src/doctor/jwtClaims';
import { doctorExitCode, formatJson, formatText, type CheckResult } from '../../src/doctor/report';

const GUID = '11111111-2222-3333-4444-555555555555';
const jwt = (payload: unknown) =>
  `eyJhbGciOiJSUzI1NiJ9.${Buffer.from(JSON.stringify(payload)).toString('base64url')}.c2ln`;

const baseSettings = {
  MAIL_SENDER: 'alerts@contoso.com',
  MAIL_TENANT_ID: GUID,
  MAIL_CLIENT_ID: GUID,
  MAIL_KEY_VAULT_URL: 'https://kv.vault.azure.net',
};

describe('SPF', () => {
  it('passes a record that includes Exchange Online', () => {
    expect(readSpf(['v=spf1 include:spf.protection.outlook.com -all'])).toMatchObject({
      kind: 'found',
      includesExchange: true,
    });
    expect(readSpf(['other', 'V=SPF1  ip4:1.2.3.4\tInclude:SPF.protection.outlook.com ~all'])).toMatchObject({
      includesExchange: true,
    });
  });
  it('fails a record without the include, a missing record and two records', () => {
    expect(readSpf(['v=spf1 ip4:1.2.3.4 -all'])).toMatchObject({ kind: 'found', includesExchange: false });
    expect(readSpf(['v=spf1 -include:spf.protection.outlook.com -all'])).toMatchObject({ includesExchange: false });
    expect(readSpf(['google-site-verification=x'])).toEqual({ kind: 'none' });
    expect(readSpf(['v=spf1 -all', 'v=spf1 include:spf.protection.outlook.com -all'])).toEqual({
      kind: 'multiple',
      count: 2,
    });
    expect(readSpf(['v=spf10 include:spf.protection.outlook.com'])).toEqual({ kind: 'none' });
  });
  it('joins character-strings and bounds their size', () => {
    expect(joinTxtRecords([['v=spf1 include:spf.', 'protection.outlook.com -all']])).toEqual([
      'v=spf1 include:spf.protection.outlook.com -all',
    ]);
    const huge = joinTxtRecords([Array.from({ length: 100 }, () => 'x'.repeat(255))]);
    expect(huge[0]?.length).toBe(MAX_TXT_RECORD_CHARS + 1);
    expect(readSpf([`v=spf1 ${'a'.repeat(MAX_TXT_RECORD_CHARS)}`])).toEqual({ kind: 'too-long' });
  });
});

describe('DMARC', () => {
  it('reads the policy', () => {
    expect(readDmarc(['v=DMARC1; p=reject; rua=mailto:d@contoso.com'])).toMatchObject({ policy: 'reject' });
    expect(readDmarc(['v=DMARC1;p=Quarantine'])).toMatchObject({ policy: 'quarantine' });
    expect(readDmarc(['v=DMARC1; p=none'])).toMatchObject({ policy: 'none' });
  });
  it('refuses missing, duplicate and invalid records', () => {
    expect(readDmarc([])).toEqual({ kind: 'none' });
    expect(readDmarc(['v=spf1 -all'])).toEqual({ kind: 'none' });
    expect(readDmarc(['v=DMARC1; p=none', 'v=DMARC1; p=reject'])).toEqual({ kind: 'multiple', count: 2 });
    expect(readDmarc(['v=DMARC1; rua=mailto:x@y.z'])).toMatchObject({ kind: 'invalid' });
    expect(readDmarc(['v=DMARC1; p=block'])).toMatchObject({ kind: 'invalid' });
  });
});

describe('JWT claims', () => {
  it('reads roles, aud, tid, appid and oid only', () => {
    const claims = readTokenClaims(
      jwt({
        roles: ['SMTP.SendAsApp', 7],
        aud: 'https://outlook.office365.com',
        tid: GUID,
        appid: 'a',
        oid: 'o',
        x: 1,
      }),
    );
    expect(claims).toEqual({
      roles: ['SMTP.SendAsApp'],
      aud: 'https://outlook.office365.com',
      tid: GUID,
      appid: 'a',
      oid: 'o',
    });
  });
  it('refuses what is not a JWT with a JSON object payload, and anything over the bound', () => {
    for (const token of [
      '',
      'a.b',
      'a..c',
      'a.!!.c',
      `a.${Buffer.from('[1]').toString('base64url')}.c`,
      'a.bm90IGpzb24.c',
    ])
      expect(readTokenClaims(token)).toBeUndefined();
    expect(readTokenClaims(jwt({ pad: 'x'.repeat(MAX_TOKEN_CHARS) }))).toBeUndefined();
  });
  it('names each wrong claim with its fix', () => {
    const good = { roles: ['SMTP.SendAsApp'], aud: 'https://outlook.office365.com', tid: GUID, appid: 'a', oid: 'o' };
    const expected = { audience: 'https://outlook.office365.com', tenantId: GUID };
    expect(claimProblems(good, expected)).toEqual([]);
    const problems = claimProblems({ ...good, roles: [], aud: 'https://graph.microsoft.com', tid: 'other' }, expected);
    expect(problems.map((p) => p.problem)).toEqual([
      'roles has no SMTP.SendAsApp',
      'aud is https://graph.microsoft.com, not https://outlook.office365.com',
      'tid is other, not MAIL_TENANT_ID',
    ]);
    expect(claimProblems({ ...good, tid: 'x' }, { ...expected, tenantId: 'contoso.onmicrosoft.com' })).toEqual([]);
    expect(describeClaims(good)).toBe(
      `roles=[SMTP.SendAsApp] aud=https://outlook.office365.com tid=${GUID} appid=a oid=o`,
    );
  });
  it('fills the 5.7.3 commands from the claims', () => {
    expect(
      servicePrincipalFix('alerts@contoso.com', {
        roles: [],
        aud: undefined,
        tid: undefined,
        appid: 'APP',
        oid: 'OID',
      }),
    ).toContain(
      'New-ServicePrincipal -AppId APP -ObjectId OID\nAdd-MailboxPermission -Identity alerts@contoso.com -User OID -AccessRights FullAccess',
    );
  });
});

describe('clock skew', () => {
  it('passes up to 1 minute, warns up to 5, fails beyond, either way', () => {
    expect(judgeSkew(0)).toBe('pass');
    expect(judgeSkew(-60_000)).toBe('pass');
    expect(judgeSkew(61_000)).toBe('warn');
    expect(judgeSkew(-300_000)).toBe('warn');
    expect(judgeSkew(301_000)).toBe('fail');
    expect(judgeSkew(-3_600_000)).toBe('fail');
  });
});

describe('send-as and auth-mode', () => {
  it('needs no grant for the sender alone, warns for other allowed addresses', () => {
    expect(checkSendAs(loadConfig(baseSettings)).status).toBe('pass');
    const warned = checkSendAs(loadConfig({ ...baseSettings, MAIL_ALLOWED_FROM: 'billing@contoso.com,@fabrikam.com' }));
    expect(warned.status).toBe('warn');
    expect(warned.fix).toContain(
      'Add-RecipientPermission -Identity billing@contoso.com -Trustee alerts@contoso.com -AccessRights SendAs',
    );
  });
  it('warns for basic authentication only', () => {
    expect(checkAuthMode(loadConfig(baseSettings)).status).toBe('pass');
    const basic = checkAuthMode(loadConfig({ ...baseSettings, MAIL_AUTH_MODE: 'basic' }));
    expect(basic.status).toBe('warn');
    expect(basic.fix).toContain('deprecated');
  });
});

describe('report', () => {
  const results: CheckResult[] = [
    { name: 'settings', status: 'pass', detail: 'ok', fix: '' },
    { name: 'clock', status: 'warn', detail: '90 s ahead', fix: 'Sync the clock.' },
    { name: 'smtp-dns', status: 'fail', detail: 'no such name', fix: 'Line one\nLine two' },
    { name: 'smtp-tcp', status: 'skip', detail: 'skipped: smtp-dns failed', fix: '' },
  ];
  it('prints one line per check, the fix under it, and a summary', () => {
    expect(formatText(results)).toBe(
      [
        'PASS  settings       ok',
        'WARN  clock          90 s ahead',
        '                     Fix: Sync the clock.',
        'FAIL  smtp-dns       no such name',
        '                     Fix: Line one',
        '                     Fix: Line two',
        'SKIP  smtp-tcp       skipped: smtp-dns failed',
        '1 passed, 1 warned, 1 failed, 1 skipped',
        '',
      ].join('\n'),
    );
  });
  it('shows control characters from servers escaped, never raw', () => {
    const text = formatText([
      { name: 'spf', status: 'fail', detail: 'v=spf1 \u001b[31mred\r\nx\u009b', fix: 'a\u0007' },
    ]);
    expect(text).toContain('v=spf1 \\x1b[31mred\\x0d\\x0ax\\x9b');
    expect(text).toContain('Fix: a\\x07');
    expect(text.replaceAll('\n', '')).not.toMatch(/[\u0000-\u001f\u007f-\u009f]/);
  });
  it('gives one JSON object per check', () => {
    const lines = formatJson(results).trimEnd().split('\n');
    expect(lines.map((l) => JSON.parse(l) as unknown)).toEqual(results);
  });
  it('exits 1 only when a check failed', () => {
    expect(doctorExitCode(results)).toBe(1);
    expect(doctorExitCode(results.filter((r) => r.status !== 'fail'))).toBe(0);
  });
});

describe('doctor arguments', () => {
  it('parses --domain, --dns and --json', () => {
    expect(parseDoctorArgs(['--domain', 'Contoso.com', '--dns', '127.0.0.1:5353', '--json'])).toEqual({
      domain: 'contoso.com',
      dns: '127.0.0.1:5353',
      json: true,
    });
    expect(parseDoctorArgs([])).toEqual({ domain: undefined, dns: undefined, json: false });
  });
  it.each([
    [['--domain', 'not a domain'], '--domain'],
    [['--dns', 'dns.google'], '--dns'],
    [['--dns', '127.0.0.1:99999'], '--dns'],
    [['--bogus'], '(args)'],
  ])('refuses %j naming %s', (args, option) => {
    expect(() => parseDoctorArgs(args)).toThrow(DoctorUsageError);
    try {
      parseDoctorArgs(args);
    } catch (error) {
      expect((error as DoctorUsageError).option).toBe(option);
    }
  });
  it('accepts DNS servers as IPv4[:port] and [IPv6]:port', () => {
    for (const ok of ['127.0.0.1', '127.0.0.1:53', '::1', '[::1]:5353']) expect(dnsServerProblem(ok)).toBeUndefined();
    for (const bad of ['localhost:53', '[::1', '[127.0.0.1]:53', '1.2.3.4:0', '1.2.3.4:x'])
      expect(dnsServerProblem(bad)).toBeDefined();
  });
});

describe('docs', () => {
  const read = (file: string) => readFileSync(path.join(__dirname, '../../docs', file), 'utf8');
  it('troubleshooting.md maps every error code to a doctor check (or none) in its symptom table', () => {
    const doc = read('troubleshooting.md');
    const start = doc.indexOf('## Symptom → doctor check / error code');
    const table = doc.slice(start, doc.indexOf('\n## ', start + 1));
    expect(start).toBeGreaterThan(0);
    for (const code of Object.keys(ERROR_CODES)) expect(table, code).toContain(`\`${code}\``);
    for (const name of CHECK_NAMES) expect(table, name).toContain(`\`${name}\``);
  });
  it('doctor.md documents every check', () => {
    const doc = read('doctor.md');
    for (const name of CHECK_NAMES) expect(doc).toContain(`| \`${name}\` |`);
  });
});
