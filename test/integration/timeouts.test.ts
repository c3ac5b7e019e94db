/** Every outbound call is bounded: a hung Table, Blob, Queue, Key Vault, Entra ID, managed identity or ingestion endpoint ends as a classified transient error in bounded time. */
import http from 'node:http';
import net from 'node:net';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { DEV_ACCOUNT_KEY, startAzurite, type AzuriteInstance } from '../../dev/azurite';
import { errorResponse } from '../../src/api/errorResponse';
import { loadConfig, type Config } from '../../src/config';
import { MailError } from '../../src/errors';
import { MessageStore } from '../../src/outbox/messageStore';
import { KeyVaultSecrets, createAzureCredential } from '../../src/sender/keyVaultSecrets';
import { createSmtpAuthSource, type SmtpAuthTimeouts } from '../../src/sender/smtpAuth';
import {
  STORAGE_MAX_TRIES,
  asStorageUnavailable,
  createStorage,
  isStorageError,
} from '../../src/storage/storageClients';
import { createTelemetry, type Telemetry } from '../../src/telemetry';
import { applySandboxEnv, startSandbox, type Sandbox } from '../support/sandboxMailer';

/** How long the sandbox holds a request it was told to delay: far beyond every bound configured below. */
const HANG_MS = 10_000;
/** Scheduling slack on a shared 2-core machine: bounds are checked generously, never as speed measurements. */
const SLACK_MS = 4_000;

let sandbox: Sandbox;

/** A TCP server on loopback that accepts connections and never answers: a hung storage account. */
interface HungServer {
  port: number;
  /** Connections accepted so far: one per try the client made. */
  connections: number;
  close(): Promise<void>;
}

async function startHungServer(): Promise<HungServer> {
  const sockets = new Set<net.Socket>();
  const state = { connections: 0 };
  const server = net.createServer((socket) => {
    state.connections += 1;
    sockets.add(socket);
    socket.on('error', () => {});
    socket.on('close', () => sockets.delete(socket));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as net.AddressInfo).port;
  return {
    port,
    get connections() {
      return state.connections;
    },
    set connections(value: number) {
      state.connections = value;
    },
    close: () =>
      new Promise<void>((resolve) => {
        for (const socket of sockets) socket.destroy();
        server.close(() => resolve());
      }),
  };
}

/** Awaits `promise`, which must reject; returns the error and how long it took. */
async function failure(promise: () => Promise<unknown>): Promise<{ error: unknown; ms: number }> {
  const started = Date.now();
  try {
    await promise();
  } catch (error) {
    return { error, ms: Date.now() - started };
  }
  throw new Error('expected the call to fail');
}

/** Resolves once `condition` holds, or after `timeoutMs` (the assertions that follow say what was missing). */
async function until(condition: () => boolean, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition() && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 50));
}

async function timed<T>(promise: () => Promise<T>): Promise<{ value: T; ms: number }> {
  const started = Date.now();
  const value = await promise();
  return { value, ms: Date.now() - started };
}

function config(mode: 'client-secret' | 'federated-identity' = 'client-secret'): Config {
  return loadConfig(sandbox.settings(mode));
}

function vaultUrl(c: Config): string {
  if (!('keyVaultUrl' in c.auth)) throw new Error('no vault in this mode');
  return c.auth.keyVaultUrl;
}

/** The app's Key Vault reader against the sandbox, with the given bounds. */
function secrets(
  c: Config,
  bounds: { tryTimeoutMs?: number; readTimeoutMs?: number; credentialTryTimeoutMs?: number },
) {
  return new KeyVaultSecrets(
    vaultUrl(c),
    createAzureCredential(c, {
      ...(bounds.credentialTryTimeoutMs !== undefined ? { tryTimeoutMs: bounds.credentialTryTimeoutMs } : {}),
    }),
    {
      extraCaPem: c.extraCaPem,
      ...(bounds.tryTimeoutMs !== undefined ? { tryTimeoutMs: bounds.tryTimeoutMs } : {}),
      ...(bounds.readTimeoutMs !== undefined ? { readTimeoutMs: bounds.readTimeoutMs } : {}),
    },
  );
}

function expectTransient(error: unknown, code: MailError['code']): MailError {
  expect(error).toBeInstanceOf(MailError);
  const mailError = error as MailError;
  expect(mailError.code).toBe(code);
  expect(mailError.transient).toBe(true);
  return mailError;
}

