import { randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import {
  ConfigError,
  SETTING_NAMES,
  digestScheduleSetting,
  isDigestSchedule,
  loadConfig,
  readSettings,
} from '../../src/config';
import { createAppServices } from '../../src/appServices';

const tempDirs: string[] = [];
function tempDir(): string {
  const dir = mkdtempSync(path.join(tmpdir(), 'settings-'));
  tempDirs.push(dir);
  return dir;
}
afterAll(() => {
  for (const dir of tempDirs) rmSync(dir, { recursive: true, force: true });
});

/** Shaped like an Entra client secret (40 chars with "~"): no setting's rule accepts it, and it must never be echoed. */
function secretLike(): string {
  const alnum = () =>
    randomBytes(48)
      .toString('base64')
      .replace(/[^A-Za-z0-9]/g, '');
  return `${alnum().slice(0, 3)}8Q~${alnum().slice(0, 34)}`;
}

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
    expect(config.allowedFrom).toEqual(['alerts@contoso.com']);
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
    expect(more.join('\n')).toMatch(/MAIL_AUTH_MODE is invalid: one of client-secret/);
    expect(more.join('\n')).toMatch(/MAIL_AUTHORITY_HOST is invalid/);
    expect(problems({ ...base, MAIL_TLS_CA_FILE: '/nonexistent/ca.pem' }).join('\n')).toMatch(
      /MAIL_TLS_CA_FILE points at a file that does not exist/,
    );
    expect(problems({ ...base, MAIL_MAX_RECIPIENTS: '5000' }).join('\n')).toMatch(
      /MAIL_MAX_RECIPIENTS must be at most 1000/,
    );
    expect(problems({ ...base, MAIL_ALLOWED_FROM: 'ok@contoso.com, bad entry' }).join('\n')).toMatch(
      /MAIL_ALLOWED_FROM is invalid \(entry 2 of 2\)/,
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

describe('a settings error never echoes a value that could be a secret', () => {
  /** Settings any text is valid for (secret names, ids, connection strings checked elsewhere) or whose path is shown. */
  const ACCEPT_ANY_TEXT = new Set([
    'MAIL_CLIENT_SECRET_NAME',
    'MAIL_CLIENT_CERT_NAME',
    'MAIL_PASSWORD_SECRET_NAME',
    'APPLICATIONINSIGHTS_CONNECTION_STRING',
    'AZURE_CLIENT_ID',
  ]);
  const runtimeBase = { ...base, AzureWebJobsStorage: 'UseDevelopmentStorage=true' };

  /** The ConfigError message createAppServices (loadConfig, then the storage settings) throws for `env`, if any. */
  async function settingsError(env: Record<string, string | undefined>): Promise<string | undefined> {
    let rt;
    try {
      rt = createAppServices(env);
    } catch (error) {
      expect(error).toBeInstanceOf(ConfigError);
      return (error as ConfigError).message;
    }
    await rt.close();
    return undefined;
  }

  it.each(SETTING_NAMES.filter((name) => name !== 'MAIL_TLS_CA_FILE'))(
    '%s: the message names the setting and the rule, not the value',
    async (name) => {
      const secret = secretLike();
      const message = await settingsError({ ...runtimeBase, [name]: secret });
      if (ACCEPT_ANY_TEXT.has(name)) {
        expect(message).toBeUndefined();
        return;
      }
      expect(message).toBeDefined();
      expect(message).toContain(name);
      expect(message).not.toContain(secret);
      // Not even a part of it (a quoted prefix or a JSON.parse excerpt).
      expect(message).not.toContain(secret.slice(0, 12));
      expect(message).not.toContain(secret.slice(-12));
    },
  );

  it('MAIL_ALLOWED_FROM: a bad entry is found by its position, not quoted', async () => {
    const secret = secretLike();
    const message = await settingsError({
      ...runtimeBase,
      MAIL_ALLOWED_FROM: `ok@contoso.com, ${secret}, @fabrikam.com`,
    });
    expect(message).toMatch(/MAIL_ALLOWED_FROM is invalid \(entry 2 of 3\)/);
    expect(message).not.toContain(secret);
  });

  it('MAIL_TLS_CA_FILE: the path is shown, the content of a file that holds no certificate is not', async () => {
    const secret = secretLike();
    const file = path.join(tempDir(), 'ca.pem');
    writeFileSync(file, `${secret}\n`);
    const message = await settingsError({ ...runtimeBase, MAIL_TLS_CA_FILE: file });
    expect(message).toContain(`MAIL_TLS_CA_FILE (${file}) holds no PEM certificate`);
    expect(message).not.toContain(secret);
  });

  it.each([
    [
      'no AccountName',
      (key: string) => `DefaultEndpointsProtocol=https;AccountKey=${key};EndpointSuffix=core.windows.net`,
    ],
    ['not key=value pairs', (key: string) => `garbage ${key}`],
    ['a bad EndpointSuffix', (key: string) => `DefaultEndpointsProtocol=https;AccountName=a c;AccountKey=${key}`],
    ['a SAS without endpoints', (key: string) => `SharedAccessSignature=sv=2024&sig=${key}`],
  ])('AzureWebJobsStorage with %s: named, and the account key is not quoted', async (_what, connectionString) => {
    const key = `${secretLike()}==`;
    const message = await settingsError({ ...runtimeBase, AzureWebJobsStorage: connectionString(key) });
    expect(message).toMatch(/AzureWebJobsStorage is not a valid storage connection string: /);
    expect(message).not.toContain(key.slice(0, 12));
  });

  it.each(['__queueServiceUri', '__tableServiceUri', '__blobServiceUri'])(
    'AzureWebJobsStorage%s that is not a URL: named, not quoted',
    async (suffix) => {
      const secret = secretLike();
      const identity = {
        AzureWebJobsStorage__queueServiceUri: 'https://acct.queue.core.windows.net',
        AzureWebJobsStorage__tableServiceUri: 'https://acct.table.core.windows.net',
        AzureWebJobsStorage__blobServiceUri: 'https://acct.blob.core.windows.net',
      };
      const message = await settingsError({
        ...base,
        ...identity,
        [`AzureWebJobsStorage${suffix}`]: secret,
      });
      expect(message).toContain(`AzureWebJobsStorage${suffix} is invalid`);
      expect(message).not.toContain(secret);
    },
  );

  it('a malformed local.settings.json is located by line and column; its content (a secret among the Values) is not quoted', () => {
    const secret = secretLike();
    const file = path.join(tempDir(), 'local.settings.json');
    writeFileSync(file, `{\n  "Values": {\n    "MAIL_CLIENT_SECRET": "${secret}" oops\n  }\n}\n`);
    let message = '';
    try {
      readSettings({}, file);
    } catch (error) {
      expect(error).toBeInstanceOf(ConfigError);
      message = (error as Error).message;
    }
    expect(message).toMatch(/local\.settings\.json is not valid JSON \(at line 3, column \d+\): fix or delete it/);
    expect(message).not.toContain(secret.slice(0, 12));
    expect(message).not.toContain('oops');
  });
});

describe('readSettings', () => {
  it('in Azure (WEBSITE_INSTANCE_ID set) local.settings.json is never read', () => {
    const dir = tempDir();
    const file = path.join(dir, 'local.settings.json');
    writeFileSync(file, JSON.stringify({ Values: { MAIL_SENDER: 'file@contoso.com', MAIL_SMTP_PORT: 2525 } }));
    const env = { WEBSITE_INSTANCE_ID: 'abc123', MAIL_SENDER: 'env@contoso.com' };
    expect(readSettings(env, file)).toEqual(env);
    expect(readSettings({ WEBSITE_INSTANCE_ID: 'abc123' }, file).MAIL_SENDER).toBeUndefined();
    // Not read at all (not read then ignored): a malformed file would throw if it were parsed, a directory if opened.
    writeFileSync(file, '{ "Values": ');
    expect(readSettings(env, file)).toEqual(env);
    const asDirectory = path.join(dir, 'dir');
    mkdirSync(path.join(asDirectory, 'local.settings.json'), { recursive: true });
    expect(readSettings(env, path.join(asDirectory, 'local.settings.json'))).toEqual(env);
    // Locally (no WEBSITE_INSTANCE_ID) the same file is read, and reported.
    expect(() => readSettings({ MAIL_SENDER: 'env@contoso.com' }, file)).toThrow(ConfigError);
  });

  it('merges local.settings.json Values under the environment', () => {
    const dir = tempDir();
    const file = path.join(dir, 'local.settings.json');
    writeFileSync(file, JSON.stringify({ Values: { MAIL_SENDER: 'file@contoso.com', MAIL_SMTP_PORT: 2525 } }));
    const settings = readSettings({ MAIL_SENDER: 'env@contoso.com' }, file);
    expect(settings.MAIL_SENDER).toBe('env@contoso.com');
    expect(settings.MAIL_SMTP_PORT).toBe('2525');
  });

  it('reports a malformed local.settings.json as a settings error', () => {
    const dir = tempDir();
    const file = path.join(dir, 'local.settings.json');
    writeFileSync(file, '{ "Values": ');
    expect(() => readSettings({}, file)).toThrow(/local.settings.json is not valid JSON/);
  });
});

describe('unsubscribe settings', () => {
  it('MAIL_UNSUBSCRIBE_BASE_URL: unset by default; https without query or fragment; http only on loopback', () => {
    expect(loadConfig(base).unsubscribe).toEqual({ baseUrl: undefined, keyName: 'mail-unsubscribe-key' });
    expect(loadConfig({ ...base, MAIL_UNSUBSCRIBE_BASE_URL: 'https://mailer.contoso.com/' }).unsubscribe.baseUrl).toBe(
      'https://mailer.contoso.com',
    );
    expect(loadConfig({ ...base, MAIL_UNSUBSCRIBE_BASE_URL: 'http://127.0.0.1:7071' }).unsubscribe.baseUrl).toBe(
      'http://127.0.0.1:7071',
    );
    for (const bad of [
      'http://mailer.contoso.com',
      'https://mailer.contoso.com/?x=1',
      'https://mailer.contoso.com/#top',
      'https://user:pw@mailer.contoso.com',
      'mailer.contoso.com',
      'https://mailer contoso.com',
      `https://${'a'.repeat(3000)}.com`,
      'javascript:alert(1)',
    ]) {
      const list = problems({ ...base, MAIL_UNSUBSCRIBE_BASE_URL: bad });
      expect(list, bad).toHaveLength(1);
      expect(list[0]).toMatch(/^MAIL_UNSUBSCRIBE_BASE_URL is invalid: the public https base URL/);
      expect(list[0]).not.toContain(bad.slice(0, 20));
    }
  });

  it('a base URL needs a Key Vault for the key, in every auth mode; the key name is a Key Vault secret name', () => {
    const federated = { ...base, MAIL_AUTH_MODE: 'federated-identity', MAIL_KEY_VAULT_URL: undefined };
    expect(problems({ ...federated, MAIL_UNSUBSCRIBE_BASE_URL: 'https://mailer.contoso.com' })).toEqual([
      expect.stringMatching(/^MAIL_KEY_VAULT_URL is required when MAIL_UNSUBSCRIBE_BASE_URL is set/),
    ]);
    expect(
      loadConfig({
        ...federated,
        MAIL_KEY_VAULT_URL: 'https://v.vault.azure.net/',
        MAIL_UNSUBSCRIBE_BASE_URL: 'https://m.contoso.com',
      }).keyVaultUrl,
    ).toBe('https://v.vault.azure.net');
    expect(loadConfig({ ...base, MAIL_UNSUBSCRIBE_KEY_NAME: 'news-key-2' }).unsubscribe.keyName).toBe('news-key-2');
    // Room for the rotation's "<name>-previous" within Key Vault's 127 characters.
    expect(loadConfig({ ...base, MAIL_UNSUBSCRIBE_KEY_NAME: 'k'.repeat(118) }).unsubscribe.keyName).toHaveLength(118);
    expect(problems({ ...base, MAIL_UNSUBSCRIBE_KEY_NAME: 'k'.repeat(119) })).toHaveLength(1);
    expect(problems({ ...base, MAIL_UNSUBSCRIBE_KEY_NAME: 'bad name/x' })).toEqual([
      expect.stringMatching(/^MAIL_UNSUBSCRIBE_KEY_NAME is invalid: the name of a Key Vault secret/),
    ]);
  });
});

describe('digest settings', () => {
  it('default to 07:00 every day and 50 items', () => {
    expect(loadConfig(base).digests).toEqual({ schedule: '0 0 7 * * *', maxItems: 50 });
    expect(
      loadConfig({ ...base, MAIL_DIGEST_SCHEDULE: ' 0 30 6 * * MON-FRI ', MAIL_DIGEST_MAX_ITEMS: '20' }).digests,
    ).toEqual({
      schedule: '0 30 6 * * MON-FRI',
      maxItems: 20,
    });
  });

  it('a bad schedule or item count is named with its fix', () => {
    for (const schedule of ['0 7 * * *', 'every day', '0 0 7 * * * *', `0 0 7 * * ${'1'.repeat(300)}`]) {
      expect(problems({ ...base, MAIL_DIGEST_SCHEDULE: schedule }).join('\n')).toMatch(
        /MAIL_DIGEST_SCHEDULE must be an NCRONTAB expression of six fields/,
      );
    }
    expect(problems({ ...base, MAIL_DIGEST_MAX_ITEMS: '0' })).toEqual([
      'MAIL_DIGEST_MAX_ITEMS must be a positive whole number',
    ]);
  });

  it('the timer registers the setting, or the default when it is unset or invalid', () => {
    expect(digestScheduleSetting({ MAIL_DIGEST_SCHEDULE: '0 15 18 * * *' })).toBe('0 15 18 * * *');
    expect(digestScheduleSetting({})).toBe('0 0 7 * * *');
    expect(digestScheduleSetting({ MAIL_DIGEST_SCHEDULE: 'nonsense' })).toBe('0 0 7 * * *');
    expect(isDigestSchedule(`${'1,'.repeat(50_000)}1 * * * * *`)).toBe(false);
  });
});
