/** No secret or token leaves the app, in any auth mode: real traffic through the dev host on the built bundle, then every output scanned. */
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { TableServiceClient, TableClient } from '@azure/data-tables';
import { BlobServiceClient } from '@azure/storage-blob';
import { QueueServiceClient } from '@azure/storage-queue';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DEV_ACCOUNT_KEY, startAzurite, type AzuriteInstance } from '../../dev/azurite';
import { startDevHost, type DevHost } from '../../dev/host';
import type { SandboxAuthMode } from '../../sandbox';
import { recordKeys } from '../../src/outbox/messageIds';
import { STATUS_TABLE } from '../../src/storage/storageClients';
import { secretScanner, smtpMessagesDecoded, smtpWire, type Haystacks, type Needle } from '../support/secretScan';
import { applySandboxEnv, startSandbox, type Sandbox } from '../support/sandboxMailer';

const ROOT = path.resolve(__dirname, '../..');
const MODES: SandboxAuthMode[] = ['client-secret', 'client-certificate', 'federated-identity', 'basic'];
/** Each mode's traffic ends well within this (a cold bundle, Key Vault, Entra, three deliveries and a batch). */
const MODE_TIMEOUT_MS = 60_000;

let sandbox: Sandbox;
let azurite: AzuriteInstance;

interface Exchange {
  status: number;
  json: Record<string, unknown>;
}

/** Everything one mode's run produced that a secret could end up in. */
interface Outputs {
  hostLog: string[];
  processOutput: string[];
  responses: string[];
}

/**
 * Captures what the process writes to stdout, stderr and the console (the app's logger writes to stderr, the host's
 * worker stand-in too) until `stop()`; nothing reaches the terminal meanwhile.
 */
function captureProcessOutput(into: string[]): () => void {
  const streams = [process.stdout, process.stderr] as const;
  // eslint-disable-next-line @typescript-eslint/unbound-method -- kept only to be put back on the same stream
  const writes = streams.map((s) => s.write);
  const methods = ['log', 'info', 'warn', 'error', 'debug'] as const;
  // eslint-disable-next-line @typescript-eslint/unbound-method -- kept only to be put back on console
  const consoles = methods.map((m) => console[m]);
  for (const stream of streams) {
    stream.write = (chunk: string | Uint8Array) => {
      into.push(typeof chunk === 'string' ? chunk : Buffer.from(chunk).toString('utf8'));
      return true;
    };
  }
  for (const method of methods) console[method] = (...args: unknown[]) => void into.push(args.map(String).join(' '));
  return () => {
    streams.forEach((s, i) => (s.write = writes[i]!));
    methods.forEach((m, i) => (console[m] = consoles[i]!));
  };
}

/** Every entity of every table, every blob and every queued message in Azurite, one string each. */
async function storedData(): Promise<{ statusRecords: string[]; tables: string[]; blobs: string[]; queues: string[] }> {
  const options = { allowInsecureConnection: true };
  const tables: string[] = [];
  let statusRecords: string[] = [];
  for await (const table of TableServiceClient.fromConnectionString(azurite.connectionString, options).listTables()) {
    const client = TableClient.fromConnectionString(azurite.connectionString, table.name!, options);
    const entities: string[] = [];
    for await (const entity of client.listEntities()) entities.push(JSON.stringify(entity));
    if (table.name === STATUS_TABLE) statusRecords = entities;
    else tables.push(...entities);
  }
  const blobs: string[] = [];
  const blobService = BlobServiceClient.fromConnectionString(azurite.connectionString);
  for await (const container of blobService.listContainers()) {
    const client = blobService.getContainerClient(container.name);
    for await (const blob of client.listBlobsFlat()) {
      blobs.push(
        `${container.name}/${blob.name}\n${(await client.getBlobClient(blob.name).downloadToBuffer()).toString()}`,
      );
    }
  }
  const queues: string[] = [];
  const queueService = QueueServiceClient.fromConnectionString(azurite.connectionString);
  for await (const queue of queueService.listQueues()) {
    const peeked = await queueService.getQueueClient(queue.name).peekMessages({ numberOfMessages: 32 });
    for (const message of peeked.peekedMessageItems) {
      queues.push(`${queue.name}\n${message.messageText}\n${Buffer.from(message.messageText, 'base64').toString()}`);
    }
  }
  return { statusRecords, tables, blobs, queues };
}

