/**
 * Delivery faults end to end: the built bundle in the dev host, Azurite, the sandbox's Exchange, and a worker process
 * killed mid-send.
 *
 * - Poison: the host's retries (visibilityTimeout, maxDequeueCount, `mail-outbox-poison`) end in `failed` with the
 *   reason. What makes deliver throw (rather than mark the message failed or deferred) is a storage failure before it
 *   has a lease: a missing payload blob is not one (deliver marks it failed PAYLOAD_MISSING itself, no retry), so
 *   Table storage refuses the message's status record, through a proxy in front of Azurite's table endpoint.
 * - A worker killed between taking the lease and recording the result: the message is neither lost nor left
 *   `sending`. Once the lease ends, the host's queue trigger takes it over and sends it.
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { QueueClient } from '@azure/storage-queue';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { startAzurite, type AzuriteInstance } from '../../dev/azurite';
import { startDevHost, type DevHost } from '../../dev/host';
import { ConnectionSlots } from '../../src/pacing/connectionSlots';
import { createAppServices } from '../../src/appServices';
import { OUTBOX_POISON_QUEUE, OUTBOX_QUEUE } from '../../src/storage/storageClients';
import { applySandboxEnv, startSandbox, type Sandbox } from '../support/sandboxMailer';

const ROOT = path.resolve(__dirname, '../..');
const MAX_DEQUEUE_COUNT = 3;
/** The killed worker's lease: short, so that the take-over comes within seconds. */
const WORKER_LEASE_MS = 3_000;
/** How long the worker's held queue message stays invisible (WAIT_HOLD_SECONDS is 60 s in the app). */
const WORKER_HOLD_SECONDS = 3;

let sandbox: Sandbox;
let azurite: AzuriteInstance;
let host: DevHost;
let tableProxy: TableProxy;
let tmp: string;
const hostLog: string[] = [];
const children = new Set<ChildProcess>();

interface StatusBody {
  id: string;
  status: string;
  attempts: number;
  sentAt?: string;
  messageId?: string;
  error?: { code: string; message: string; transient: boolean };
}

/**
 * An HTTP proxy in front of Azurite's table endpoint that refuses reads of one message's status record a given
 * number of times (403 AuthorizationFailure, as for a revoked role or a rotated key: the SDK does not retry it, so
 * one refusal is one failed delivery).
 */
interface TableProxy {
  url: string;
  refuse(id: string, times: number): void;
  refused: number;
  close(): Promise<void>;
}