beforeAll(async () => {
  sandbox = await startSandbox();
  applySandboxEnv(sandbox);
  // MSAL keeps managed identity tokens in a process-wide cache; tokens that live less than its 5-minute renewal
  // margin are never served from it, so every test here really asks the identity endpoint.
  sandbox.identity.tokenLifetimeSeconds = 60;
});

afterAll(async () => {
  await sandbox?.close();
});

beforeEach(() => {
  sandbox.entra.faults.splice(0);
  sandbox.keyVault.faults.splice(0);
  sandbox.identity.faults.splice(0);
  sandbox.ingestion.reset();
});

describe('storage: a hung account ends as STORAGE_UNAVAILABLE after every try was cut', () => {
  const TRY_MS = 400;
  // Each try is cut at TRY_MS, then the SDK backs off (at most 2 s) and tries again.
  const BOUND_MS = STORAGE_MAX_TRIES * TRY_MS + 2 * 2_000 + SLACK_MS;
  let hung: HungServer;
  let storage: ReturnType<typeof createStorage>;

  beforeAll(async () => {
    hung = await startHungServer();
    const endpoint = `http://127.0.0.1:${hung.port}/devstoreaccount1`;
    const connectionString = `DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=${DEV_ACCOUNT_KEY};BlobEndpoint=${endpoint};QueueEndpoint=${endpoint};TableEndpoint=${endpoint};`;
    storage = createStorage({ kind: 'connectionString', connectionString }, { tryTimeoutMs: TRY_MS });
  });

  afterAll(async () => {
    await hung?.close();
  });

  beforeEach(() => {
    hung.connections = 0;
  });

  /** What the HTTP API and the queue trigger make of the failure. */
  function expectStorageUnavailable(error: unknown): void {
    // The queue trigger rethrows storage errors so that the host retries the message.
    expect(isStorageError(error)).toBe(true);
    const classified = expectTransient(asStorageUnavailable(error), 'STORAGE_UNAVAILABLE');
    expect(classified.message).toContain(`did not answer within ${TRY_MS} ms`);
    // An HTTP caller gets 503 with Retry-After.
    const response = errorResponse(error);
    expect(response.status).toBe(503);
    expect(response.headers?.['Retry-After']).toBeDefined();
  }

  it('Table: an entity read', async () => {
    const { error, ms } = await failure(() => storage.statusTable.getEntity('p', 'r'));
    expectStorageUnavailable(error);
    expect(hung.connections).toBe(STORAGE_MAX_TRIES);
    expect(ms).toBeGreaterThanOrEqual(STORAGE_MAX_TRIES * TRY_MS - 50);
    expect(ms).toBeLessThan(BOUND_MS);
  });

  it('Blob: an upload and a download through clients derived from the container', async () => {
    const upload = await failure(() =>
      storage.payloads.getBlockBlobClient('a.json').uploadData(Buffer.from('{}'), {
        blobHTTPHeaders: { blobContentType: 'application/json' },
      }),
    );
    expectStorageUnavailable(upload.error);
    expect(hung.connections).toBe(STORAGE_MAX_TRIES);
    expect(upload.ms).toBeLessThan(BOUND_MS);

    const download = await failure(() => storage.payloads.getBlockBlobClient('a.json').downloadToBuffer());
    expectStorageUnavailable(download.error);
    expect(hung.connections).toBe(2 * STORAGE_MAX_TRIES);
    expect(download.ms).toBeGreaterThanOrEqual(STORAGE_MAX_TRIES * TRY_MS - 50);
    expect(download.ms).toBeLessThan(BOUND_MS);
  });

  it('Queue: sending a message', async () => {
    const { error, ms } = await failure(() => storage.outboxQueue.sendMessage('{}'));
    expectStorageUnavailable(error);
    expect(hung.connections).toBe(STORAGE_MAX_TRIES);
    expect(ms).toBeGreaterThanOrEqual(STORAGE_MAX_TRIES * TRY_MS - 50);
    expect(ms).toBeLessThan(BOUND_MS);
  });

  it('creating the resources fails as a whole, and is tried again on the next call', async () => {
    const first = await failure(() => storage.ensureResources());
    expectStorageUnavailable(first.error);
    expect(first.ms).toBeLessThan(BOUND_MS);
    const connections = hung.connections;
    await failure(() => storage.ensureResources());
    expect(hung.connections).toBeGreaterThan(connections);
  });
});

