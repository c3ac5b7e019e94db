/**
 * The digest guarantees end to end: app instances in their own processes (the dev host running functions/index.ts),
 * sharing Azurite and the sandbox's Exchange, driven over their real HTTP ports.
 *
 * (a) a run killed between recipients (SIGKILL) and run again by another instance sends nothing twice and loses
 *     nothing; (b) items that arrive during a run go into the next period, never lost, never in two digests;
 * (c) two instances running the same digest at once make one digest per recipient and period.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startAzurite, type AzuriteInstance } from '../../dev/azurite';
import { DigestStore } from '../../src/digests/digestStore';
import { createStorage } from '../../src/storage/storageClients';
import { applySandboxEnv, startSandbox, type Sandbox } from '../support/sandboxMailer';

const ROOT = path.resolve(__dirname, '../..');
const KEY = 'digest-e2e-function-key';
/** Recipients per scenario: enough that a run takes a while and can be caught between recipients. */
const RECIPIENTS = 120;

let sandbox: Sandbox;
let azurite: AzuriteInstance;
let store: DigestStore;
const children = new Set<ChildProcess>();

interface Worker {
  child: ChildProcess;
  url: string;
}

function startWorker(): Promise<Worker> {
  const child = spawn(process.execPath, ['--import', 'tsx', path.join(ROOT, 'test/programs/hostWorker.ts')], {
    cwd: ROOT,
    env: {
      ...process.env,
      ...sandbox.settings(),
      AzureWebJobsStorage: azurite.connectionString,
      MAIL_RATE_PER_MINUTE: '60000',
      // Pacing is proven elsewhere; here a killed instance's connection slots would only slow delivery down.
      MAIL_PACING: 'off',
      // Two instances at once stay within the mailbox's 3 SMTP sessions (pacing, which would share them, is off).
      MAIL_MAX_CONNECTIONS: '1',
      MAIL_SEND_LEASE_SECONDS: '3',
      // Far away: only the HTTP trigger runs digests here.
      MAIL_DIGEST_SCHEDULE: '0 0 0 1 1 *',
      TEST_FUNCTION_KEY: KEY,
      TEST_MESSAGE_LEASE_SECONDS: '4',
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  children.add(child);
  child.once('exit', () => children.delete(child));
  const logs: string[] = [];
  child.stderr.on('data', (chunk: Buffer) => logs.push(chunk.toString()));
  return new Promise((resolve, reject) => {
    let out = '';
    child.stdout.on('data', (chunk: Buffer) => {
      out += chunk.toString();
      const line = out.split('\n').find((l) => l.includes('"event":"ready"'));
      if (line) resolve({ child, url: (JSON.parse(line) as { url: string }).url });
    });
    child.once('exit', (code) => reject(new Error(`worker exited with ${code}: ${logs.join('')}`)));
  });
}

async function stopWorker(worker: Worker, signal: NodeJS.Signals = 'SIGTERM'): Promise<void> {
  if (worker.child.exitCode !== null || worker.child.signalCode !== null) return;
  const exited = new Promise((resolve) => worker.child.once('exit', resolve));
  worker.child.kill(signal);
  await exited;
}

const api = (worker: Worker, route: string) => `${worker.url}/api/${route}?code=${KEY}`;

async function postItems(worker: Worker, items: unknown[]): Promise<void> {
  for (let i = 0; i < items.length; i += 500) {
    const response = await fetch(api(worker, 'digests/activity/items'), {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ items: items.slice(i, i + 500) }),
    });
    expect(response.status).toBe(202);
    expect(((await response.json()) as { rejected: number }).rejected).toBe(0);
  }
}

async function run(worker: Worker): Promise<{ status: number; outcome: string; recipients: number }> {
  const response = await fetch(api(worker, 'digests/activity/run'), { method: 'POST' });
  const body = (await response.json()) as { outcome: string; run?: { recipients: number } };
  return { status: response.status, outcome: body.outcome, recipients: body.run?.recipients ?? 0 };
}

/** Recipients with items pending (rows kept only for the tombstones of sent items say `items: 0`). */
async function pendingRecipients(): Promise<number> {
  let n = 0;
  for await (const page of store.pendingRecipients('activity')) n += page.filter((r) => r.items !== 0).length;
  return n;
}

/** The item titles each recipient received, by distinct Message-ID (a redelivered copy has the same one). */
function received(recipients: string[]): Map<string, string[][]> {
  const wanted = new Set(recipients);
  const byRecipient = new Map<string, Map<string, string[]>>();
  for (const m of sandbox.smtp.messages) {
    const to = m.envelope.to[0];
    if (!to || !wanted.has(to)) continue;
    const titles = [...(m.parsed.text ?? '').matchAll(/^- (\S+)$/gm)].map((x) => x[1] as string);
    const messages = byRecipient.get(to) ?? new Map<string, string[]>();
    messages.set(m.parsed.messageId ?? '', titles);
    byRecipient.set(to, messages);
  }
  return new Map([...byRecipient.entries()].map(([to, messages]) => [to, [...messages.values()]]));
}

/**
 * Waits until every recipient has had a digest and `total` distinct digests arrived in all (or the time is up), then
 * waits a little more for any copy too many, and returns what arrived.
 */
async function waitForDigests(recipients: string[], total: number, timeoutMs = 90_000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const got = received(recipients);
    const count = [...got.values()].reduce((sum, digests) => sum + digests.length, 0);
    const done = count >= total && recipients.every((r) => (got.get(r)?.length ?? 0) >= 1);
    if (done || Date.now() > deadline) break;
    await new Promise((r) => setTimeout(r, 250));
  }
  await new Promise((r) => setTimeout(r, 1_000));
  return received(recipients);
}

