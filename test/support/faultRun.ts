/**
 * The fault suite at scale, shared by its CI test (test/e2e/faultSuite.test.ts) and `npm run bench -- --only=faults`:
 * messages accepted over HTTP and drained by three dev-host instances (the built bundle, each its own process)
 * against one Azurite and the sandbox, while the sandbox injects transient faults, one instance is SIGKILLed and
 * replaced every so often, Key Vault is down for a while and Entra ID answers 5xx in bursts. Afterwards it reads
 * the sandbox's own record and every status record, and returns the figures; it asserts nothing itself.
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import path from 'node:path';
import type { Sandbox } from '../../sandbox';
import type { ExchangeSmtpInjection } from '../../sandbox/smtp/observation';
import { createLogger } from '../../src/logger';
import { createAppServices, type AppServices } from '../../src/appServices';
import { TERMINAL_STATUSES, type StoredRecord } from '../../src/outbox/statusStore';
import { connectionPortsOf } from './processSockets';
import { secretScanner } from './secretScan';
import { appSettings, startServices, type Settings } from './stack';

const ROOT = path.resolve(__dirname, '../..');

/** How big the run is and how hard the faults come; {@link FULL_SCALE} and {@link CI_SCALE} are the two in use. */
export interface FaultScale {
  messages: number;
  /** App instances draining the outbox at any time (a killed one is replaced). */
  workers: number;
  /** MAIL_RATE_PER_MINUTE counted over MAIL_RATE_WINDOW_SECONDS, and the sandbox's own rate limit. */
  ratePerWindow: number;
  windowMs: number;
  /** MAIL_DAILY_RECIPIENT_LIMIT over MAIL_DAILY_WINDOW_SECONDS, and the sandbox's daily quota. */
  dailyRecipients: number;
  dailyWindowMs: number;
  /** MAIL_SEND_LEASE_SECONDS: a killed instance's messages are taken over once their leases end. */
  leaseSeconds: number;
  /** MAIL_RETRY_BACKOFF_SECONDS: the first back-off after a transient failure, scaled like the rest of time. */
  retryBackoffSeconds: number;
  /** How long a killed instance's in-flight queue messages stay hidden (the host's in-flight visibility). */
  queueHoldSeconds: number;
  /** Share of SMTP transactions that meet an injected transient fault. */
  faultFraction: number;
  /** Reply delay of a "delayed replies" burst, and how long a burst lasts. */
  delay: { ms: number; burstMs: number };
  /** The first SIGKILL (ms after the start), the interval between kills, and the most kills. */
  kills: { firstAtMs: number; everyMs: number; max: number };
  /** Key Vault answers 503 to every authenticated request from `atMs` for `durationMs`. */
  keyVaultOutage: { atMs: number; durationMs: number };
  /**
   * Entra ID's token endpoint answers 5xx from `firstAtMs`, every `everyMs`, for `durationMs` each time, with
   * `Retry-After: retryAfterSeconds` (MSAL then refuses the request itself that long; without it, 60 s).
   */
  entraBursts: { firstAtMs: number; everyMs: number; durationMs: number; retryAfterSeconds: number };
  /** Lifetime of the sandbox's tokens: MSAL renews 5 minutes ahead, so a short one sends instances back to Entra ID. */
  tokenLifetimeSeconds: number;
  /** POSTs in flight at once while accepting. */
  acceptConcurrency: number;
  /**
   * Accepts per second (0: as fast as they go). Below the rate limit, messages arrive as a stream rather than one
   * backlog: Azurite's in-memory queue sorts every message it holds on each receive, and a backlog of thousands slows
   * every storage call of every instance (3.5 sends/s at 7,000 queued, where 12/s are allowed).
   */
  acceptPerSecond: number;
  /** The run gives up (and reports what is left) after this long. */
  deadlineMs: number;
}

/**
 * Exchange's limits (30 a minute, 10,000 recipients a day, 3 sessions) scaled 24 times in count, over their real
 * windows: 720 a minute and 240,000 a day. Counting over the real windows keeps the pacing margin (3 % of the
 * window, 1.8 s) as wide as in production, and the daily quota keeps the real ratio to the rate. Time scales by the
 * same factor: a kill every 30 s, Key Vault down for 30 s, replies delayed by 50 ms (1.2 s at Exchange's pace).
 */