describe('storage: a blob whose body stalls after the headers', () => {
  const TRY_MS = 400;
  let server: http.Server;
  let storage: ReturnType<typeof createStorage>;

  beforeAll(async () => {
    // Answers like Blob storage, then sends 3 of the 10 bytes it announced and nothing more.
    server = http.createServer((request, response) => {
      const headers = {
        'content-type': 'application/json',
        'x-ms-blob-type': 'BlockBlob',
        etag: '"0x1"',
        'last-modified': new Date().toUTCString(),
        'x-ms-version': '2025-01-05',
        'accept-ranges': 'bytes',
        'content-length': '10',
      };
      if (request.method === 'HEAD') return void response.writeHead(200, headers).end();
      response.writeHead(206, { ...headers, 'content-range': 'bytes 0-9/10' });
      response.write('{"a":');
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const endpoint = `http://127.0.0.1:${(server.address() as net.AddressInfo).port}/devstoreaccount1`;
    const connectionString = `DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=${DEV_ACCOUNT_KEY};BlobEndpoint=${endpoint};QueueEndpoint=${endpoint};TableEndpoint=${endpoint};`;
    storage = createStorage({ kind: 'connectionString', connectionString }, { tryTimeoutMs: TRY_MS });
  });

  afterAll(async () => {
    server?.closeAllConnections();
    await new Promise((resolve) => server?.close(resolve));
  });

  it('reading a payload is cut by the per-try bound and is a storage failure, not a broken payload', async () => {
    const { error, ms } = await failure(() => new MessageStore(storage.payloads).get('stalled'));
    // The delivery worker fails a message as PAYLOAD_INVALID for anything that is not a storage error.
    expect(isStorageError(error)).toBe(true);
    const classified = expectTransient(asStorageUnavailable(error), 'STORAGE_UNAVAILABLE');
    expect(classified.message).toContain("the blob's body could not be read");
    expect(ms).toBeGreaterThanOrEqual(TRY_MS - 50);
    expect(ms).toBeLessThan(STORAGE_MAX_TRIES * TRY_MS + 2 * 2_000 + SLACK_MS);
  });
});

describe('storage: the bound leaves a healthy account alone', () => {
  let azurite: AzuriteInstance;

  beforeAll(async () => {
    azurite = await startAzurite();
  });

  afterAll(async () => {
    await azurite?.stop();
  });

  it('queues, tables and blobs (derived clients included) work with the per-try bound in place', async () => {
    const storage = createStorage({ kind: 'connectionString', connectionString: azurite.connectionString });
    await storage.ensureResources();
    await storage.outboxQueue.sendMessage('{"id":"x"}');
    expect((await storage.outboxQueue.receiveMessages()).receivedMessageItems).toHaveLength(1);
    await storage.statusTable.upsertEntity({ partitionKey: 'p', rowKey: 'r', value: 1 });
    expect((await storage.statusTable.getEntity<{ value: number }>('p', 'r')).value).toBe(1);
    await storage.payloads.getBlockBlobClient('x.json').uploadData(Buffer.from('{"a":1}'));
    expect((await storage.payloads.getBlockBlobClient('x.json').downloadToBuffer()).toString()).toBe('{"a":1}');
    // A second service-derived client of each kind: the bound is in the shared pipeline once, not once per client.
    await storage.poisonQueue.sendMessage('{"id":"y"}');
    await storage.batches.getBlockBlobClient('b.json').uploadData(Buffer.from('{}'));
    // Payloads are read through downloadBlob: a stored one comes back, a missing one is still "none".
    const payloads = new MessageStore(storage.payloads);
    const message = {
      from: { address: 'a@example.com' },
      to: [{ address: 'b@example.com' }],
      cc: [],
      bcc: [],
      subject: 'Hello',
      text: 'Hi',
      attachments: [{ filename: 'a.txt', content: Buffer.from('attached') }],
      headers: {},
    };
    expect(await payloads.put('m1', { message })).toBe(true);
    expect((await payloads.get('m1'))?.message.attachments[0]?.content.toString()).toBe('attached');
    expect(await payloads.get('missing')).toBeUndefined();
  });
});

describe('Key Vault', () => {
  it('a hung identity endpoint behind the vault credential: KEY_VAULT_UNAVAILABLE within the read bound, then a fresh read', async () => {
    const c = config();
    const reader = secrets(c, { credentialTryTimeoutMs: 300, readTimeoutMs: 2_000 });
    for (let i = 0; i < 50; i++) sandbox.identity.faults.push({ kind: 'delay', ms: HANG_MS });
    const { error, ms } = await failure(() => reader.get('mail-client-secret'));
    const classified = expectTransient(error, 'KEY_VAULT_UNAVAILABLE');
    expect(classified.message).toContain("Key Vault secret 'mail-client-secret'");
    expect(classified.message).toContain('within 2000 ms');
    expect(sandbox.identity.requests.length).toBeGreaterThan(0);
    expect(ms).toBeGreaterThanOrEqual(2_000 - 50);
    expect(ms).toBeLessThan(2_000 + SLACK_MS);

    // The endpoint recovers. The credential's own retries, still running, are shared by the client's next token
    // request, so let them land first. The failed read was not cached: the next one goes to the vault.
    sandbox.identity.faults.splice(0);
    await until(() => sandbox.identity.requests.some((r) => r.status === 200), 20_000);
    const vaultReads = sandbox.keyVault.reads.filter((r) => r.status === 200).length;
    const again = await reader.get('mail-client-secret');
    expect(again.value).toBe(sandbox.tenant.app.secrets[0]);
    expect(sandbox.keyVault.reads.filter((r) => r.status === 200).length).toBe(vaultReads + 1);
  });

  it('a hung vault: every try is cut, the read fails KEY_VAULT_UNAVAILABLE, and the failed read is not cached', async () => {
    const reader = secrets(config(), { tryTimeoutMs: 400, readTimeoutMs: 20_000 });
    // One delay per try: the SecretClient tries three times.
    sandbox.keyVault.faults.push(
      { kind: 'delay', ms: HANG_MS },
      { kind: 'delay', ms: HANG_MS },
      { kind: 'delay', ms: HANG_MS },
    );
    const { error, ms } = await failure(() => reader.get('mail-client-secret'));
    const classified = expectTransient(error, 'KEY_VAULT_UNAVAILABLE');
    expect(classified.message).toContain('did not answer within 400 ms');
    // The per-try bound ended it, long before the read bound.
    expect(sandbox.keyVault.faults).toHaveLength(0);
    expect(ms).toBeGreaterThanOrEqual(3 * 400 - 50);
    expect(ms).toBeLessThan(3 * 400 + 2 * 2_000 + SLACK_MS);

    const again = await reader.get('mail-client-secret');
    expect(again.value).toBe(sandbox.tenant.app.secrets[0]);
  });

  it('one hung try is cut and retried: the read succeeds', async () => {
    const reader = secrets(config(), { tryTimeoutMs: 400, readTimeoutMs: 20_000 });
    sandbox.keyVault.faults.push({ kind: 'delay', ms: HANG_MS });
    const { value, ms } = await timed(() => reader.get('mail-client-secret'));
    expect(value.value).toBe(sandbox.tenant.app.secrets[0]);
    expect(ms).toBeGreaterThanOrEqual(400 - 50);
    expect(ms).toBeLessThan(HANG_MS);
  });
});

describe('MSAL (Entra ID token)', () => {
  const fast: SmtpAuthTimeouts = { tokenRequestTimeoutMs: 400 };

  it('a hung token endpoint: TOKEN_ENDPOINT_UNAVAILABLE within the request bound; the next call gets a token', async () => {
    const c = config();
    const auth = createSmtpAuthSource(c, secrets(c, {}), undefined, fast);
    sandbox.entra.faults.push({ kind: 'delay', ms: HANG_MS });
    const { error, ms } = await failure(() => auth.get());
    const classified = expectTransient(error, 'TOKEN_ENDPOINT_UNAVAILABLE');
    expect(classified.message).toContain('did not answer within 400 ms');
    expect(sandbox.entra.faults).toHaveLength(0);
    expect(ms).toBeLessThan(400 + SLACK_MS);

    const login = await auth.get();
    expect(login.kind).toBe('xoauth2');
    expect(sandbox.entra.requests.filter((r) => r.grant === 'client_secret').map((r) => r.status)).toEqual(
      expect.arrayContaining([200]),
    );
  });

  it('building the client behind a hung Key Vault read: KEY_VAULT_UNAVAILABLE within the build bound; the hung build is not kept', async () => {
    const c = config();
    // The vault reader's own bounds outlast the hang: only the build bound can end the first call.
    const auth = createSmtpAuthSource(c, secrets(c, { tryTimeoutMs: 30_000, readTimeoutMs: 30_000 }), undefined, {
      ...fast,
      clientBuildTimeoutMs: 600,
    });
    sandbox.keyVault.faults.push({ kind: 'delay', ms: HANG_MS });
    const readsBefore = sandbox.keyVault.reads.filter((r) => r.principal !== undefined).length;
    const { error, ms } = await failure(() => auth.get());
    const classified = expectTransient(error, 'KEY_VAULT_UNAVAILABLE');
    expect(classified.message).toContain('within 600 ms while building the token client');
    expect(ms).toBeGreaterThanOrEqual(600 - 50);
    expect(ms).toBeLessThan(600 + SLACK_MS);

    // The vault still holds the first read. Had the hung build been kept, this call would wait for it (HANG_MS):
    // instead it builds again and reads the secret afresh, which the vault answers at once.
    const { value, ms: againMs } = await timed(() => auth.get());
    expect(value.kind).toBe('xoauth2');
    expect(againMs).toBeLessThan(HANG_MS / 2);
    expect(sandbox.keyVault.reads.filter((r) => r.principal !== undefined).length).toBe(readsBefore + 2);
  });

  it('federated identity, a hung managed identity endpoint: TOKEN_FEDERATION (transient) within the assertion bound; the next call gets a token', async () => {
    const auth = createSmtpAuthSource(config('federated-identity'), undefined, undefined, {
      ...fast,
      assertionTimeoutMs: 1_500,
      credentialTryTimeoutMs: 300,
    });
    for (let i = 0; i < 50; i++) sandbox.identity.faults.push({ kind: 'delay', ms: HANG_MS });
    const { error, ms } = await failure(() => auth.get());
    const classified = expectTransient(error, 'TOKEN_FEDERATION');
    expect(classified.message).toContain('did not give a token');
    expect(classified.hint).toContain('IDENTITY_ENDPOINT');
    expect(sandbox.identity.requests.some((r) => r.resource === 'api://AzureADTokenExchange')).toBe(true);
    expect(ms).toBeGreaterThanOrEqual(1_500 - 50);
    expect(ms).toBeLessThan(1_500 + SLACK_MS);

    sandbox.identity.faults.splice(0);
    const login = await auth.get();
    expect(login.kind).toBe('xoauth2');
    expect(sandbox.entra.requests.at(-1)).toMatchObject({ grant: 'federated', status: 200 });
  });
});

describe('telemetry exporter', () => {
  const started: Telemetry[] = [];

  afterAll(async () => {
    await Promise.allSettled(started.map((t) => t.shutdown()));
  });

  it('a hung ingestion endpoint: each request is cut at its bound and reported to onError; flush() returns and never throws', async () => {
    const errors: unknown[] = [];
    const telemetry = createTelemetry({
      connectionString: sandbox.ingestion.connectionString,
      extraCaPem: sandbox.ca.certPem,
      requestTimeoutMs: 400,
      retry: { maxRetries: 1, retryDelayInMs: 50, maxRetryDelayInMs: 100 },
      // Far above the request bound: flush() returning early shows the request was cut, not abandoned by flush().
      flushTimeoutMs: 20_000,
      onError: (error) => errors.push(error),
    });
    started.push(telemetry);
    sandbox.ingestion.delayNext(10, HANG_MS);
    telemetry.trackEvent('MailSent', { id: 'held' });
    const { ms } = await timed(() => telemetry.flush());
    expect(ms).toBeLessThan(2 * 400 + SLACK_MS);
    expect(errors.map((e) => (e as Error).message)).toEqual(
      expect.arrayContaining([
        expect.stringMatching(/^Application Insights ingestion failed: .* did not answer within 400 ms$/),
      ]),
    );
    // The capture saw the client close its connection: no socket is left waiting on the hung endpoint.
    await until(() => sandbox.ingestion.requests.some((r) => r.status === 0), SLACK_MS);
    expect(sandbox.ingestion.requests.some((r) => r.status === 0)).toBe(true);
    expect(sandbox.ingestion.events('MailSent')).toHaveLength(0);

    // The endpoint recovers: the next event goes through.
    sandbox.ingestion.reset();
    telemetry.trackEvent('MailSent', { id: 'after' });
    await telemetry.flush();
    expect(sandbox.ingestion.events('MailSent').map((e) => e.properties.id)).toEqual(['after']);
  });
});
