/** Telemetry to an Application Insights resource with local auth off: managed identity tokens from the sandbox, or refused. */
import { execFileSync } from 'node:child_process';
import path from 'node:path';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { startAzurite, type AzuriteInstance } from '../../dev/azurite';
import { startDevHost, type DevHost } from '../../dev/host';
import { MONITOR_RESOURCE } from '../../sandbox/entra';
import { startIngestionCapture } from '../../sandbox/ingestion';
import { ConfigError, loadConfig } from '../../src/config';
import { createTelemetry, parseAuthenticationString, type Telemetry, type TelemetryOptions } from '../../src/telemetry';
import { applySandboxEnv, startSandbox, type Sandbox } from '../support/sandboxMailer';

const ROOT = path.resolve(__dirname, '../..');
let sandbox: Sandbox;
const started: Telemetry[] = [];

/** Telemetry pointed at the sandbox's ingestion, with no retries so that every refusal reaches onError at once. */
function telemetry(options: Partial<TelemetryOptions>, errors: unknown[]): Telemetry {
  const t = createTelemetry({
    connectionString: sandbox.ingestion.connectionString,
    extraCaPem: sandbox.ca.certPem,
    retry: { maxRetries: 0 },
    onError: (error) => errors.push(error),
    ...options,
  });
  started.push(t);
  return t;
}

const monitorTokenRequests = () => sandbox.identity.requests.filter((r) => r.resource === MONITOR_RESOURCE);

beforeAll(async () => {
  sandbox = await startSandbox();
  // IDENTITY_ENDPOINT / IDENTITY_HEADER / AZURE_CLIENT_ID, as App Service sets them on the Function App.
  applySandboxEnv(sandbox);
});

afterAll(async () => {
  await Promise.allSettled(started.map((t) => t.shutdown()));
  await sandbox?.close();
});

beforeEach(() => {
  sandbox.ingestion.reset();
  sandbox.ingestion.setLocalAuth(false);
  sandbox.identity.requests.length = 0;
});

describe('APPLICATIONINSIGHTS_AUTHENTICATION_STRING', () => {
  it('accepts Authorization=AAD with or without a ClientId (any key case and order) and refuses anything else without quoting it', () => {
    const id = sandbox.tenant.identity.clientId;
    expect(parseAuthenticationString(undefined)).toBeUndefined();
    expect(parseAuthenticationString('  ')).toBeUndefined();
    expect(parseAuthenticationString('Authorization=AAD')).toEqual({ kind: 'managed-identity' });
    expect(parseAuthenticationString(`Authorization=AAD;ClientId=${id}`)).toEqual({
      kind: 'managed-identity',
      clientId: id,
    });
    expect(parseAuthenticationString(`clientid=${id}; authorization=aad;`)).toEqual({
      kind: 'managed-identity',
      clientId: id,
    });
    const secret = 'Zx8Q~not-a-setting-but-a-pasted-secret-value';
    for (const bad of [
      'Authorization=Key',
      `ClientId=${id}`,
      'Authorization=AAD;ClientId=not-a-guid',
      `Authorization=AAD;ClientId=${id};Extra=1`,
      'Authorization=AAD;Authorization=AAD',
      secret,
    ]) {
      expect(() => parseAuthenticationString(bad), bad).toThrow(/APPLICATIONINSIGHTS_AUTHENTICATION_STRING is invalid/);
    }
    // loadConfig lists it with every other problem and never repeats the value.
    let caught: unknown;
    try {
      loadConfig({ ...sandbox.settings(), APPLICATIONINSIGHTS_AUTHENTICATION_STRING: secret });
    } catch (error) {
      caught = error;
    }
    expect(caught).toBeInstanceOf(ConfigError);
    expect((caught as ConfigError).message).toContain('APPLICATIONINSIGHTS_AUTHENTICATION_STRING is invalid');
    expect((caught as ConfigError).message).not.toContain(secret);
    expect(
      loadConfig({
        ...sandbox.settings(),
        APPLICATIONINSIGHTS_AUTHENTICATION_STRING: `Authorization=AAD;ClientId=${id}`,
      }).appInsightsAuthenticationString,
    ).toBe(`Authorization=AAD;ClientId=${id}`);
  });
});

