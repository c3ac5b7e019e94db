/**
 * The pacing scenario shared by the proof (test/e2e/pacingWorkers.test.ts) and `npm run bench`: a backlog of messages in
 * the outbox, drained by several app instances in separate processes against one sandbox Exchange with scaled
 * limits. Returns what the sandbox saw.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import path from 'node:path';
import { createLogger } from '../../src/logger';
import { connectionPortsOf, localTcpPorts } from './processSockets';
import { createAppServices, type AppServices } from '../../src/appServices';
import type { Sandbox } from '../../sandbox';

const ROOT = path.resolve(__dirname, '../..');

export interface PacingScenario {
  sandbox: Sandbox;
  /** Azurite's connection string. */
  storage: string;
  messages: number;
  workers: number;
  /** MAIL_RATE_PER_MINUTE and the window it counts in (MAIL_RATE_WINDOW_SECONDS), the sandbox's limits too. */
  ratePerWindow: number;
  windowMs: number;
  /** SIGKILL one worker once this many messages were received. */
  killOneAfter?: number;
  /** How long a killed worker's messages stay hidden, and its sending leases last (seconds). */
  crashRecoverySeconds?: number;
  /** The scenario's own deadline: keep it shorter than the test's timeout, so that it fails and cleans up first. */
  timeoutMs?: number;
  /**
   * Tell which worker sent each message (PacingResult.sends), by the TCP ports each worker process holds to the SMTP
   * server, read from /proc when a session starts. For the chart of the benchmark; the proof does not need it.
   */
  recordSenders?: boolean;
  /** Called as the backlog is accepted, as the workers start and as the sandbox receives the messages (counts only). */
  onProgress?: (phase: 'accept' | 'start' | 'drain', done: number, total: number) => void;
}

/** What the killed worker was doing when it was killed, and what came of it. */
export interface KillReport {
  at: number;
  /** The SMTP sessions the killed worker had open at that moment (by the sandbox's record and its TCP ports). */
  openSessions: string[];
  /** Messages received twice, each with the session its first copy came from. */
  duplicates: Array<{ subject: string; firstSession: string }>;
  /** Records that needed more than one attempt: messages the killed worker held and another worker took over. */
  takenOver: number;
}

export interface PacingResult {
  ids: string[];
  /** Messages the sandbox accepted, and how many were a second copy of one already received. */
  received: number;
  duplicates: number;
  /** The most messages in any window of `windowMs`, by the sandbox's own clock. */
  maxInAnyWindow: number;
  rateViolations: number;
  rejections432: number;
  maxConcurrentSessions: number;
  /** Sends over the span between the first and last one, relative to the allowed rate. */
  utilisation: number;
  spanMs: number;
  /** The longest pauses between two consecutive sends (ms), longest first, with the send count before each. */
  longestGaps: Array<{ afterSends: number; gapMs: number }>;
  statuses: Record<string, number>;
  /**
   * Every message the sandbox accepted for the mailbox: its arrival (sandbox clock, epoch ms) and the index of the
   * worker that sent it (undefined when its session was not seen on any worker, or without `recordSenders`).
   */
  sends: Array<{ at: number; worker: number | undefined }>;
  killed: boolean;
  kill?: KillReport;
  workerLogs: string[];
}