async function startTableProxy(target: string): Promise<TableProxy> {
  const upstream = new URL(target);
  let refuseId: string | undefined;
  let left = 0;
  const server = http.createServer((req, res) => {
    const url = decodeURIComponent(req.url ?? '');
    if (refuseId && left > 0 && req.method === 'GET' && url.includes(`PartitionKey='${refuseId}'`)) {
      left--;
      proxy.refused++;
      req.resume();
      res.writeHead(403, { 'content-type': 'application/json;odata=minimalmetadata' });
      res.end(
        JSON.stringify({
          'odata.error': {
            code: 'AuthorizationFailure',
            message: { lang: 'en-US', value: 'This request is not authorized to perform this operation.' },
          },
        }),
      );
      return;
    }
    const forward = http.request(
      {
        host: upstream.hostname,
        port: upstream.port,
        method: req.method,
        path: req.url,
        headers: { ...req.headers, host: upstream.host },
      },
      (answer) => {
        res.writeHead(answer.statusCode ?? 502, answer.headers);
        answer.pipe(res);
      },
    );
    forward.on('error', () => res.destroy());
    req.pipe(forward);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  const proxy: TableProxy = {
    url: `http://127.0.0.1:${port}${upstream.pathname}`,
    refused: 0,
    refuse(id, times) {
      refuseId = id;
      left = times;
    },
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
  return proxy;
}

function api(route: string): string {
  return `${host.url}/api/${route}${route.includes('?') ? '&' : '?'}code=${encodeURIComponent(host.functionKey)}`;
}

async function status(id: string): Promise<StatusBody> {
  const response = await fetch(api(`messages/${id}`));
  expect(response.status).toBe(200);
  return (await response.json()) as StatusBody;
}

async function waitFor<T>(what: string, probe: () => Promise<T | undefined> | T | undefined, timeoutMs = 20_000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

const waitForStatus = (id: string, wanted: string[], timeoutMs?: number) =>
  waitFor(
    `message ${id} to be ${wanted.join(' or ')}`,
    async () => {
      const current = await status(id);
      return wanted.includes(current.status) ? current : undefined;
    },
    timeoutMs,
  );

async function queueDepth(name: string): Promise<number> {
  const queue = new QueueClient(azurite.connectionString, name);
  if (!(await queue.exists())) return 0;
  return (await queue.getProperties()).approximateMessagesCount ?? 0;
}

const received = (subject: string) => sandbox.smtp.messages.filter((m) => m.parsed.subject === subject);

beforeAll(async () => {
  execFileSync(process.execPath, [path.join(ROOT, 'scripts/build.mjs')], { cwd: ROOT });
  [sandbox, azurite] = await Promise.all([startSandbox(), startAzurite()]);
  applySandboxEnv(sandbox);
  tableProxy = await startTableProxy(`http://127.0.0.1:${azurite.ports.table}/devstoreaccount1`);
  tmp = mkdtempSync(path.join(tmpdir(), 'm365-faults-'));
  const hostJsonPath = path.join(tmp, 'host.json');
  writeFileSync(
    hostJsonPath,
    JSON.stringify({
      version: '2.0',
      extensions: { queues: { visibilityTimeout: '00:00:01', maxDequeueCount: MAX_DEQUEUE_COUNT, batchSize: 4 } },
    }),
  );
  host = await startDevHost({
    entry: path.join(ROOT, 'dist/functions/index.js'),
    env: {
      ...sandbox.settings(),
      // The app's table traffic goes through the proxy; its queues and blobs (and the host's queues) do not.
      AzureWebJobsStorage: azurite.connectionString.replace(/TableEndpoint=[^;]+/, `TableEndpoint=${tableProxy.url}`),
    },
    port: 0,
    hostJsonPath,
    pollIntervalMs: 200,
    log: (line) => hostLog.push(line),
  });
}, 120_000);

afterEach(() => {
  for (const child of children) if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  Object.assign(sandbox.smtp.faults, { delayMs: 0 });
});

afterAll(async () => {
  for (const child of children) if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  await host?.stop();
  await Promise.all([sandbox?.close(), azurite?.stop(), tableProxy?.close()]);
  if (tmp) rmSync(tmp, { recursive: true, force: true });
});

describe('the host retries a delivery that throws, then poisons it: the status ends failed with the reason', () => {
  it(`Table storage refuses the status record ${MAX_DEQUEUE_COUNT} times → mail-outbox-poison → failed POISON_MESSAGE`, async () => {
    const subject = 'Poisoned';
    const sendAt = new Date(Date.now() + 2_000).toISOString();
    const response = await fetch(api('messages'), {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ to: 'poison@example.com', subject, text: 'never sent', sendAt }),
    });
    expect(response.status).toBe(202);
    const { id } = (await response.json()) as { id: string };
    // From now on until it has failed maxDequeueCount deliveries, reading this record fails (a storage error, which
    // deliver throws: its first step, before any lease). Nothing else reads it meanwhile (no status polls here).
    tableProxy.refuse(id, MAX_DEQUEUE_COUNT);

    await waitFor('the refusals', () => (tableProxy.refused >= MAX_DEQUEUE_COUNT ? true : undefined));
    const final = await waitForStatus(id, ['failed', 'sent']);
    expect(final.status).toBe('failed');
    expect(final.error?.code).toBe('POISON_MESSAGE');
    expect(final.error?.message).toMatch(/^poison: /);
    expect(final.attempts).toBe(0);
    expect(tableProxy.refused).toBe(MAX_DEQUEUE_COUNT);

    // The chain as the host ran it: three failed deliveries, the move to the poison queue, outboxPoison's success.
    const failedRuns = hostLog.filter((l) => l.includes('[outboxDeliver') && l.includes('Failed ('));
    expect(failedRuns).toHaveLength(MAX_DEQUEUE_COUNT);
    expect(hostLog.some((l) => l.includes(`MaxDequeueCount of ${MAX_DEQUEUE_COUNT}`))).toBe(true);
    expect(hostLog.some((l) => l.includes('[outboxPoison') && l.includes('Succeeded ('))).toBe(true);
    // Handled, so removed: nothing is left in the outbox or its poison queue, and nothing was sent.
    await waitFor('empty queues', async () =>
      (await queueDepth(OUTBOX_QUEUE)) + (await queueDepth(OUTBOX_POISON_QUEUE)) === 0 ? true : undefined,
    );
    expect(received(subject)).toHaveLength(0);
  });
});

describe('a delivery worker killed between taking the lease and recording the result', () => {
  /** Starts the worker process on a new message and resolves with the message id once it is accepted. */
  async function startWorker(
    subject: string,
    leaseMs = WORKER_LEASE_MS,
    env: Record<string, string> = {},
  ): Promise<{ child: ChildProcess; id: string; stderr: () => string; stdout: () => string }> {
    // `node --import tsx` rather than `npx tsx`: one process, so SIGKILL kills the worker itself (npx and the tsx CLI
    // each put a parent process in front of it, which a kill would orphan it behind).
    const child = spawn(process.execPath, ['--import', 'tsx', path.join(__dirname, '../programs/deliveryWorker.ts')], {
      cwd: ROOT,
      env: {
        ...process.env,
        ...sandbox.settings(),
        AzureWebJobsStorage: azurite.connectionString,
        TEST_LEASE_MS: String(leaseMs),
        TEST_HOLD_SECONDS: String(WORKER_HOLD_SECONDS),
        TEST_MESSAGE: JSON.stringify({ to: 'killed@example.com', subject, text: 'sent once the worker is gone' }),
        ...env,
      },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    children.add(child);
    let out = '';
    let err = '';
    child.stdout?.on('data', (chunk: Buffer) => (out += chunk.toString()));
    child.stderr?.on('data', (chunk: Buffer) => (err += chunk.toString()));
    const id = await waitFor(
      'the worker to accept its message',
      () => {
        if (child.exitCode !== null) throw new Error(`worker exited ${child.exitCode}: ${err}`);
        const line = out.split('\n').find((l) => l.includes('"accepted"'));
        return line ? (JSON.parse(line) as { id: string }).id : undefined;
      },
      15_000,
    );
    return { child, id, stderr: () => err, stdout: () => out };
  }

  async function kill(child: ChildProcess): Promise<void> {
    const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
    child.kill('SIGKILL');
    await exited;
    expect(child.signalCode).toBe('SIGKILL');
  }

  it('stalled past its lease while waiting for its send slot: it does not send; the worker that took over sends once', async () => {
    const subject = 'Stalled past the lease';
    // One send every 5 s (5.15 s with the pacing margin) for the worker: the slot taken here just before it starts
    // leaves it a wait of 5 s minus its start-up, within the 5 s an inline send may wait, holding its lease.
    const slow = { MAIL_RATE_PER_MINUTE: '1', MAIL_RATE_WINDOW_SECONDS: '5' };
    const leaseMs = 12_000;
    const rt = createAppServices({ ...sandbox.settings(), ...slow, AzureWebJobsStorage: azurite.connectionString });
    try {
      // A worker killed holding an SMTP connection slot keeps it until its blob lease expires (15 s): the worker
      // must find one free, or it defers the message instead of holding it.
      const slots = new ConnectionSlots(rt.storage.pacingLeases, rt.config.sender, rt.config.limits.maxConnections);
      await waitFor(
        'a free SMTP connection slot',
        async () => ((await slots.leasedCount()) < rt.config.limits.maxConnections ? true : undefined),
        30_000,
      );
      const slot = await rt.pacer!.reserve(1, { maxWaitMs: 10_000 });
      if (slot.kind !== 'slot') throw new Error(`expected a send slot, got ${JSON.stringify(slot)}`);
    } finally {
      await rt.close();
    }
    const { child, id, stdout } = await startWorker(subject, leaseMs, slow);
    await waitFor('the worker to take the lease', async () =>
      (await status(id)).status === 'sending' ? true : undefined,
    );
    child.kill('SIGSTOP'); // the stall: the worker sleeps through its slot and its lease
    const stalledAt = Date.now();
    try {
      // The host's copy of the queue message (held 3 s) finds the live lease, comes back when it ends, takes over.
      const final = await waitForStatus(id, ['sent', 'failed'], 30_000);
      expect(final).toMatchObject({ status: 'sent', attempts: 2 });
      expect(Date.now() - stalledAt).toBeGreaterThan(leaseMs - 2_000);
      expect(received(subject)).toHaveLength(1);
    } finally {
      child.kill('SIGCONT');
    }
    const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
    await waitFor('the stalled worker to finish', () => (child.exitCode !== null ? true : undefined), 20_000);
    await exited;
    const outcome = stdout()
      .split('\n')
      .filter((l) => l.includes('"outcome"'))
      .map((l) => JSON.parse(l) as { outcome: string; reason?: string });
    expect(outcome).toEqual([{ event: 'outcome', outcome: 'waiting', reason: 'lease-lost' }]);
    // Still exactly one copy, from the worker that took over.
    await new Promise((resolve) => setTimeout(resolve, 500));
    expect(received(subject)).toHaveLength(1);
    expect((await status(id)).status).toBe('sent');
    // Leave the mailbox's pacing as the next test expects it: no send slot reserved ahead at this slow rate.
    const after = createAppServices({ ...sandbox.settings(), AzureWebJobsStorage: azurite.connectionString });
    try {
      const { nextSlotAt } = await after.pacer!.snapshot();
      await new Promise((resolve) => setTimeout(resolve, Math.max(0, nextSlotAt - Date.now())));
    } finally {
      await after.close();
    }
  }, 60_000);

  it('hung before DATA ends (the SMTP greeting never comes): taken over after the lease, sent exactly once', async () => {
    const subject = 'Killed before DATA';
    const sessionsBefore = sandbox.smtp.sessions.length;
    sandbox.smtp.faults.delayMs = 10_000; // below the sender's 15 s greeting timeout: the worker just waits
    const { child, id } = await startWorker(subject);

    await waitForStatus(id, ['sending'], 10_000);
    await waitFor('the worker to connect', () => (sandbox.smtp.sessions.length > sessionsBefore ? true : undefined));
    await kill(child);
    const receivedBeforeKill = received(subject).length;
    sandbox.smtp.faults.delayMs = 0;

    // Right after the kill the record is `sending` under the dead worker's lease: nobody else sends it yet.
    expect((await status(id)).status).toBe('sending');
    const final = await waitForStatus(id, ['sent', 'failed']);
    expect(final).toMatchObject({ status: 'sent', attempts: 2 });
    expect(receivedBeforeKill).toBe(0);
    expect(received(subject)).toHaveLength(1);
    expect(received(subject)[0]?.parsed.messageId).toBe(final.messageId);
  });

  it('killed after Exchange accepted DATA but before its 250 arrived: sent again, the documented duplicate', async () => {
    const subject = 'Killed after DATA';
    // Hold back the reply to the end of DATA: the server has the message, the worker does not know it (= 250, then
    // the process dies before writing `sent`).
    const onMessage = (message: { parsed: { subject?: string } }) => {
      if (message.parsed.subject === subject) sandbox.smtp.faults.delayMs = 10_000;
    };
    sandbox.smtp.on('message', onMessage);
    try {
      const { child, id } = await startWorker(subject);
      await waitFor('Exchange to accept the message', () => (received(subject).length > 0 ? true : undefined));
      expect((await status(id)).status).toBe('sending');
      await kill(child);
      sandbox.smtp.off('message', onMessage);
      sandbox.smtp.faults.delayMs = 0;
      expect(received(subject)).toHaveLength(1);

      const final = await waitForStatus(id, ['sent', 'failed']);
      expect(final).toMatchObject({ status: 'sent', attempts: 2 });
      // Measured: the one duplicate the design cannot prevent, two copies. Both carry the Message-ID fixed at
      // accept, which the status records too, so a recipient's client can recognise the second as a duplicate.
      const copies = received(subject);
      expect(copies).toHaveLength(2);
      expect(copies[0]?.parsed.messageId).toBe(copies[1]?.parsed.messageId);
      expect(copies[1]?.parsed.messageId).toBe(final.messageId);
      expect(final.messageId).toMatch(new RegExp(`^<${id}@`));
    } finally {
      sandbox.smtp.off('message', onMessage);
    }
  });
});