describe('a resource with local authentication off', () => {
  it('with Authorization=AAD;ClientId=<the user-assigned identity> events and metrics arrive, every post carrying that identity’s token for Azure Monitor', async () => {
    const errors: unknown[] = [];
    const clientId = sandbox.tenant.identity.clientId;
    const t = telemetry({ authenticationString: `Authorization=AAD;ClientId=${clientId}` }, errors);
    t.trackEvent('MailSent', { id: 'aad-1', source: 'http', attempt: 1 });
    t.trackEvent('MailFailed', { id: 'aad-2', source: 'http', errorCode: 'SMTP_AUTH_DISABLED' });
    t.trackDuration(42, { source: 'http', outcome: 'sent' });
    await t.flush();

    expect(errors).toEqual([]);
    expect(sandbox.ingestion.events().map((e) => e.properties.id)).toEqual(['aad-1', 'aad-2']);
    expect(sandbox.ingestion.metrics('mail.send.duration')).toHaveLength(1);
    const posts = sandbox.ingestion.requests;
    expect(posts.length).toBeGreaterThanOrEqual(2);
    // Each post was verified: the sandbox issuer's signature, audience https://monitor.azure.com, the identity's oid.
    for (const post of posts) {
      expect(post).toMatchObject({ status: 200, principal: sandbox.tenant.identity.principalId });
    }
    // The token came from the managed identity endpoint, for the user-assigned identity named in the setting.
    const tokenRequests = monitorTokenRequests();
    expect(tokenRequests.length).toBeGreaterThanOrEqual(1);
    expect(tokenRequests.every((r) => r.identity === clientId && r.status === 200)).toBe(true);
    expect(sandbox.issuedTokens().some((token) => token.audience === MONITOR_RESOURCE)).toBe(true);
  });

  it('without the authentication string every post is refused with 401, nothing is received, and onError is told', async () => {
    const errors: unknown[] = [];
    const t = telemetry({}, errors);
    t.trackEvent('MailSent', { id: 'no-token', source: 'http' });
    await t.flush();

    expect(sandbox.ingestion.events()).toEqual([]);
    expect(sandbox.ingestion.requests.length).toBeGreaterThanOrEqual(1);
    expect(sandbox.ingestion.requests.every((r) => r.status === 401 && r.principal === undefined)).toBe(true);
    expect(errors.map(String)).toContainEqual(expect.stringContaining('answered 401'));
    expect(monitorTokenRequests()).toEqual([]);
  });

  it('Authorization=AAD alone asks for a system-assigned identity the app does not have: no post is made and onError says why', async () => {
    const errors: unknown[] = [];
    const t = telemetry({ authenticationString: 'Authorization=AAD' }, errors);
    t.trackEvent('MailSent', { id: 'system-assigned', source: 'http' });
    await t.flush();

    expect(sandbox.ingestion.requests).toEqual([]);
    expect(sandbox.ingestion.events()).toEqual([]);
    // Asked without an identity, and refused by the endpoint (the Function App has only the user-assigned one).
    expect(monitorTokenRequests().map((r) => [r.identity, r.status])).toContainEqual([undefined, 400]);
    expect(errors.map(String).join('\n')).toMatch(/ingestion failed: .*Managed Identity/i);
  });

  it('a valid token of an identity without Monitoring Metrics Publisher is refused with 403 and reported', async () => {
    const capture = await startIngestionCapture({ ca: sandbox.ca, entra: { issuer: sandbox.issuer, publishers: [] } });
    try {
      capture.setLocalAuth(false);
      const errors: unknown[] = [];
      const t = telemetry(
        {
          connectionString: capture.connectionString,
          authenticationString: `Authorization=AAD;ClientId=${sandbox.tenant.identity.clientId}`,
        },
        errors,
      );
      t.trackEvent('MailSent', { id: 'no-role', source: 'http' });
      await t.flush();
      await t.shutdown();
      expect(capture.events()).toEqual([]);
      expect(capture.requests.map((r) => r.status)).toContain(403);
      expect(errors.map(String)).toContainEqual(expect.stringContaining('answered 403'));
    } finally {
      await capture.close();
    }
  });

  it('with local authentication on, the authenticated exporter is accepted as well (the setting is safe everywhere)', async () => {
    sandbox.ingestion.setLocalAuth(true);
    const errors: unknown[] = [];
    const t = telemetry(
      { authenticationString: `Authorization=AAD;ClientId=${sandbox.tenant.identity.clientId}` },
      errors,
    );
    t.trackEvent('MailSent', { id: 'local-auth-on', source: 'cli' });
    await t.flush();
    expect(errors).toEqual([]);
    expect(sandbox.ingestion.events().map((e) => e.properties.id)).toEqual(['local-auth-on']);
    expect(sandbox.ingestion.requests[0]?.principal).toBe(sandbox.tenant.identity.principalId);
  });
});

describe('the deployed configuration, end to end through the bundle', () => {
  let azurite: AzuriteInstance;
  let host: DevHost;

  beforeAll(async () => {
    execFileSync(process.execPath, [path.join(ROOT, 'scripts/build.mjs')], { cwd: ROOT });
    azurite = await startAzurite();
    host = await startDevHost({
      entry: path.join(ROOT, 'dist/functions/index.js'),
      env: {
        ...sandbox.settings(),
        AzureWebJobsStorage: azurite.connectionString,
        // What infra/app/api.bicep sets on the Function App.
        APPLICATIONINSIGHTS_AUTHENTICATION_STRING: `Authorization=AAD;ClientId=${sandbox.tenant.identity.clientId}`,
        MAIL_RATE_PER_MINUTE: '6000',
      },
      port: 0,
      pollIntervalMs: 200,
      log: () => {},
    });
  }, 120_000);

  afterAll(async () => {
    await host?.stop();
    await azurite?.stop();
  });

  it('a message sent through the HTTP API is recorded as MailSent, in the caller’s trace, in a resource that accepts Entra-authenticated telemetry only', async () => {
    const traceId = '4bf92f3577b34da6a3ce929d0e0e4736';
    const response = await fetch(`${host.url}/api/messages?wait=true&code=${host.functionKey}`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', traceparent: `00-${traceId}-00f067aa0ba902b7-01` },
      body: JSON.stringify({ to: 'someone@example.com', subject: 'Entra telemetry', text: 'hello' }),
    });
    expect(response.status).toBe(200);
    const { id } = (await response.json()) as { id: string };
    // The exporter batches for 5 s; the event must arrive through the authenticated path.
    const arrived = await sandbox.ingestion.waitFor(
      () => sandbox.ingestion.events('MailSent').some((e) => e.properties.id === id),
      20_000,
    );
    expect(arrived).toBe(true);
    const sent = sandbox.ingestion.events('MailSent').find((e) => e.properties.id === id);
    expect(sent?.tags['ai.operation.id']).toBe(traceId);
    const accepted = sandbox.ingestion.requests.filter((r) => r.status === 200);
    expect(accepted.length).toBeGreaterThanOrEqual(1);
    expect(accepted.every((r) => r.principal === sandbox.tenant.identity.principalId)).toBe(true);
    expect(sandbox.ingestion.requests.filter((r) => r.status === 401)).toEqual([]);
  }, 60_000);
});