export const FULL_SCALE: FaultScale = {
  messages: 10_000,
  workers: 3,
  ratePerWindow: 720,
  windowMs: 60_000,
  dailyRecipients: 240_000,
  dailyWindowMs: 24 * 60 * 60 * 1000,
  leaseSeconds: 10,
  retryBackoffSeconds: 1.25,
  queueHoldSeconds: 12,
  faultFraction: 0.2,
  delay: { ms: 50, burstMs: 1_000 },
  kills: { firstAtMs: 20_000, everyMs: 30_000, max: 1_000 },
  // Starts 3 s before the 5th kill, so that the replacement instance starts while Key Vault is down.
  keyVaultOutage: { atMs: 137_000, durationMs: 30_000 },
  // MSAL's own 60 s throttle after a 5xx, scaled like the rest (2.5 s), through Retry-After.
  entraBursts: { firstAtMs: 35_000, everyMs: 45_000, durationMs: 6_000, retryAfterSeconds: 3 },
  tokenLifetimeSeconds: 310,
  acceptConcurrency: 8,
  acceptPerSecond: 10,
  deadlineMs: 45 * 60_000,
};

/**
 * The CI version: 400 messages at 300 a minute (so that the drain spans more than one rate window and the limit
 * binds), one kill while Key Vault is down (20 s), Entra ID bursts; about 2–3 minutes.
 */
export const CI_SCALE: FaultScale = {
  ...FULL_SCALE,
  messages: 400,
  ratePerWindow: 300,
  dailyRecipients: 100_000,
  acceptPerSecond: 0,
  kills: { firstAtMs: 12_000, everyMs: 30_000, max: 1 },
  keyVaultOutage: { atMs: 10_000, durationMs: 20_000 },
  entraBursts: { ...FULL_SCALE.entraBursts, firstAtMs: 20_000, everyMs: 30_000 },
  deadlineMs: 5 * 60_000,
};

/** What the progress line shows. */
export interface FaultProgress {
  elapsedMs: number;
  accepted: number;
  /** Distinct messages the sandbox received. */
  delivered: number;
  /** From the last read of the status table. */
  sent: number;
  failed: number;
  pending: number;
  kills: number;
}

/** One SIGKILL: when (ms after the start), which instance, and the SMTP sessions it had open. */
export interface KillRecord {
  atMs: number;
  slot: number;
  pid: number;
  /** Client ports of its connections to the sandbox's SMTP server, read from /proc just before the kill (null: no /proc). */
  smtpPorts: number[] | null;
  /** Sandbox sessions that were open on it at the kill. */
  sessionsOpen: number;
  /** Duplicates whose first copy went out on one of those sessions: the 250-then-crash window. */
  duplicates: number;
}

/** A duplicate (a message received more than once) and the kill that explains it, if any. */
export interface DuplicateRecord {
  id: string;
  copies: number;
  /** Index into `kills` for each copy but the last; -1 where no kill explains it. */
  explainedBy: number[];
}

