/**
 * The outbox on identity-based storage, as in Azure: `AzureWebJobsStorage__queueServiceUri` / `__tableServiceUri` /
 * `__blobServiceUri` with `__credential=managedidentity` and `__clientId`, no connection string and no account key.
 *
 * Azurite serves HTTPS with a certificate from the sandbox CA and accepts bearer tokens (`--oauth basic`); the
 * sandbox's App Service managed identity endpoint issues them for https://storage.azure.com. The app runs in a child
 * process because the Azure SDK trusts the sandbox CA only through NODE_EXTRA_CA_CERTS, read at process start.
 * TLS verification stays on throughout.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import https from 'node:https';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startAzurite, type AzuriteInstance } from '../../dev/azurite';
import { appOnlyAccessTokenClaims, KEY_VAULT_RESOURCE, STORAGE_RESOURCE } from '../../sandbox/entra';
import { STORAGE_SETTING } from '../../src/storage/storageClients';
import { secretScanner } from '../support/secretScan';
import { startSandbox, type Sandbox } from '../support/sandboxMailer';

const ROOT = path.resolve(__dirname, '../..');
const WORKER = path.join(__dirname, '../programs/identityStorageWorker.ts');
/** A worker that has not exited by then is hung: a token or storage failure must end it well before. */
const WORKER_TIMEOUT_MS = 45_000;
/** Environment of this machine the Azure SDK would otherwise pick up in the child. */
const FOREIGN_ENV = [
  STORAGE_SETTING,
  'AZURE_CLIENT_SECRET',
  'AZURE_TENANT_ID',
  'AZURE_CLIENT_CERTIFICATE_PATH',
  'AZURE_FEDERATED_TOKEN_FILE',
  'AZURE_TOKEN_CREDENTIALS',
  'MSI_ENDPOINT',
  'MSI_SECRET',
  'IDENTITY_SERVER_THUMBPRINT',
  'IMDS_ENDPOINT',
];

let sandbox: Sandbox;
let azurite: AzuriteInstance;
const children = new Set<ChildProcess>();

interface WorkerEvent {
  event: 'outcome' | 'error';
  id?: string;
  outcome?: string;
  messageId?: string;
  name?: string;
  message?: string;
}

interface WorkerRun {
  exitCode: number | null;
  signal: NodeJS.Signals | null;
  events: WorkerEvent[];
  stdout: string;
  stderr: string;
  durationMs: number;
}

/** The identity-based storage settings, as the Function App has them in Azure. */
function identityStorageSettings(clientId: string): Record<string, string> {
  return {
    [`${STORAGE_SETTING}__queueServiceUri`]: azurite.serviceUris.queue,
    [`${STORAGE_SETTING}__tableServiceUri`]: azurite.serviceUris.table,
    [`${STORAGE_SETTING}__blobServiceUri`]: azurite.serviceUris.blob,
    [`${STORAGE_SETTING}__credential`]: 'managedidentity',
    [`${STORAGE_SETTING}__clientId`]: clientId,
  };
}

/** Runs the worker to its end (or kills it at WORKER_TIMEOUT_MS) with the sandbox's settings and `storage`. */
function runWorker(storage: Record<string, string>, message: Record<string, unknown>): Promise<WorkerRun> {
  const env: Record<string, string | undefined> = { ...process.env };
  for (const key of FOREIGN_ENV) delete env[key];
  Object.assign(env, sandbox.settings(), storage, {
    NODE_EXTRA_CA_CERTS: sandbox.caFile,
    TEST_MESSAGE: JSON.stringify(message),
  });
  const started = Date.now();
  // `node --import tsx`: one process, so the kill on timeout reaches the worker itself.
  const child = spawn(process.execPath, ['--import', 'tsx', WORKER], {
    cwd: ROOT,
    env,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  children.add(child);
  let out = '';
  let err = '';
  child.stdout?.on('data', (chunk: Buffer) => (out += chunk.toString()));
  child.stderr?.on('data', (chunk: Buffer) => (err += chunk.toString()));
  const timer = setTimeout(() => child.kill('SIGKILL'), WORKER_TIMEOUT_MS);
  return new Promise((resolve, reject) => {
    child.once('error', reject);
    child.once('close', (exitCode, signal) => {
      clearTimeout(timer);
      children.delete(child);
      const events = out
        .split('\n')
        .filter((line) => line.startsWith('{'))
        .map((line) => JSON.parse(line) as WorkerEvent);
      resolve({ exitCode, signal, events, stdout: out, stderr: err, durationMs: Date.now() - started });
    });
  });
}

/** Lists queues with `token` over HTTPS, trusting the sandbox CA (and nothing else): Azurite's status and body. */
function listQueues(token: string): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const request = https.request(
      `${azurite.serviceUris.queue}?comp=list`,
      { ca: sandbox.ca.certPem, headers: { authorization: `Bearer ${token}`, 'x-ms-version': '2020-10-02' } },
      (response) => {
        let body = '';
        response.on('data', (chunk: Buffer) => (body += chunk.toString()));
        response.on('end', () => resolve({ status: response.statusCode ?? 0, body }));
      },
    );
    request.on('error', reject);
    request.end();
  });
}

