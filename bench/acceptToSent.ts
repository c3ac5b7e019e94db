/**
 * Accept to sent: messages posted one at a time to the dev host (the built bundle, host.json's queue polling), each
 * waited for until it is `sent`, with the rate limit far away. Figures: p50 and p99 of 202 → sent, split into the
 * wait for the queue trigger (polling), the delivery to Exchange, and the status write.
 */
import path from 'node:path';
import { startDevHost } from '../dev/host';
import { Progress } from '../dev/progress';
import type { Sandbox } from '../sandbox';

/** What the figures are held to. */
export const ACCEPT_TO_SENT_TARGETS = { p50Ms: 2_000, p99Ms: 5_000 } as const;

export interface LatencyStats {
  p50Ms: number;
  p99Ms: number;
  maxMs: number;
}

export interface AcceptToSentFigures {
  /** Messages sent back to back: each posted as soon as the one before it was sent. */
  messages: number;
  /** 202 answered → `sent` recorded (the record's sentAt, same machine clock). */
  acceptToSent: LatencyStats;
  /**
   * The parts: 202 → the queue trigger's invocation starts (polling); → Exchange's 250 (the sandbox's arrival time);
   * → sentAt, which the worker stamps on the 250 before it writes the record.
   */
  queueWait: LatencyStats;
  delivery: LatencyStats;
  statusWrite: LatencyStats;
  /** The POST itself, for comparison. */
  post: LatencyStats;
  /** Messages posted after the queue sat idle for `idleGapMs`: the polling back-off has reached its cap. */
  afterIdle: { messages: number; idleGapMs: number; acceptToSent: LatencyStats; queueWait: LatencyStats };
  /** The queue polling the dev host used: host.json's maxPollingInterval (capped for dev) and the first back-off. */
  polling: { maxPollingIntervalMs: number; devPollIntervalMs: number };
  targets: typeof ACCEPT_TO_SENT_TARGETS;
  verdict: 'PASS' | 'FALLS SHORT';
}

function percentile(values: number[], p: number): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))] ?? NaN;
}

