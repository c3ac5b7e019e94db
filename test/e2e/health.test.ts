/** GET /api/health through the dev host's real HTTP port, with no function key: the built bundle, Azurite and the sandbox. */
import { execFileSync } from 'node:child_process';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startAzurite, type AzuriteInstance } from '../../dev/azurite';
import { startDevHost, type DevHost } from '../../dev/host';
import type { HealthBody } from '../../src/api/health';
import { secretScanner } from '../support/secretScan';
import { applySandboxEnv, startSandbox, type Sandbox } from '../support/sandboxMailer';

const ROOT = path.resolve(__dirname, '../..');
let sandbox: Sandbox;
let azurite: AzuriteInstance;
let host: DevHost;

beforeAll(async () => {
  execFileSync(process.execPath, [path.join(ROOT, 'scripts/build.mjs')], { cwd: ROOT });
  [sandbox, azurite] = await Promise.all([startSandbox(), startAzurite()]);
  applySandboxEnv(sandbox);
  host = await startDevHost({
    entry: path.join(ROOT, 'dist/functions/index.js'),
    env: { ...sandbox.settings(), AzureWebJobsStorage: azurite.connectionString },
    port: 0,
    pollIntervalMs: 200,
    log: () => {},
  });
}, 120_000);

afterAll(async () => {
  await host?.stop();
  await Promise.all([sandbox?.close(), azurite?.stop()]);
});

describe('GET /api/health over HTTP', () => {
  it('answers 200 without a function key, then from the cache, with no setting value', async () => {
    const tokensBefore = sandbox.entra.requests.length;
    const first = await fetch(`${host.url}/api/health`);
    const firstText = await first.text();
    expect(first.status).toBe(200);
    expect(first.headers.get('content-type')).toContain('application/json');
    expect(first.headers.get('cache-control')).toBe('no-store');
    const body = JSON.parse(firstText) as HealthBody;
    expect(body).toMatchObject({ status: 'healthy', cached: false });
    expect(body.checks.map((c) => [c.name, c.status])).toEqual([
      ['settings', 'pass'],
      ['key-vault', 'pass'],
      ['token', 'pass'],
      ['smtp', 'pass'],
    ]);

    const second = await fetch(`${host.url}/api/health`);
    const secondText = await second.text();
    expect(second.status).toBe(200);
    expect((JSON.parse(secondText) as HealthBody).cached).toBe(true);
    expect(sandbox.entra.requests.length).toBe(tokensBefore + 1);

    const settings = sandbox.settings();
    const scanner = secretScanner([
      ...sandbox.secrets(),
      ...(['MAIL_SENDER', 'MAIL_TENANT_ID', 'MAIL_CLIENT_ID', 'MAIL_KEY_VAULT_URL'] as const).map((name) => ({
        kind: 'setting',
        label: name,
        value: settings[name] as string,
      })),
    ]);
    expect(scanner.findAll({ answers: [firstText, secondText] })).toEqual([]);
  });

  it('still asks for a function key on the other routes', async () => {
    const response = await fetch(`${host.url}/api/messages/00000000-0000-4000-8000-000000000000`);
    expect(response.status).toBe(401);
  });
});