/** Polls `probe` until it returns a value, or fails naming `what`. */
async function until<T>(probe: () => Promise<T | undefined>, what: string, timeoutMs = 20_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 150));
  }
}

/** Refuses the app's credential at AUTH for `mode` (a token Exchange will not take, or basic auth off); undoes it. */
function refuseCredential(mode: SandboxAuthMode): () => void {
  if (mode === 'basic') {
    sandbox.smtp.limits.basicAuthEnabled = false;
    return () => (sandbox.smtp.limits.basicAuthEnabled = true);
  }
  // New-ServicePrincipal with the App Registration's object id: Exchange refuses every token (535 5.7.3).
  const { clientId, applicationObjectId, servicePrincipalObjectId } = sandbox.tenant.app;
  sandbox.tenant.exchange.servicePrincipals.set(clientId, applicationObjectId);
  return () => sandbox.tenant.exchange.servicePrincipals.set(clientId, servicePrincipalObjectId);
}

/** Runs every kind of request against a dev host in `mode` and returns what it wrote and answered. */
async function runTraffic(mode: SandboxAuthMode, outputs: Outputs): Promise<{ ids: string[]; functionKey: string }> {
  const functionKey = randomBytes(24).toString('base64url');
  const domain = sandbox.tenant.domain;
  const host: DevHost = await startDevHost({
    entry: path.join(ROOT, 'dist/functions/index.js'),
    env: {
      ...sandbox.settings(mode),
      AzureWebJobsStorage: azurite.connectionString,
      MAIL_ALLOWED_FROM: `billing@${domain}`,
      MAIL_RATE_PER_MINUTE: '6000',
      // Every line the app can write, so that the scan sees the most it could leak.
      MAIL_LOG_LEVEL: 'debug',
    },
    port: 0,
    functionKey,
    pollIntervalMs: 100,
    log: (line) => outputs.hostLog.push(line),
  });
  const ids: string[] = [];
  try {
    const call = async (route: string, init: RequestInit = {}): Promise<Exchange> => {
      const response = await fetch(`${host.url}/api/${route}${route.includes('?') ? '&' : '?'}code=${functionKey}`, {
        ...init,
        headers: { 'content-type': 'application/json', ...init.headers },
      });
      const text = await response.text();
      outputs.responses.push(`${response.status} ${JSON.stringify(Object.fromEntries(response.headers))}\n${text}`);
      const json = (text ? JSON.parse(text) : {}) as Record<string, unknown>;
      const id = (json.id ?? (json.error as { id?: string } | undefined)?.id) as string | undefined;
      if (id && !ids.includes(id)) ids.push(id);
      return { status: response.status, json };
    };
    const post = (body: unknown, query = '') =>
      call(`messages${query}`, { method: 'POST', body: JSON.stringify(body) });
    const finalStatus = (id: string) =>
      until(async () => {
        const { json } = await call(`messages/${id}`);
        return ['sent', 'failed'].includes(json.status as string) ? json : undefined;
      }, `message ${id} to end`);

    // First, with nothing cached: the credential goes out and Exchange refuses it.
    const restore = refuseCredential(mode);
    try {
      const refused = await post({ to: 'refused@example.com', subject: 'Refused', text: 'no' }, '?wait=true');
      expect(refused.status).toBe(422);
      expect((refused.json.error as { code: string }).code).toBe(
        mode === 'basic' ? 'BASIC_AUTH_DISABLED' : 'AUTH_FAILED',
      );
    } finally {
      restore();
    }

    const queued = await post({ to: ['a@example.com', 'b@example.com'], subject: 'Queued', text: 'via the outbox' });
    expect(queued.status).toBe(202);
    const inline = await post({ to: 'inline@example.com', subject: 'Inline', html: '<p>now</p>' }, '?wait=true');
    expect(inline.status).toBe(200);
    const denied = await post(
      { from: `billing@${domain}`, to: 'x@example.com', subject: 'No SendAs', text: 't' },
      '?wait=true',
    );
    expect(denied.status).toBe(422);
    expect((denied.json.error as { code: string }).code).toBe('SEND_AS_DENIED');
    expect((await finalStatus(queued.json.id as string)).status).toBe('sent');
    for (const id of ids) await call(`messages/${id}`);

    expect((await call('templates/order-shipped/preview')).status).toBe(200);
    expect((await call('templates/no-such-template/preview')).status).toBe(404);
    expect((await post({ to: 'not an address', subject: 's', text: 't' })).status).toBe(400);

    const sample = JSON.parse(readFileSync(path.join(ROOT, 'templates/notification/sample.json'), 'utf8')) as object;
    const batch = await call('notifications', {
      method: 'POST',
      body: JSON.stringify({
        template: 'notification',
        data: sample,
        recipients: [{ to: 'n1@example.com' }, { to: 'n2@example.com', data: { title: 'Hello Bee' } }],
      }),
    });
    expect(batch.status).toBe(202);
    await until(async () => {
      const { json } = await call(`notifications/${batch.json.batchId as string}`);
      return (json.counts as Record<string, number> | undefined)?.sent === 2 ? json : undefined;
    }, 'the batch to be sent');
  } finally {
    // Stopping runs appTerminate: the SMTP pool closes and telemetry is flushed to the ingestion capture.
    await host.stop();
  }
  return { ids, functionKey };
}