function stats(values: number[]): LatencyStats {
  const r = (n: number) => Math.round(n);
  return { p50Ms: r(percentile(values, 50)), p99Ms: r(percentile(values, 99)), maxMs: r(Math.max(...values)) };
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** How long one message may take before the bench gives up on it (a lost message is a failure, not a slow figure). */
const MESSAGE_DEADLINE_MS = 60_000;
/** Between the sandbox's 250 and the status read: the record is written right after the 250. */
const STATUS_RETRY_MS = 20;

/**
 * Runs the bench on a dev host with `env` (the sandbox's settings and Azurite), the mailbox's rate limit raised so
 * that pacing always has a free slot. `sandbox` is the one `env` points at: its SMTP records tell when each message
 * reached Exchange, so that the status is read once after that instead of being polled.
 */
export async function runAcceptToSentBench(
  sandbox: Sandbox,
  env: Record<string, string>,
  options: { messages?: number; idleMessages?: number; idleGapMs?: number } = {},
): Promise<AcceptToSentFigures> {
  const messages = options.messages ?? 200;
  const idleMessages = options.idleMessages ?? 20;
  const idleGapMs = options.idleGapMs ?? 5_000;
  // Invocation starts, from the dev host's own log of invocations (one message in flight at a time, so in order).
  const deliverStarts: number[] = [];
  // Every host line, kept so that a message that does not arrive can be explained by its own lines.
  const hostLines: string[] = [];
  const host = await startDevHost({
    entry: path.resolve(__dirname, '../dist/functions/index.js'),
    // The app's info lines (one per message) would bury the progress line; warnings still show.
    env: {
      ...env,
      MAIL_RATE_PER_MINUTE: '100000',
      MAIL_DAILY_RECIPIENT_LIMIT: '1000000',
      MAIL_LOG_LEVEL: process.env.BENCH_LOG_LEVEL ?? 'warn',
    },
    port: 0,
    log: (line) => {
      hostLines.push(line);
      const match = /^\[([^\]]+)\] \[outboxDeliver\] Executing /.exec(line);
      if (match?.[1]) deliverStarts.push(Date.parse(match[1]));
    },
  });
  // Exchange's 250s, by outbox id (the Message-ID is <id@domain>).
  const arrivals = new Map<string, number>();
  const onMessage = (m: { parsed: { messageId?: string }; receivedAt: number }) => {
    const id = /^<?([^@>]+)@/.exec(m.parsed.messageId ?? '')?.[1];
    if (id) arrivals.set(id, m.receivedAt);
  };
  sandbox.smtp.on('message', onMessage);
  const key = host.functionKey;
  const base = `${host.url}/${host.routePrefix}`;

  /** Why message `id` is late: its status record and the host's lines that name it (ids only: no addresses). */
  const explain = async (id: string) => {
    const status = await fetch(`${base}/messages/${id}?code=${key}`, { signal: AbortSignal.timeout(10_000) }).then(
      (r) => r.text(),
      (error: unknown) => `unreadable (${error instanceof Error ? error.message : String(error)})`,
    );
    const lines = hostLines.filter((line) => line.includes(id)).slice(-20);
    return `status ${status}\nhost lines naming it:\n${lines.join('\n') || '(none)'}`;
  };

  const sendOne = async (i: number) => {
    const postedAt = Date.now();
    const startsBefore = deliverStarts.length;
    // Every request is bounded: a host (or an emulator) that stops answering is an error that says so, not a hang.
    const response = await fetch(`${base}/messages?code=${key}`, {
      signal: AbortSignal.timeout(MESSAGE_DEADLINE_MS),
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ to: `latency${i}@example.com`, subject: `Latency ${i}`, text: 'Accept-to-sent bench.' }),
    });
    const acceptedAt = Date.now();
    if (response.status !== 202) throw new Error(`POST answered ${response.status}: ${await response.text()}`);
    const { id } = (await response.json()) as { id: string };
    const deadline = postedAt + MESSAGE_DEADLINE_MS;
    while (!arrivals.has(id)) {
      if (Date.now() > deadline) {
        throw new Error(`message ${i} (${id}) did not reach the sandbox in time; ${await explain(id)}`);
      }
      await sleep(5);
    }
    let sentAt: number | undefined;
    while (sentAt === undefined) {
      const remaining = Math.max(1, deadline - Date.now());
      const status = (await (
        await fetch(`${base}/messages/${id}?code=${key}`, { signal: AbortSignal.timeout(remaining) })
      ).json()) as {
        status: string;
        sentAt?: string;
      };
      if (status.status === 'sent' && status.sentAt) sentAt = Date.parse(status.sentAt);
      else if (status.status === 'failed') throw new Error(`message ${i} failed: ${JSON.stringify(status)}`);
      else if (Date.now() > deadline) {
        throw new Error(`message ${i} (${id}) was not recorded sent in time; ${await explain(id)}`);
      } else await sleep(STATUS_RETRY_MS);
    }
    const arrivedAt = arrivals.get(id) as number;
    const startedAt = deliverStarts[startsBefore] ?? arrivedAt;
    return {
      post: acceptedAt - postedAt,
      acceptToSent: sentAt - acceptedAt,
      queueWait: startedAt - acceptedAt,
      delivery: arrivedAt - startedAt,
      statusWrite: sentAt - arrivedAt,
    };
  };

  try {
    // Warm-up: storage resources, the token, the first SMTP session, JIT.
    for (let i = 0; i < 5; i++) await sendOne(-1 - i);
    const samples: Array<Awaited<ReturnType<typeof sendOne>>> = [];
    const backToBack = new Progress({
      label: 'latency: one message at a time, 202 → sent',
      total: messages,
      unit: 'messages',
    });
    for (let i = 0; i < messages; i++) {
      samples.push(await sendOne(i));
      backToBack.update(i + 1, `last ${samples.at(-1)?.acceptToSent} ms`);
    }
    backToBack.done();
    const idle: typeof samples = [];
    const afterIdle = new Progress({
      label: `latency: after ${idleGapMs / 1000} s idle each`,
      total: idleMessages,
      unit: 'messages',
    });
    for (let i = 0; i < idleMessages; i++) {
      await sleep(idleGapMs);
      idle.push(await sendOne(messages + i));
      afterIdle.update(i + 1);
    }
    afterIdle.done();
    const pick = (list: typeof samples, k: keyof (typeof samples)[number]) => stats(list.map((s) => s[k]));
    const acceptToSent = pick(samples, 'acceptToSent');
    const ok = acceptToSent.p50Ms < ACCEPT_TO_SENT_TARGETS.p50Ms && acceptToSent.p99Ms < ACCEPT_TO_SENT_TARGETS.p99Ms;
    return {
      messages,
      acceptToSent,
      queueWait: pick(samples, 'queueWait'),
      delivery: pick(samples, 'delivery'),
      statusWrite: pick(samples, 'statusWrite'),
      post: pick(samples, 'post'),
      afterIdle: {
        messages: idleMessages,
        idleGapMs,
        acceptToSent: pick(idle, 'acceptToSent'),
        queueWait: pick(idle, 'queueWait'),
      },
      polling: {
        maxPollingIntervalMs: host.settings.queues.maxPollingIntervalMs,
        devPollIntervalMs: Math.min(host.settings.queues.maxPollingIntervalMs, 2_000),
      },
      targets: ACCEPT_TO_SENT_TARGETS,
      verdict: ok ? 'PASS' : 'FALLS SHORT',
    };
  } finally {
    sandbox.smtp.off('message', onMessage);
    await host.stop();
  }
}