/** Everything the run measured. */
export interface FaultRunResult {
  scale: FaultScale;
  /** From the first POST until every accepted message is `sent` or `failed` (or the deadline). */
  wallMs: number;
  acceptMs: number;
  deadlineHit: boolean;
  requested: number;
  accepted: number;
  /** POSTs that had to be sent again (their instance was killed, or answered 5xx), with the same Idempotency-Key. */
  acceptRetries: number;
  statuses: Record<string, number>;
  sent: number;
  failed: number;
  failedByCode: Record<string, number>;
  /** One error message of each failure code, to tell what the reason says. */
  failureSamples: Record<string, string>;
  /** `failed` records with no error code, or `UNKNOWN`. */
  unclassifiedFailures: number;
  /**
   * `failed` records that did not first use up their retries (or the host's): every fault injected here is
   * transient, so each of these is a transient failure taken for a permanent one.
   */
  failedWithoutRetries: number;
  /** Accepted but no record, or recorded `sent` with no copy at the sandbox. */
  lost: number;
  lostIds: string[];
  /** Accepted and still queued, scheduled or sending at the end. */
  stuck: number;
  stuckIds: string[];
  /** Received by the sandbox but recorded `failed` (sent, then retried into failure). */
  deliveredButFailed: number;
  /** Records of messages that were never answered 202 (an accept that died and was not retried). */
  unacceptedRecords: number;
  received: number;
  duplicates: number;
  unexplainedDuplicates: number;
  duplicateDetails: DuplicateRecord[];
  kills: KillRecord[];
  duplicateRatePerKill: number;
  /** Transactions the sandbox saw (MAIL FROM commands and connections refused at the greeting). */
  transactions: number;
  injected: Record<ExchangeSmtpInjection['kind'], number>;
  /** Injected faults over transactions. */
  faultRate: number;
  forced432: number;
  rejections432: number;
  /** 432s the sandbox gave without being told to: the app's own pacing went over the session limit. */
  selfCaused432: number;
  connectionViolations: number;
  rateViolations: number;
  maxInAnyWindow: number;
  peakSessions: number;
  /** Key Vault requests answered 503, and replacement instances ready to serve while it was down. */
  keyVault503: number;
  restartsDuringKeyVaultOutage: number;
  entra5xx: number;
  entraBurstCount: number;
  maxAttempts: number;
  /** Every secret found in an output, as `source: which form of which secret` (never the value). */
  leaks: string[];
  scannedBytes: Record<string, number>;
  /** The end of each instance's log, for diagnosis when a figure is off. */
  logTails: string[];
}

/** Everything one output stream carried, kept whole so that it is scanned at the end against every secret issued. */
class OutputLog {
  readonly chunks: string[] = [];
  bytes = 0;

  feed(chunk: string): void {
    this.bytes += chunk.length;
    this.chunks.push(chunk);
  }

  tail(chars: number): string {
    return this.chunks.slice(-40).join('').slice(-chars);
  }
}

interface Worker {
  slot: number;
  child: ChildProcess;
  pid: number;
  url: string;
  log: OutputLog;
}

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

/** The scaled limits every instance runs with, over the sandbox's and Azurite's settings. */
function scaleSettings(scale: FaultScale): Settings {
  return {
    MAIL_RATE_PER_MINUTE: String(scale.ratePerWindow),
    MAIL_RATE_WINDOW_SECONDS: String(scale.windowMs / 1000),
    MAIL_DAILY_RECIPIENT_LIMIT: String(scale.dailyRecipients),
    MAIL_DAILY_WINDOW_SECONDS: String(scale.dailyWindowMs / 1000),
    MAIL_SEND_LEASE_SECONDS: String(scale.leaseSeconds),
    MAIL_RETRY_BACKOFF_SECONDS: String(scale.retryBackoffSeconds),
    MAIL_LOG_LEVEL: 'info',
  };
}

/** Environment of a child: this process's, minus credentials the Azure SDK would find on the machine. */
function childEnv(extra: Record<string, string>): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { ...process.env, ...extra };
  for (const key of [
    'AZURE_CLIENT_SECRET',
    'AZURE_TENANT_ID',
    'AZURE_CLIENT_CERTIFICATE_PATH',
    'AZURE_FEDERATED_TOKEN_FILE',
  ])
    delete env[key];
  return env;
}

/**
 * Runs the scenario at `scale` on a sandbox and Azurite of its own, and returns the figures. Every child process it
 * starts is stopped (or was killed) when it returns or throws, and on SIGINT/SIGTERM of this process.
 */