beforeAll(async () => {
  execFileSync(process.execPath, [path.join(ROOT, 'scripts/build.mjs')], { cwd: ROOT });
  [sandbox, azurite] = await Promise.all([startSandbox(), startAzurite()]);
  applySandboxEnv(sandbox);
}, 120_000);

afterAll(async () => {
  await Promise.all([sandbox?.close(), azurite?.stop()]);
});

describe.each(MODES)(
  '%s: no secret in anything the app wrote, stored, answered, sent as telemetry or put on the wire',
  (mode) => {
    it(
      'leaks nothing, and the scan saw real data',
      async () => {
        sandbox.smtp.reset();
        sandbox.ingestion.reset();
        const tokensBefore = sandbox.issuedTokens().length;
        const assertionsBefore = sandbox.entra.clientAssertions.length;
        const outputs: Outputs = { hostLog: [], processOutput: [], responses: [] };
        const stopCapture = captureProcessOutput(outputs.processOutput);
        let ids: string[];
        let functionKey: string;
        try {
          ({ ids, functionKey } = await runTraffic(mode, outputs));
        } finally {
          stopCapture();
        }
        // The exporter's last export is under way when stop() returns; wait for the events it carries.
        const arrived = await sandbox.ingestion.waitFor(
          () => sandbox.ingestion.events('MailSent').length >= 4 && sandbox.ingestion.events('MailFailed').length >= 2,
          15_000,
        );
        expect(arrived, JSON.stringify(sandbox.ingestion.events().map((e) => e.name))).toBe(true);

        // The credentials of this mode were really obtained, so their needles are real ones.
        const issued = sandbox.issuedTokens().slice(tokensBefore);
        const audiences = new Set(issued.map((t) => t.audience));
        if (mode !== 'federated-identity') expect(audiences).toContain('https://vault.azure.net');
        if (mode !== 'basic') expect(audiences).toContain('https://outlook.office365.com');
        if (mode === 'federated-identity') expect(audiences).toContain('api://AzureADTokenExchange');
        if (mode === 'client-certificate')
          expect(sandbox.entra.clientAssertions.length).toBeGreaterThan(assertionsBefore);

        const needles: Needle[] = [
          ...sandbox.secrets(),
          // Public, but a sign that a whole connection string was written out.
          { kind: 'storage-account-key', label: 'Azurite account key', value: DEV_ACCOUNT_KEY },
          // The caller's `?code=`: the request URL the app sees carries it, and its statusUrl must not.
          { kind: 'function-key', label: 'the dev host function key', value: functionKey },
        ];
        const scan = secretScanner(needles);
        const stored = await storedData();
        const wire = smtpWire(sandbox.smtp);

        // Not vacuous: every haystack holds what this run produced.
        expect(outputs.hostLog.some((l) => l.includes('[outboxDeliver]'))).toBe(true);
        // The app's own lines, written through each invocation's logger (context.log), including its failures.
        expect(outputs.hostLog.some((l) => /\[outboxDeliver\] m365-mailer: mail sent/.test(l))).toBe(true);
        expect(outputs.hostLog.some((l) => /\[messagesPost warning\] m365-mailer: mail failed/.test(l))).toBe(true);
        expect(outputs.responses.length).toBeGreaterThanOrEqual(12);
        expect(ids).toHaveLength(4);
        for (const id of ids) {
          const { partitionKey, rowKey } = recordKeys(id);
          const record = stored.statusRecords.find((r) =>
            r.includes(`"partitionKey":"${partitionKey}","rowKey":"${rowKey}"`),
          );
          expect(record, `status record of ${id}`).toBeDefined();
        }
        expect(sandbox.ingestion.rawBodies.length).toBeGreaterThan(0);
        expect(wire.elsewhere.some((l) => /^MAIL FROM:/i.test(l))).toBe(true);
        expect(wire.elsewhere.some((l) => /^STARTTLS/i.test(l))).toBe(true);
        expect(sandbox.smtp.messages.length).toBeGreaterThanOrEqual(4);
        // The credential did cross the wire, in its AUTH commands after STARTTLS, and the scanner sees it there
        // (the token's base64 shifted by the XOAUTH2 prefix, or the app password's).
        const inAuth = scan.findAll({ auth: wire.auth });
        expect(inAuth.map((l) => l.kind)).toContain(mode === 'basic' ? 'app-password' : 'access-token');
        expect(inAuth.every((l) => l.form.startsWith('base64@'))).toBe(true);

        const haystacks: Haystacks = {
          'dev host log': outputs.hostLog,
          'process output': outputs.processOutput,
          'HTTP responses': outputs.responses,
          'status records': stored.statusRecords,
          'other table entities': stored.tables,
          blobs: stored.blobs,
          'queue messages': stored.queues,
          telemetry: sandbox.ingestion.rawBodies,
          'SMTP wire outside AUTH': wire.elsewhere,
          'messages as delivered': smtpMessagesDecoded(sandbox.smtp),
          'SMTP transcripts': sandbox.smtp.sessions.flatMap((s) => s.transcript),
          'sandbox records': [
            JSON.stringify(sandbox.smtp.authAttempts),
            JSON.stringify(sandbox.smtp.rejections),
            JSON.stringify(sandbox.entra.requests),
            JSON.stringify(sandbox.keyVault.reads),
            JSON.stringify(sandbox.identity.requests),
          ],
        };
        expect(scan.findAll(haystacks)).toEqual([]);

        // Log lines hold no address (Exchange's replies name the mailbox and the recipients; the 422s above quoted
        // them), subject or body either, whichever logger wrote them.
        const logs = [...outputs.hostLog, ...outputs.processOutput];
        expect(logs.filter((l) => /[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+\.[A-Za-z0-9.-]+/.test(l))).toEqual([]);
        const personal = secretScanner(
          ['via the outbox', '<p>now</p>', 'No SendAs', 'Hello Bee'].map((value) => ({
            kind: 'personal-data',
            label: 'a subject or body',
            value,
          })),
        );
        expect(personal.findAll({ 'dev host log': outputs.hostLog, 'process output': outputs.processOutput })).toEqual(
          [],
        );
      },
      MODE_TIMEOUT_MS,
    );
  },
);
