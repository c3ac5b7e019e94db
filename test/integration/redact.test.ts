/** The redactor stays bounded, never forgets a long-lived secret, and scrubs the account key and IDENTITY_HEADER from logs and HTTP error answers. */
import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { previewTemplate } from '../../src/api/templatePreview';
import { runApi } from '../../src/api/runApi';
import type { ApiRequest } from '../../src/api/apiTypes';
import { MAX_TRACKED_TOKENS, Redactor, registerSecretSettings } from '../../src/redact';
import { createAppServices } from '../../src/appServices';
import { secretScanner } from '../support/secretScan';
import { sandboxMailer, startSandbox, type Sandbox } from '../support/sandboxMailer';

/** A random value no regex of the redactor recognises (not a JWT, no "Bearer"): only tracking can redact it. */
const opaque = (chars = 40) =>
  randomBytes(chars)
    .toString('base64')
    .replace(/[^A-Za-z0-9]/g, '')
    .slice(0, chars)
    .padEnd(chars, 'x');

describe('Redactor', () => {
  it('keeps only the most recent tokens, redacts the newest, and never evicts a long-lived secret', () => {
    const redactor = new Redactor();
    const secret = opaque();
    const accountKey = `${opaque(86)}==`;
    redactor.add(secret);
    redactor.add(accountKey);
    const tokens = Array.from({ length: MAX_TRACKED_TOKENS * 3 }, () => opaque());
    for (const token of tokens) redactor.addToken(token);

    expect(redactor.size).toEqual({ secrets: 2, tokens: MAX_TRACKED_TOKENS });
    const newest = tokens.at(-1)!;
    const oldest = tokens[0]!;
    expect(redactor.redact(`token ${newest} and ${Buffer.from(newest).toString('base64')}`)).toBe(
      'token [redacted] and [redacted]',
    );
    // The oldest was evicted: that is the bound at work (an expired token is no longer written anywhere).
    expect(redactor.redact(oldest)).toBe(oldest);
    expect(redactor.redact(tokens.at(-MAX_TRACKED_TOKENS)!)).toBe('[redacted]');
    expect(redactor.redact(tokens.at(-MAX_TRACKED_TOKENS - 1)!)).not.toBe('[redacted]');
    // Pinned before the flood of tokens, still redacted after it.
    expect(redactor.redact(`s=${secret};AccountKey=${accountKey}`)).toBe('s=[redacted];AccountKey=[redacted]');
  });

  it('a token equal to a pinned secret stays pinned; re-adding a token makes it the newest', () => {
    const redactor = new Redactor();
    const secret = opaque();
    redactor.add(secret);
    redactor.addToken(secret);
    expect(redactor.size).toEqual({ secrets: 1, tokens: 0 });
    const first = opaque();
    redactor.addToken(first);
    for (let i = 0; i < MAX_TRACKED_TOKENS - 1; i++) redactor.addToken(opaque());
    redactor.addToken(first);
    redactor.addToken(opaque());
    expect(redactor.redact(first)).toBe('[redacted]');
    for (let i = 0; i < MAX_TRACKED_TOKENS * 2; i++) redactor.addToken(opaque());
    expect(redactor.redact(secret)).toBe('[redacted]');
  });

  it('registerSecretSettings finds the account key, a SAS token, IDENTITY_HEADER and AZURE_CLIENT_SECRET', () => {
    const redactor = new Redactor();
    const [key, sas, header, clientSecret] = [opaque(88), `sv=2024&sig=${opaque()}`, opaque(32), opaque()];
    registerSecretSettings(redactor, {
      AzureWebJobsStorage: `DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=${key};EndpointSuffix=core.windows.net`,
      OtherQueue: `BlobEndpoint=https://acct.blob.core.windows.net;SharedAccessSignature=${sas}`,
      IDENTITY_HEADER: header,
      AZURE_CLIENT_SECRET: clientSecret,
      MAIL_SENDER: 'alerts@contoso.com',
    });
    expect(redactor.redact(`${key} ${sas} ${header} ${clientSecret} alerts@contoso.com`)).toBe(
      '[redacted] [redacted] [redacted] [redacted] alerts@contoso.com',
    );
  });
});