export async function runFaultScenario(
  scale: FaultScale,
  options: { onProgress?: (progress: FaultProgress) => void; progressEveryMs?: number } = {},
): Promise<FaultRunResult> {
  execFileSync(process.execPath, [path.join(ROOT, 'scripts/build.mjs')], { cwd: ROOT, stdio: 'ignore' });
  const services = await startServices({
    sandbox: {
      tokenLifetimeSeconds: scale.tokenLifetimeSeconds,
      smtpLimits: {
        ratePerMinute: scale.ratePerWindow,
        rateWindowMs: scale.windowMs,
        dailyRecipients: scale.dailyRecipients,
        dailyWindowMs: scale.dailyWindowMs,
        maxConnectionsPerMailbox: 3,
      },
    },
  });
  const { sandbox, azurite } = services;
  const children = new Set<ChildProcess>();
  const killAll = () => {
    for (const child of children) if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  };
  // Interrupted (Ctrl-C): no finally runs, so the instances and this run's Azurite go now; then the signal goes on.
  const onSignal = (signal: NodeJS.Signals) => {
    killAll();
    if (azurite.pid) process.kill(azurite.pid, 'SIGKILL');
    process.kill(process.pid, signal);
  };
  process.on('exit', killAll);
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  let rt: AppServices | undefined;
  try {
    const settings = appSettings(services, scaleSettings(scale));
    rt = createAppServices(settings, { logger: createLogger({ level: 'error', write: () => {} }) });
    await rt.storage.ensureResources();
    return await runOn(sandbox, rt, settings, scale, children, options);
  } finally {
    killAll();
    process.off('exit', killAll);
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    await rt?.close();
    await services.close();
  }
}

