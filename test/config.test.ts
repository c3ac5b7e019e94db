import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { ConfigError, loadConfig, readSettings } from '../src/config';

const GUID = '11111111-2222-3333-4444-555555555555';
const base = {
  MAIL_SENDER: 'alerts@contoso.com',
  MAIL_TENANT_ID: GUID,
  MAIL_CLIENT_ID: GUID,
  MAIL_KEY_VAULT_URL: 'https://vault1.vault.azure.net',
};

function problems(env: Record<string, string | undefined>): string[] {
  try {
    loadConfig(env);
  } catch (error) {
    expect(error).toBeInstanceOf(ConfigError);
    return (error as ConfigError).problems;
  }
  throw new Error('expected a ConfigError');
}

describe('loadConfig', () => {
  it('applies the documented defaults', () => {
    const config = loadConfig(base);
    expect(config.smtp).toEqual({ host: 'smtp.office365.com', port: 587 });
    expect(config.auth).toMatchObject({
      mode: 'client-secret',
      clientSecretName: 'mail-client-secret',
      scope: 'https://outlook.office365.com/.default',
      authorityHost: 'https://login.microsoftonline.com',
    });
    expect(config.limits).toEqual({
      ratePerMinute: 30,
      maxConnections: 3,
      dailyRecipientLimit: 10000,
      maxRecipients: 500,
      maxMessageBytes: 36700160,
      pacing: true,
      rateWindowMs: 60_000,
      dailyWindowMs: 86_400_000,
    });
    expect(config.sendLeaseMs).toBe(300_000);
    expect(config.digest).toEqual({ schedule: '0 0 7 * * *', maxItems: 50 });
    expect(config.allowedFrom).toEqual(['alerts@contoso.com']);
    expect(config.unsubscribe.keyName).toBe('mail-unsubscribe-key');
  });

  it('names every missing setting with its fix, all at once', () => {
    const list = problems({});
    expect(list.some((p) => p.startsWith('MAIL_SENDER is required') && p.includes('UPN'))).toBe(true);
    expect(list.some((p) => p.startsWith('MAIL_TENANT_ID is required'))).toBe(true);
    expect(list.some((p) => p.startsWith('MAIL_CLIENT_ID is required'))).toBe(true);
    expect(list.some((p) => p.startsWith('MAIL_KEY_VAULT_URL is required'))).toBe(true);
  });

  it('rejects invalid values, naming the setting', () => {
    const list = problems({
      ...base,
      MAIL_SENDER: 'not-an-address',
      MAIL_AUTH_MODE: 'password',
      MAIL_SMTP_PORT: 'abc',
    });
    expect(list.join('\n')).toMatch(/MAIL_SMTP_PORT must be a positive whole number/);
    const more = problems({
      ...base,
      MAIL_SENDER: 'nope',
      MAIL_AUTH_MODE: 'password',
      MAIL_AUTHORITY_HOST: 'http://x',
    });
    expect(more.join('\n')).toMatch(/MAIL_SENDER is invalid/);
    expect(more.join('\n')).toMatch(/MAIL_AUTH_MODE is invalid \("password"\): one of client-secret/);
    expect(more.join('\n')).toMatch(/MAIL_AUTHORITY_HOST is invalid/);
    expect(problems({ ...base, MAIL_TLS_CA_FILE: '/nonexistent/ca.pem' }).join('\n')).toMatch(
      /MAIL_TLS_CA_FILE points at a file that does not exist/,
    );
    expect(problems({ ...base, MAIL_MAX_RECIPIENTS: '5000' }).join('\n')).toMatch(
      /MAIL_MAX_RECIPIENTS must be at most 1000/,
    );
    expect(problems({ ...base, MAIL_ALLOWED_FROM: 'ok@contoso.com, bad entry' }).join('\n')).toMatch(
      /MAIL_ALLOWED_FROM is invalid \("bad entry"\)/,
    );
    expect(problems({ ...base, MAIL_PACING: 'maybe' }).join('\n')).toMatch(/MAIL_PACING must be "on" or "off"/);
    expect(problems({ ...base, MAIL_RATE_WINDOW_SECONDS: '0' }).join('\n')).toMatch(
      /MAIL_RATE_WINDOW_SECONDS must be a positive number of seconds/,
    );
    expect(problems({ ...base, MAIL_SEND_LEASE_SECONDS: 'soon' }).join('\n')).toMatch(
      /MAIL_SEND_LEASE_SECONDS must be/,
    );
  });

  it('scales the pacing windows and switches pacing off for benchmarks', () => {
    const config = loadConfig({
      ...base,
      MAIL_PACING: 'off',
      MAIL_RATE_WINDOW_SECONDS: '0.5',
      MAIL_DAILY_WINDOW_SECONDS: '10',
      MAIL_SEND_LEASE_SECONDS: '2.5',
    });
    expect(config.limits).toMatchObject({ pacing: false, rateWindowMs: 500, dailyWindowMs: 10_000 });
    expect(config.sendLeaseMs).toBe(2_500);
  });

  it('federated identity needs no Key Vault; basic needs no tenant', () => {
    const fed = loadConfig({
      ...base,
      MAIL_KEY_VAULT_URL: undefined,
      MAIL_AUTH_MODE: 'federated-identity',
      AZURE_CLIENT_ID: GUID,
    });
    expect(fed.auth).toMatchObject({ mode: 'federated-identity', managedIdentityClientId: GUID });
    const basic = loadConfig({
      MAIL_SENDER: 'a@contoso.com',
      MAIL_AUTH_MODE: 'basic',
      MAIL_KEY_VAULT_URL: 'https://v.vault.azure.net',
    });
    expect(basic.auth).toEqual({
      mode: 'basic',
      keyVaultUrl: 'https://v.vault.azure.net',
      passwordSecretName: 'mail-password',
    });
  });

  it('parses MAIL_ALLOWED_FROM addresses and domains, lower-cased, sender included', () => {
    const config = loadConfig({ ...base, MAIL_ALLOWED_FROM: 'Billing@Contoso.com, @fabrikam.com' });
    expect(config.allowedFrom).toEqual(['alerts@contoso.com', 'billing@contoso.com', '@fabrikam.com']);
  });
});

describe('readSettings', () => {
  it('merges local.settings.json Values under the environment', () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'settings-'));
    const file = path.join(dir, 'local.settings.json');
    writeFileSync(file, JSON.stringify({ Values: { MAIL_SENDER: 'file@contoso.com', MAIL_SMTP_PORT: 2525 } }));
    const settings = readSettings({ MAIL_SENDER: 'env@contoso.com' }, file);
    expect(settings.MAIL_SENDER).toBe('env@contoso.com');
    expect(settings.MAIL_SMTP_PORT).toBe('2525');
  });

  it('reports a malformed local.settings.json as a settings error', () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'settings-'));
    const file = path.join(dir, 'local.settings.json');
    writeFileSync(file, '{ "Values": ');
    expect(() => readSettings({}, file)).toThrow(/local.settings.json is not valid JSON/);
  });
});