/** A managed identity token as the sandbox issues it, for `audience`. */
function identityToken(audience: string): Promise<string> {
  const { tenant, issuer } = sandbox;
  return issuer.sign(
    appOnlyAccessTokenClaims({
      tenantId: tenant.tenantId,
      issuerUrl: issuer.issuerUrl,
      audience,
      appId: tenant.identity.clientId,
      objectId: tenant.identity.principalId,
      roles: [],
      appidacr: '2',
    }),
    600,
  );
}

beforeAll(async () => {
  sandbox = await startSandbox();
  const { certPem, keyPem } = sandbox.ca.issueServer(['127.0.0.1', 'localhost']);
  azurite = await startAzurite({ oauth: { certPem, keyPem } });
}, 60_000);

afterAll(async () => {
  for (const child of children) if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  // The sandbox removes its own directory on close.
  await Promise.all([sandbox?.close(), azurite?.stop()]);
});

describe('the OAuth Azurite these tests rely on', () => {
  it('accepts a token for https://storage.azure.com and refuses one for another audience', async () => {
    expect((await listQueues(await identityToken(STORAGE_RESOURCE))).status).toBe(200);
    const refused = await listQueues(await identityToken(KEY_VAULT_RESOURCE));
    expect(refused.status).toBe(403);
    expect(refused.body).toContain('Invalid token audience.');
  });
});

describe('the outbox on identity-based AzureWebJobsStorage (managed identity, no account key)', () => {
  it('accepts and delivers a message: storage authorised by the user-assigned identity, the mail sent', async () => {
    const subject = `Identity storage ${Date.now()}`;
    const clientId = sandbox.tenant.identity.clientId;
    const run = await runWorker(identityStorageSettings(clientId), {
      to: 'identity@example.com',
      subject,
      text: 'Stored with a managed identity token',
    });

    expect(run.signal, run.stderr).toBeNull();
    expect(run.exitCode, run.stderr).toBe(0);
    const [outcome] = run.events;
    expect(outcome).toMatchObject({ event: 'outcome', outcome: 'sent' });

    const received = sandbox.smtp.messages.filter((m) => m.parsed.subject === subject);
    expect(received).toHaveLength(1);
    expect(received[0]?.envelope.to).toEqual(['identity@example.com']);
    expect(received[0]?.parsed.text?.trim()).toBe('Stored with a managed identity token');
    expect(received[0]?.parsed.messageId).toBe(outcome?.messageId);

    // Every storage call carried a bearer token for Storage from the user-assigned identity: the child had no key.
    const storageTokens = sandbox.identity.requests.filter((r) => r.resource === STORAGE_RESOURCE);
    expect(storageTokens.length).toBeGreaterThanOrEqual(1);
    for (const request of storageTokens) expect(request).toMatchObject({ identity: clientId, status: 200 });

    // None of the Storage tokens the worker used (nor any other secret or token) is in what it wrote, at debug level.
    expect(sandbox.issuedTokens().filter((t) => t.audience === STORAGE_RESOURCE).length).toBeGreaterThanOrEqual(1);
    expect(run.stderr.length).toBeGreaterThan(0);
    expect(secretScanner(sandbox.secrets()).findAll({ stdout: run.stdout, stderr: run.stderr })).toEqual([]);
  });

  it('a clientId the app does not have fails fast, naming the managed identity, and sends nothing', async () => {
    const wrongClientId = '00000000-0000-0000-0000-00000000beef';
    const subject = `Wrong identity ${Date.now()}`;
    const run = await runWorker(identityStorageSettings(wrongClientId), {
      to: 'identity@example.com',
      subject,
      text: 'never stored',
    });

    expect(run.signal, 'the worker hung and was killed').toBeNull();
    expect(run.exitCode).toBe(1);
    const [failure] = run.events;
    expect(failure?.event).toBe('error');
    expect(failure?.message).toMatch(/Managed ?Identity/i);
    expect(failure?.message).toContain('Unable to load the proper Managed Identity.');
    const refused = sandbox.identity.requests.filter((r) => r.identity === wrongClientId);
    expect(refused.length).toBeGreaterThanOrEqual(1);
    for (const request of refused) expect(request).toMatchObject({ resource: STORAGE_RESOURCE, status: 400 });
    expect(sandbox.smtp.messages.filter((m) => m.parsed.subject === subject)).toHaveLength(0);
    expect(secretScanner(sandbox.secrets()).findAll({ stdout: run.stdout, stderr: run.stderr })).toEqual([]);
  });
});