const recipientsOf = (tag: string) =>
  Array.from({ length: RECIPIENTS }, (_, i) => `${tag}${String(i).padStart(3, '0')}@example.com`);

/** Lets the lease of a killed run run out now (it would after DIGEST_LEASE_MS). */
async function expireLease(): Promise<void> {
  const record = await store.getRun('activity');
  if (record?.status === 'running') {
    await store.updateRun(record, { leaseUntil: new Date(Date.now() - 1).toISOString() });
  }
}

beforeAll(async () => {
  // Exchange's own limits are not what is tested here: a throttled digest would only arrive after a back-off.
  [sandbox, azurite] = await Promise.all([
    startSandbox({ smtpLimits: { ratePerMinute: 1_000_000_000, dailyRecipients: 1_000_000_000 } }),
    startAzurite(),
  ]);
  applySandboxEnv(sandbox);
  const storage = createStorage({ kind: 'connectionString', connectionString: azurite.connectionString });
  await storage.ensureResources();
  store = new DigestStore(storage.digestTable);
}, 120_000);

afterAll(async () => {
  await Promise.all(
    [...children].map(
      (child) =>
        new Promise((resolve) => {
          child.once('exit', resolve);
          child.kill('SIGKILL');
        }),
    ),
  );
  await Promise.all([sandbox?.close(), azurite?.stop()]);
});

describe('digest runs across processes', () => {
  it('(a) a run killed between recipients and run again elsewhere sends each recipient one digest of all its items', async () => {
    const recipients = recipientsOf('killed');
    const a = await startWorker();
    await postItems(
      a,
      recipients.flatMap((to) => [
        { recipient: to, item: { title: 'k1' } },
        { recipient: to, item: { title: 'k2' } },
      ]),
    );
    expect(await pendingRecipients()).toBe(RECIPIENTS);
    const running = run(a).catch(() => ({ status: 0, outcome: 'killed', recipients: 0 }));
    // Killed once some recipients are done and some are not.
    const deadline = Date.now() + 30_000;
    let left = RECIPIENTS;
    while (Date.now() < deadline) {
      left = await pendingRecipients();
      if (left < RECIPIENTS - 5) break;
      await new Promise((r) => setTimeout(r, 20));
    }
    await stopWorker(a, 'SIGKILL');
    expect((await running).outcome).toBe('killed');
    left = await pendingRecipients();
    expect(left).toBeGreaterThan(0);
    expect(left).toBeLessThan(RECIPIENTS);

    const b = await startWorker();
    expect((await run(b)).outcome).toBe('busy'); // the killed run still holds its lease
    await expireLease();
    // The counts of the run taken over include the recipients the killed run completed.
    expect(await run(b)).toMatchObject({ status: 200, outcome: 'completed', recipients: RECIPIENTS });
    expect(await pendingRecipients()).toBe(0);
    const got = await waitForDigests(recipients, RECIPIENTS);
    for (const to of recipients) {
      // Items received in the same millisecond have no order among them.
      expect(
        got.get(to)?.map((titles) => titles.sort()),
        to,
      ).toEqual([['k1', 'k2']]);
    }
    await stopWorker(b);
  }, 180_000);

  it('(b) items that arrive during a run go into the next period: each item in exactly one digest', async () => {
    const recipients = recipientsOf('during');
    const b = await startWorker();
    await postItems(
      b,
      recipients.map((to) => ({ recipient: to, item: { title: 'before' } })),
    );
    const running = run(b);
    // While the run goes through the recipients, every recipient gets another item.
    await postItems(
      b,
      recipients.map((to) => ({ recipient: to, item: { title: 'during' } })),
    );
    const first = await running;
    expect(first.outcome).toBe('completed');
    const second = await run(b);
    expect(second).toMatchObject({ status: 200, outcome: 'completed' });
    expect(await pendingRecipients()).toBe(0);
    const got = await waitForDigests(recipients, first.recipients + second.recipients);
    let split = 0;
    for (const to of recipients) {
      const digests = got.get(to) ?? [];
      const titles = digests.flat().sort();
      expect(titles, to).toEqual(['before', 'during']);
      expect(digests.length).toBeLessThanOrEqual(2);
      if (digests.length === 2) {
        split++;
        // The earlier period never holds the later item alone.
        expect(digests.find((d) => d.includes('during'))).not.toContain('before');
      }
    }
    // The test is only telling when the second wave really overlapped the run for some recipients.
    expect(split).toBeGreaterThan(0);
    await stopWorker(b);
  }, 180_000);

  it('(c) two instances running the digest at once make one digest per recipient', async () => {
    const recipients = recipientsOf('overlap');
    const [b, c] = await Promise.all([startWorker(), startWorker()]);
    await postItems(
      b,
      recipients.map((to) => ({ recipient: to, item: { title: 'o1' } })),
    );
    const outcomes = await Promise.all([run(b), run(c)]);
    // One holds the run; the other is refused (409 busy) or, starting after it finished, finds nothing left.
    expect(outcomes.filter((o) => o.outcome === 'completed').length).toBeGreaterThanOrEqual(1);
    expect(outcomes.every((o) => o.outcome === 'completed' || (o.outcome === 'busy' && o.status === 409))).toBe(true);
    expect(await pendingRecipients()).toBe(0);
    const got = await waitForDigests(recipients, RECIPIENTS);
    for (const to of recipients) expect(got.get(to), to).toEqual([['o1']]);
    await Promise.all([stopWorker(b), stopWorker(c)]);
  }, 180_000);
});