describe('against the sandbox', () => {
  let sandbox: Sandbox;
  beforeAll(async () => {
    sandbox = await startSandbox();
  });
  afterAll(async () => {
    await sandbox.close();
  });

  it('many token requests through the real MSAL source keep the token set at the cap; the Key Vault secret stays redacted', async () => {
    const mailer = sandboxMailer(sandbox, 'client-secret');
    try {
      let last = '';
      for (let i = 0; i < MAX_TRACKED_TOKENS + 6; i++) {
        // skipCache: a fresh token from Entra ID each time, as after a 535 5.7.3 or an expiry.
        mailer.auth.invalidate();
        const login = await mailer.auth.get();
        if (login.kind !== 'xoauth2') throw new Error('expected an XOAUTH2 login');
        last = login.accessToken;
      }
      expect(mailer.redactor.size.tokens).toBe(MAX_TRACKED_TOKENS);
      // The client secret read from Key Vault is pinned, whatever the number of tokens since.
      expect(mailer.redactor.size.secrets).toBeGreaterThanOrEqual(1);
      const clientSecret = (await mailer.secrets!.get('mail-client-secret')).value;
      // The base64 form: no JWT pattern matches it, only the tracked token does.
      const tokenB64 = Buffer.from(last).toString('base64');
      expect(mailer.redactor.redact(`secret ${clientSecret} token ${tokenB64}`)).toBe(
        'secret [redacted] token [redacted]',
      );
    } finally {
      await mailer.close();
    }
  });
});

describe('the account key and IDENTITY_HEADER never leave the Functions app', () => {
  const accountKey = `${opaque(60)}`;
  const identityHeader = randomBytes(16).toString('hex');
  const settings = {
    MAIL_SENDER: 'alerts@contoso.com',
    MAIL_TENANT_ID: '11111111-2222-3333-4444-555555555555',
    MAIL_CLIENT_ID: '11111111-2222-3333-4444-555555555555',
    MAIL_KEY_VAULT_URL: 'https://vault1.vault.azure.net',
    AzureWebJobsStorage: `DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=${accountKey};EndpointSuffix=core.windows.net`,
    IDENTITY_HEADER: identityHeader,
  };

  const scan = secretScanner([
    { kind: 'storage-account-key', label: 'AccountKey of AzureWebJobsStorage', value: accountKey },
    { kind: 'identity-header', label: 'IDENTITY_HEADER', value: identityHeader },
  ]);

  function previewRequest(name: string): ApiRequest {
    return {
      method: 'GET',
      url: `http://127.0.0.1/api/templates/${name}/preview`,
      headers: new Headers(),
      query: new URLSearchParams(),
      params: { name },
      body: null,
    };
  }

  it('an HTTP error answer that quotes them (404 for an unknown template name) has them redacted', async () => {
    const rt = createAppServices(settings);
    try {
      for (const secret of [accountKey, identityHeader]) {
        const response = await runApi(previewTemplate, previewRequest(secret), () => rt);
        expect(response.status).toBe(404);
        const body = JSON.stringify(response.jsonBody);
        expect(body).toContain('No template named');
        expect(body).toContain('[redacted]');
        expect(scan.find(body, 'answer')).toEqual([]);
      }
    } finally {
      await rt.close();
    }
  });

  it("the app's logger (stderr, as in Azure) writes them as [redacted]", async () => {
    const rt = createAppServices(settings);
    const lines: string[] = [];
    const write = process.stderr.write.bind(process.stderr);
    process.stderr.write = (chunk: string | Uint8Array) => {
      lines.push(String(chunk));
      return true;
    };
    try {
      rt.logger.warn(`storage unavailable: key ${accountKey} refused`, { header: identityHeader });
    } finally {
      process.stderr.write = write;
      await rt.close();
    }
    const logged = lines.join('');
    expect(logged).toContain('storage unavailable');
    expect(scan.find(logged, 'stderr')).toEqual([]);
    expect(logged.match(/\[redacted\]/g)).toHaveLength(2);
  });
});