/** Starts a worker; `track` gets the child at once, so that it is cleaned up even if it never becomes ready. */
function spawnWorker(
  env: Record<string, string | undefined>,
  logs: string[],
  track: (child: ChildProcess) => void,
): Promise<ChildProcess> {
  const child = spawn(process.execPath, ['--import', 'tsx', path.join(__dirname, '../programs/hostWorker.ts')], {
    cwd: ROOT,
    env: { ...process.env, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  track(child);
  child.stderr.on('data', (chunk: Buffer) => logs.push(chunk.toString()));
  return new Promise((resolve, reject) => {
    let out = '';
    const onData = (chunk: Buffer) => {
      out += chunk.toString();
      if (out.includes('"event":"ready"')) {
        child.stdout.off('data', onData);
        resolve(child);
      }
    };
    child.stdout.on('data', onData);
    child.once('exit', (code) => reject(new Error(`worker exited with ${code} before it was ready: ${logs.join('')}`)));
  });
}

async function inBatches<T>(items: T[], width: number, fn: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  await Promise.all(
    Array.from({ length: width }, async () => {
      while (next < items.length) await fn(items[next++] as T);
    }),
  );
}

function stopWorker(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => {
    const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
    child.once('exit', () => {
      clearTimeout(timer);
      resolve();
    });
    child.kill('SIGTERM');
  });
}

/** Runs the scenario; every worker is stopped (or was killed) when it returns or throws. */
export async function runPacingScenario(scenario: PacingScenario): Promise<PacingResult> {
  const { sandbox } = scenario;
  const recovery = scenario.crashRecoverySeconds ?? 5;
  const settings = {
    ...sandbox.settings(),
    AzureWebJobsStorage: scenario.storage,
    MAIL_RATE_PER_MINUTE: String(scenario.ratePerWindow),
    MAIL_RATE_WINDOW_SECONDS: String(scenario.windowMs / 1000),
    MAIL_SEND_LEASE_SECONDS: String(recovery),
  };
  const rt: AppServices = createAppServices(settings, { logger: createLogger({ level: 'warn', write: () => {} }) });
  const workers: ChildProcess[] = [];
  const workerLogs: string[] = [];
  try {
    await rt.storage.ensureResources();
    const ids: string[] = [];
    await inBatches(
      Array.from({ length: scenario.messages }, (_, i) => i),
      16,
      async (i) => {
        const { id } = await rt.outbox.accept(
          { to: `reader${i}@example.com`, subject: `Pacing ${i}`, text: `Message ${i}` },
          { source: 'http' },
        );
        ids.push(id);
        scenario.onProgress?.('accept', ids.length, scenario.messages);
      },
    );
    sandbox.smtp.reset();
    let ready = 0;
    await Promise.all(
      Array.from({ length: scenario.workers }, () =>
        spawnWorker({ ...settings, TEST_MESSAGE_LEASE_SECONDS: String(recovery * 2) }, workerLogs, (child) =>
          workers.push(child),
        ).then(() => scenario.onProgress?.('start', ++ready, scenario.workers)),
      ),
    );
    let killed = false;
    let killedAt = 0;
    let killedPorts = new Set<number>();
    const deadline = Date.now() + (scenario.timeoutMs ?? 240_000);
    const mailbox = rt.config.sender;
    // Client port → worker index: a session's remotePort is the port of the worker's socket to the SMTP server.
    const portOwner = new Map<number, number>();
    const notePorts = () => {
      workers.forEach((worker, index) => {
        if (worker.pid === undefined || worker.exitCode !== null || worker.signalCode !== null) return;
        for (const port of connectionPortsOf(worker.pid, sandbox.smtp.port) ?? []) portOwner.set(port, index);
      });
    };
    let sessionsSeen = 0;
    for (;;) {
      // Reading /proc costs tens of milliseconds on a loaded machine: only when a session has started since the last
      // look (sessions are pooled and long-lived; one that opens and closes in between stays of no known instance).
      if (scenario.recordSenders && sandbox.smtp.sessions.length > sessionsSeen) {
        sessionsSeen = sandbox.smtp.sessions.length;
        notePorts();
      }
      if (!killed && scenario.killOneAfter !== undefined && sandbox.smtp.messages.length >= scenario.killOneAfter) {
        const victim = workers[0]!;
        // Which sockets it holds at the kill: the sessions on them are the ones its death can leave half done.
        killedPorts = localTcpPorts(victim.pid!);
        killedAt = Date.now();
        victim.kill('SIGKILL');
        killed = true;
      }
      const subjects = new Set(sandbox.smtp.messages.map((m) => m.parsed.subject));
      scenario.onProgress?.('drain', subjects.size, scenario.messages);
      if (subjects.size >= scenario.messages) break;
      if (Date.now() > deadline) {
        throw new Error(
          `only ${subjects.size} of ${scenario.messages} messages arrived: ${workerLogs.join('').slice(-4000)}`,
        );
      }
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
    // Every record must reach an outcome (a crashed worker's messages are taken over once its leases end).
    let statuses: Record<string, number> = {};
    for (;;) {
      const counted: Record<string, number> = {};
      await inBatches(ids, 16, async (id) => {
        const status = (await rt.status.get(id))?.status ?? 'missing';
        counted[status] = (counted[status] ?? 0) + 1;
      });
      statuses = counted;
      if ((counted.sent ?? 0) + (counted.failed ?? 0) === ids.length || Date.now() > deadline) break;
      await new Promise((resolve) => setTimeout(resolve, 1_000));
    }
    // Let copies still in flight land before counting duplicates.
    await new Promise((resolve) => setTimeout(resolve, 1_000));
    const messages = sandbox.smtp.messages.filter((m) => m.mailbox === mailbox.toLowerCase() || m.mailbox === mailbox);
    let kill: KillReport | undefined;
    if (killed) {
      const openSessions = sandbox.smtp.sessions
        .filter(
          (s) =>
            killedPorts.has(s.remotePort) &&
            s.startedAt <= killedAt &&
            (s.closedAt === undefined || s.closedAt >= killedAt),
        )
        .map((s) => s.id);
      const firstCopy = new Map<string, string>();
      const duplicates: KillReport['duplicates'] = [];
      for (const m of [...messages].sort((a, b) => a.receivedAt - b.receivedAt)) {
        const subject = m.parsed.subject ?? '';
        const first = firstCopy.get(subject);
        if (first === undefined) firstCopy.set(subject, m.sessionId);
        else duplicates.push({ subject, firstSession: first });
      }
      let takenOver = 0;
      await inBatches(ids, 16, async (id) => {
        if (((await rt.status.get(id))?.attempts ?? 0) > 1) takenOver++;
      });
      kill = { at: killedAt, openSessions, duplicates, takenOver };
    }
    const sessionWorker = new Map(
      sandbox.smtp.sessions.map((session) => [session.id, portOwner.get(session.remotePort)]),
    );
    const sends = messages
      .map((m) => ({ at: m.receivedAt, worker: sessionWorker.get(m.sessionId) }))
      .sort((a, b) => a.at - b.at);
    const times = messages.map((m) => m.receivedAt).sort((a, b) => a - b);
    const spanMs = (times.at(-1) ?? 0) - (times[0] ?? 0);
    const allowedInSpan = (spanMs / scenario.windowMs) * scenario.ratePerWindow;
    return {
      ids,
      received: messages.length,
      duplicates: messages.length - new Set(messages.map((m) => m.parsed.subject)).size,
      maxInAnyWindow: sandbox.smtp.maxInAnyWindow(mailbox),
      rateViolations: sandbox.smtp.violations.filter((v) => v.kind === 'rate').length,
      rejections432: sandbox.smtp.rejections.filter((r) => r.code === 432).length,
      maxConcurrentSessions: sandbox.smtp.maxConcurrentSessions(mailbox),
      utilisation: allowedInSpan > 0 ? (messages.length - 1) / allowedInSpan : 0,
      spanMs,
      longestGaps: times
        .slice(1)
        .map((t, i) => ({ afterSends: i + 1, gapMs: t - (times[i] ?? t) }))
        .sort((a, b) => b.gapMs - a.gapMs)
        .slice(0, 5),
      statuses,
      sends,
      killed,
      ...(kill ? { kill } : {}),
      workerLogs,
    };
  } finally {
    await Promise.all(workers.map(stopWorker));
    await rt.close();
  }
}