async function runOn(
  sandbox: Sandbox,
  rt: AppServices,
  settings: Record<string, string>,
  scale: FaultScale,
  children: Set<ChildProcess>,
  options: { onProgress?: (progress: FaultProgress) => void; progressEveryMs?: number },
): Promise<FaultRunResult> {
  const smtp = sandbox.smtp;
  const mailbox = rt.config.sender;
  const functionKey = randomBytes(24).toString('base64url');
  const runId = randomBytes(4).toString('hex');
  const workerEnv = childEnv({
    ...settings,
    TEST_FUNCTION_KEY: functionKey,
    TEST_MESSAGE_LEASE_SECONDS: String(scale.queueHoldSeconds),
  });
  const allLogs: OutputLog[] = [];
  const httpAnswers = new OutputLog();

  const spawnWorker = (slot: number): Promise<Worker> => {
    const child = spawn(process.execPath, ['--import', 'tsx', path.join(__dirname, '../programs/faultHostWorker.ts')], {
      cwd: ROOT,
      env: workerEnv,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    children.add(child);
    child.once('exit', () => children.delete(child));
    const log = new OutputLog();
    allLogs.push(log);
    child.stderr.on('data', (chunk: Buffer) => log.feed(chunk.toString()));
    return new Promise((resolve, reject) => {
      let out = '';
      const onData = (chunk: Buffer) => {
        const text = chunk.toString();
        log.feed(text);
        out += text;
        const line = out.split('\n').find((l) => l.includes('"event":"ready"'));
        if (!line) return;
        child.stdout.off('data', onData);
        child.stdout.on('data', (more: Buffer) => log.feed(more.toString()));
        const ready = JSON.parse(line) as { url: string; pid: number };
        resolve({ slot, child, pid: ready.pid, url: ready.url, log });
      };
      child.stdout.on('data', onData);
      child.once('exit', (code, signal) =>
        reject(new Error(`instance ${slot} exited (${code ?? signal}) before it was ready: ${log.tail(3_000)}`)),
      );
    });
  };

  const workers: Array<Worker | undefined> = await Promise.all(
    Array.from({ length: scale.workers }, (_, slot) => spawnWorker(slot)),
  );
  smtp.reset();
  const t0 = Date.now();
  const since = () => Date.now() - t0;
  const timers = new Set<NodeJS.Timeout>();
  const at = (ms: number, fn: () => void) => {
    const timer = setTimeout(
      () => {
        timers.delete(timer);
        fn();
      },
      Math.max(0, ms - since()),
    );
    timers.add(timer);
  };

  // --- Faults -------------------------------------------------------------------------------------------------
  // Shares of the injected faults; a fault knob is armed one use at a time whenever its kind is behind its share of
  // `faultFraction` of the transactions so far, so that faults spread over the run and over the instances.
  const shares = { reply421OnCommand: 0.25, reply421: 0.1, force432: 0.25, dropMidData: 0.2, delay: 0.2 } as const;
  const injected: Record<ExchangeSmtpInjection['kind'], number> = {
    reply421: 0,
    reply421OnCommand: 0,
    force432: 0,
    logonFailure430: 0,
    dropMidData: 0,
    delay: 0,
  };
  let injectedSeen = 0;
  let delayBurst = false;
  let faultsOn = true;
  const verbs = ['MAIL', 'RCPT', 'DATA'];
  const controller = setInterval(() => {
    for (; injectedSeen < smtp.injected.length; injectedSeen++) injected[smtp.injected[injectedSeen]!.kind]++;
    if (!faultsOn) return;
    const transactions = smtp.mailCommands + injected.reply421;
    // One transaction of lookahead, so that faults start early; no more, or a thin tail would meet them all at once.
    const due = (kind: keyof typeof shares) => injected[kind] < shares[kind] * scale.faultFraction * (transactions + 1);
    const f = smtp.faults;
    if (f.reply421OnCommand === 0 && due('reply421OnCommand')) {
      f.reply421Command = verbs[Math.floor(Math.random() * verbs.length)];
      f.reply421OnCommand = 1;
    }
    if (f.reply421 === 0 && due('reply421')) f.reply421 = 1;
    if (f.force432 === 0 && due('force432')) f.force432 = 1;
    if (f.dropMidData === 0 && due('dropMidData')) f.dropMidData = 1;
    if (!delayBurst && due('delay')) {
      delayBurst = true;
      f.delayMs = scale.delay.ms;
      const timer = setTimeout(() => {
        timers.delete(timer);
        f.delayMs = 0;
        delayBurst = false;
      }, scale.delay.burstMs);
      timers.add(timer);
    }
  }, 50);

  const outage = { from: scale.keyVaultOutage.atMs, to: scale.keyVaultOutage.atMs + scale.keyVaultOutage.durationMs };
  // Every authenticated request consumes one fault; more than can be used in the outage, cleared when it ends.
  at(outage.from, () => {
    for (let i = 0; i < 100_000; i++) sandbox.keyVault.faults.push({ kind: 'status', status: 503 });
  });
  at(outage.to, () => (sandbox.keyVault.faults.length = 0));
  let entraBurstCount = 0;
  const entraBurst = () => {
    if (!faultsOn) return;
    entraBurstCount++;
    const retryAfterSeconds = scale.entraBursts.retryAfterSeconds;
    for (let i = 0; i < 10_000; i++)
      sandbox.entra.faults.push({ kind: 'status', status: i % 2 ? 500 : 503, retryAfterSeconds });
    at(since() + scale.entraBursts.durationMs, () => (sandbox.entra.faults.length = 0));
    at(since() + scale.entraBursts.everyMs, entraBurst);
  };
  at(scale.entraBursts.firstAtMs, entraBurst);

  // --- Kills --------------------------------------------------------------------------------------------------
  const kills: Array<Omit<KillRecord, 'sessionsOpen' | 'duplicates'> & { at: number }> = [];
  let restartsDuringOutage = 0;
  let killing = true;
  /** A replacement that would not start: the run stops with it rather than carrying on short of an instance. */
  let fleetError: { error: unknown } | undefined;
  const killOne = async () => {
    if (!killing || kills.length >= scale.kills.max) return;
    at(since() + scale.kills.everyMs, () => void killOne().catch((error: unknown) => (fleetError = { error })));
    const slot = kills.length % scale.workers;
    const victim = workers[slot] ?? workers.find((w) => w !== undefined);
    if (!victim) return;
    workers[victim.slot] = undefined;
    const exited = new Promise<void>((resolve) => victim.child.once('exit', () => resolve()));
    const ports = connectionPortsOf(victim.pid, smtp.port);
    victim.child.kill('SIGKILL');
    const killedAt = Date.now();
    kills.push({ atMs: killedAt - t0, at: killedAt, slot: victim.slot, pid: victim.pid, smtpPorts: ports ?? null });
    await exited;
    if (!killing) return;
    for (let tries = 1; killing && !workers[victim.slot]; tries++) {
      workers[victim.slot] = await spawnWorker(victim.slot).catch((error: unknown) => {
        if (tries >= 3) throw error;
        return undefined;
      });
    }
    // It first reads Key Vault when it first sends, which is after it serves.
    const ready = since();
    if (ready >= outage.from && ready < outage.to) restartsDuringOutage++;
  };
  at(scale.kills.firstAtMs, () => void killOne().catch((error: unknown) => (fleetError = { error })));

  // --- Accept over HTTP ---------------------------------------------------------------------------------------
  const ids: string[] = [];
  let acceptRetries = 0;
  let acceptedCount = 0;
  const accept = async (i: number): Promise<void> => {
    const key = `fault-suite-${runId}-${i}`;
    const body = JSON.stringify({
      to: `reader${i}@example.com`,
      subject: `Fault suite ${i}`,
      text: `Message ${i} of the fault suite.`,
      idempotencyKey: key,
    });
    if (scale.acceptPerSecond > 0) await sleep(t0 + (i * 1000) / scale.acceptPerSecond - Date.now());
    for (let attempt = 0; ; attempt++) {
      const live = workers.filter((w): w is Worker => w !== undefined);
      const target = live[(i + attempt) % Math.max(1, live.length)];
      if (target) {
        try {
          const response = await fetch(`${target.url}/api/messages?code=${encodeURIComponent(functionKey)}`, {
            method: 'POST',
            headers: { 'content-type': 'application/json' },
            body,
            signal: AbortSignal.timeout(30_000),
          });
          const text = await response.text();
          httpAnswers.feed(text);
          if (response.status === 202) {
            ids[i] = (JSON.parse(text) as { id: string }).id;
            acceptedCount++;
            return;
          }
          if (response.status < 500) throw new Error(`POST /api/messages answered ${response.status}: ${text}`);
        } catch (error) {
          if (error instanceof Error && error.message.startsWith('POST /api/messages answered')) throw error;
          // The instance was killed under the request, or is stopping: the same key on another one.
        }
      }
      if (attempt >= 50) throw new Error(`message ${i} could not be accepted after ${attempt + 1} tries`);
      acceptRetries++;
      await sleep(250);
    }
  };

  // --- Progress and the end -----------------------------------------------------------------------------------
  let counts: Record<string, number> = {};
  const countStatuses = async (): Promise<Record<string, number>> => {
    const counted: Record<string, number> = {};
    const wanted = new Set(ids.filter(Boolean));
    for await (const row of rt.storage.statusTable.listEntities<{ status: string }>({
      queryOptions: { select: ['PartitionKey', 'status'] },
    })) {
      if (!wanted.has(row.partitionKey!)) continue;
      counted[row.status] = (counted[row.status] ?? 0) + 1;
    }
    return counted;
  };
  const delivered = new Set<string>();
  let deliveredSeen = 0;
  const idOf = (messageId: string | undefined) => /^<([^@>]+)@/.exec(messageId ?? '')?.[1];
  const progress = (): FaultProgress => {
    for (; deliveredSeen < smtp.messages.length; deliveredSeen++) {
      const id = idOf(smtp.messages[deliveredSeen]!.parsed.messageId);
      if (id) delivered.add(id);
    }
    const sent = counts.sent ?? 0;
    const failed = counts.failed ?? 0;
    return {
      elapsedMs: since(),
      accepted: acceptedCount,
      delivered: delivered.size,
      sent,
      failed,
      pending: acceptedCount - sent - failed,
      kills: kills.length,
    };
  };
  const reporter = options.onProgress
    ? setInterval(() => options.onProgress!(progress()), options.progressEveryMs ?? 1_000)
    : undefined;

  // The status table is read (status only) all along: for the progress line, and to see the end.
  let polling = true;
  const poll = async () => {
    while (polling) {
      counts = await countStatuses().catch(() => counts);
      await sleep(scale.messages > 1_000 ? 10_000 : 2_000);
    }
  };
  const poller = poll();
  const until = async (done: () => boolean) => {
    while (!done()) await sleep(1_000);
  };
  let acceptMs = 0;
  let deadlineHit = false;
  let wallMs = 0;
  try {
    const indices = Array.from({ length: scale.messages }, (_, i) => i);
    let next = 0;
    await Promise.all(
      Array.from({ length: scale.acceptConcurrency }, async () => {
        while (next < indices.length) await accept(indices[next++]!);
      }),
    );
    acceptMs = since();
    await until(() => {
      if (fleetError) throw fleetError.error;
      return (counts.sent ?? 0) + (counts.failed ?? 0) >= acceptedCount || since() > scale.deadlineMs;
    });
    deadlineHit = (counts.sent ?? 0) + (counts.failed ?? 0) < acceptedCount;
    polling = false;
    wallMs = since();
    // Copies still in flight (a take-over racing a slow send) land within a lease.
    killing = false;
    await sleep(scale.leaseSeconds * 1000 + 2_000);
  } finally {
    killing = false;
    faultsOn = false;
    polling = false;
    await poller;
    clearInterval(controller);
    if (reporter) clearInterval(reporter);
    for (const timer of timers) clearTimeout(timer);
    Object.assign(smtp.faults, { reply421: 0, reply421OnCommand: 0, force432: 0, dropMidData: 0, delayMs: 0 });
    sandbox.keyVault.faults.length = 0;
    sandbox.entra.faults.length = 0;
    await Promise.all(
      workers.map(async (w) => {
        if (!w || w.child.exitCode !== null || w.child.signalCode !== null) return;
        const exited = new Promise<void>((resolve) => w.child.once('exit', () => resolve()));
        w.child.kill('SIGTERM');
        const timer = setTimeout(() => w.child.kill('SIGKILL'), 10_000);
        await exited;
        clearTimeout(timer);
      }),
    );
  }
  for (; injectedSeen < smtp.injected.length; injectedSeen++) injected[smtp.injected[injectedSeen]!.kind]++;
  options.onProgress?.(progress());

  // --- What happened ------------------------------------------------------------------------------------------
  const records = new Map<string, StoredRecord>();
  for await (const page of rt.status.createdBefore(Date.now() + 60_000, 1_000))
    for (const record of page) records.set(record.id, record);
  const accepted = new Set(ids.filter(Boolean));
  const copies = new Map<string, typeof smtp.messages>();
  for (const message of smtp.messages) {
    const id = idOf(message.parsed.messageId);
    if (!id) continue;
    const list = copies.get(id) ?? [];
    list.push(message);
    copies.set(id, list);
  }
  const statuses: Record<string, number> = {};
  const failedByCode: Record<string, number> = {};
  const failureSamples: Record<string, string> = {};
  const lostIds: string[] = [];
  const stuckIds: string[] = [];
  let unclassifiedFailures = 0;
  let failedWithoutRetries = 0;
  let deliveredButFailed = 0;
  let maxAttempts = 0;
  for (const id of accepted) {
    const record = records.get(id);
    const status = record?.status ?? 'missing';
    statuses[status] = (statuses[status] ?? 0) + 1;
    if (!record || (status === 'sent' && !copies.has(id))) lostIds.push(id);
    else if (!TERMINAL_STATUSES.has(record.status)) stuckIds.push(id);
    if (record) maxAttempts = Math.max(maxAttempts, record.attempts);
    if (status === 'failed') {
      const code = record?.error?.code ?? 'none';
      failedByCode[code] = (failedByCode[code] ?? 0) + 1;
      failureSamples[code] ??= record?.error?.message ?? '';
      if (code === 'none' || code === 'UNKNOWN') unclassifiedFailures++;
      const gaveUp =
        code === 'RETRIES_EXHAUSTED' ||
        code === 'POISON_MESSAGE' ||
        /^retries exhausted/.test(record?.error?.message ?? '');
      if (!gaveUp) failedWithoutRetries++;
      if (copies.has(id)) deliveredButFailed++;
    }
  }
  const unacceptedRecords = [...records.keys()].filter((id) => !accepted.has(id)).length;

  // Sessions open on each killed instance at its kill: by client port where /proc told us, else by timing (open at
  // the kill and closed within a second of it without QUIT).
  const sessionsAtKill = kills.map((kill) =>
    smtp.sessions.filter((s) => {
      const openAtKill = s.startedAt <= kill.at && (s.closedAt === undefined || s.closedAt >= kill.at - 5);
      if (!openAtKill) return false;
      if (kill.smtpPorts) return kill.smtpPorts.includes(s.remotePort);
      return (
        s.closedAt !== undefined && s.closedAt - kill.at < 1_000 && !s.transcript.some((l) => l.startsWith('C: QUIT'))
      );
    }),
  );
  const killedSession = new Map<string, number>();
  sessionsAtKill.forEach((sessions, k) => sessions.forEach((s) => killedSession.set(s.id, k)));
  const duplicateDetails: DuplicateRecord[] = [];
  const perKill = kills.map(() => 0);
  let duplicates = 0;
  let unexplainedDuplicates = 0;
  for (const [id, list] of copies) {
    if (list.length < 2) continue;
    const sorted = [...list].sort((a, b) => a.receivedAt - b.receivedAt);
    const explainedBy = sorted.slice(0, -1).map((copy, i) => {
      const k = killedSession.get(copy.sessionId);
      // The 250-then-crash window: Exchange had this copy before the kill, the next copy came after it.
      if (k === undefined) return -1;
      const kill = kills[k]!;
      return copy.receivedAt <= kill.at && sorted[i + 1]!.receivedAt > kill.at ? k : -1;
    });
    duplicates += list.length - 1;
    for (const k of explainedBy) {
      if (k < 0) unexplainedDuplicates++;
      else perKill[k]!++;
    }
    duplicateDetails.push({ id, copies: list.length, explainedBy });
  }

  // Scanned now, against every secret the sandbox holds at the end: the tokens issued during the run included.
  const scanner = secretScanner(sandbox.secrets());
  const outputs: Record<string, string[]> = {
    'host logs': allLogs.map((log) => log.chunks.join('')),
    'HTTP answers': [httpAnswers.chunks.join('')],
    'status records': [...records.values()].map((r) => JSON.stringify(r)),
    telemetry: sandbox.ingestion.rawBodies,
    'SMTP transcripts': smtp.sessions.map((s) => s.transcript.join('\n')),
    'SMTP messages': smtp.messages.map((m) => m.raw.toString('latin1')),
  };
  const scannedBytes: Record<string, number> = {};
  const leaks: string[] = [];
  for (const [source, texts] of Object.entries(outputs)) {
    scannedBytes[source] = texts.reduce((n, text) => n + text.length, 0);
    for (const leak of scanner.findAll({ [source]: texts })) leaks.push(`${leak.where}: ${leak.label} (${leak.form})`);
  }

  const forced432 = injected.force432;
  const rejections432 = smtp.rejections.filter((r) => r.code === 432).length;
  const transactions = smtp.mailCommands + injected.reply421;
  const injectedTotal = Object.values(injected).reduce((a, b) => a + b, 0);
  return {
    scale,
    wallMs,
    acceptMs,
    deadlineHit,
    requested: scale.messages,
    accepted: accepted.size,
    acceptRetries,
    statuses,
    sent: statuses.sent ?? 0,
    failed: statuses.failed ?? 0,
    failedByCode,
    failureSamples,
    unclassifiedFailures,
    failedWithoutRetries,
    lost: lostIds.length,
    lostIds: lostIds.slice(0, 20),
    stuck: stuckIds.length,
    stuckIds: stuckIds.slice(0, 20),
    deliveredButFailed,
    unacceptedRecords,
    received: smtp.messages.length,
    duplicates,
    unexplainedDuplicates,
    duplicateDetails,
    kills: kills.map((k, i) => ({
      atMs: k.atMs,
      slot: k.slot,
      pid: k.pid,
      smtpPorts: k.smtpPorts,
      sessionsOpen: sessionsAtKill[i]!.length,
      duplicates: perKill[i]!,
    })),
    duplicateRatePerKill: kills.length > 0 ? duplicates / kills.length : 0,
    transactions,
    injected,
    faultRate: transactions > 0 ? injectedTotal / transactions : 0,
    forced432,
    rejections432,
    selfCaused432: rejections432 - forced432,
    connectionViolations: smtp.violations.filter((v) => v.kind === 'connections').length,
    rateViolations: smtp.violations.filter((v) => v.kind === 'rate').length,
    maxInAnyWindow: smtp.maxInAnyWindow(mailbox),
    peakSessions: smtp.maxConcurrentSessions(mailbox),
    keyVault503: sandbox.keyVault.reads.filter((r) => r.status === 503).length,
    restartsDuringKeyVaultOutage: restartsDuringOutage,
    entra5xx: sandbox.entra.requests.filter((r) => (r.status ?? 0) >= 500).length,
    entraBurstCount,
    maxAttempts,
    leaks,
    scannedBytes,
    logTails: allLogs.slice(-scale.workers).map((l) => l.tail(3_000)),
  };
}
