/** Delivery throughput: the core sender vs raw pooled nodemailer with a fixed token vs the naive new-transport-and-token-per-message way. */
import { ConfidentialClientApplication } from '@azure/msal-node';
import { Progress } from '../dev/progress';
import nodemailer from 'nodemailer';
import { loadConfig } from '../src/config';
import { createMailer } from '../src/sender/senderServices';
import { parseMessage } from '../src/message';
import { Redactor } from '../src/redact';
import { noopTelemetry } from '../src/telemetry';
import { msalNetworkClient, trustedSecureContext } from '../src/sender/tlsTrust';
import { applySandboxEnv } from '../test/support/sandboxMailer';
import type { Sandbox } from '../sandbox';

export interface DeliveryFigures {
  messages: number;
  naiveMessages: number;
  rounds: number;
  coreSender: { msgPerSec: number; ms: number };
  rawPooled: { msgPerSec: number; ms: number };
  naive: { msgPerSec: number; ms: number };
  ratioCoreVsRaw: number;
  ratioCoreVsNaive: number;
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 ? (sorted[mid] as number) : ((sorted[mid - 1] as number) + (sorted[mid] as number)) / 2;
}

async function timed(run: () => Promise<unknown>): Promise<number> {
  const start = process.hrtime.bigint();
  await run();
  return Number(process.hrtime.bigint() - start) / 1e6;
}

/**
 * Runs the three ways side by side against one sandbox, interleaved for `rounds` rounds, and reports medians.
 * All three send the same small message with one recipient, over STARTTLS with XOAUTH2, 3 connections at most.
 */
export async function runDeliveryBench(
  sandbox: Sandbox,
  options: { messages?: number; naiveMessages?: number; rounds?: number } = {},
): Promise<DeliveryFigures> {
  const messages = options.messages ?? 2000;
  const naiveMessages = options.naiveMessages ?? 200;
  const rounds = options.rounds ?? 3;
  applySandboxEnv(sandbox);
  const settings = sandbox.settings();
  const config = loadConfig(settings);
  const input = { to: 'bench@example.com', subject: 'Benchmark', text: 'Throughput benchmark message body.' };
  const limits = { defaultFrom: config.sender, maxRecipients: 500, maxMessageBytes: config.limits.maxMessageBytes };
  const mail = parseMessage(input, limits);
  const plain = { from: config.sender, ...input, envelope: { from: config.sender, to: [input.to] } };
  // All three ways trust the sandbox CA through one TLS context built once, as Node's default trust store is in
  // production: a `ca` list instead would be parsed again for every connection (about 150 certificates), a cost that
  // only the sandbox's extra CA brings.
  const secureContext = trustedSecureContext(config.extraCaPem);
  const smtpOptions = {
    host: config.smtp.host,
    port: config.smtp.port,
    secure: false,
    requireTLS: true,
    tls: { secureContext },
    logger: false,
  };
  const msalConfig = () => ({
    auth: {
      clientId: sandbox.tenant.app.clientId,
      authority: `${sandbox.entra.url}/${sandbox.tenant.tenantId}`,
      knownAuthorities: [new URL(sandbox.entra.url).host],
      clientSecret: sandbox.tenant.app.secrets[0] as string,
    },
    system: { networkClient: msalNetworkClient(config.extraCaPem) },
  });
  const scopes = ['https://outlook.office365.com/.default'];

  const core = async () => {
    const mailer = createMailer(config, { telemetry: noopTelemetry, redactor: new Redactor() });
    try {
      await Promise.all(Array.from({ length: messages }, () => mailer.sender.send(mail, { source: 'cli' })));
    } finally {
      await mailer.close();
    }
  };

  const raw = async () => {
    const token = await new ConfidentialClientApplication(msalConfig()).acquireTokenByClientCredential({ scopes });
    const transport = nodemailer.createTransport({
      ...smtpOptions,
      pool: true,
      maxConnections: 3,
      maxMessages: 100,
      auth: { type: 'OAuth2', user: config.sender, accessToken: token?.accessToken as string },
    });
    try {
      await Promise.all(Array.from({ length: messages }, () => transport.sendMail(plain)));
    } finally {
      transport.close();
    }
  };

  const naive = async () => {
    // Three workers, each message on its own transport with its own token: what hand-rolled functions do.
    const queue = Array.from({ length: naiveMessages }, (_, i) => i);
    const worker = async () => {
      while (queue.shift() !== undefined) {
        const token = await new ConfidentialClientApplication(msalConfig()).acquireTokenByClientCredential({ scopes });
        const transport = nodemailer.createTransport({
          ...smtpOptions,
          auth: { type: 'OAuth2', user: config.sender, accessToken: token?.accessToken as string },
        });
        try {
          await transport.sendMail(plain);
        } finally {
          transport.close();
        }
      }
    };
    await Promise.all([worker(), worker(), worker()]);
  };

  // Warm-up: TLS session caches, JIT, MSAL discovery.
  // Messages sent, warm-up included: each way's run is one step of it.
  const progress = new Progress({
    label: 'delivery: core sender, raw pooled nodemailer, naive',
    total: 2 * messages + rounds * (2 * messages + naiveMessages),
    unit: 'messages',
  });
  progress.update(0, 'warm-up');
  await core();
  progress.tick(messages, 'warm-up');
  await raw();
  progress.tick(messages);
  sandbox.smtp.reset();

  const times = { core: [] as number[], raw: [] as number[], naive: [] as number[] };
  for (let round = 0; round < rounds; round++) {
    const label = `round ${round + 1}/${rounds}`;
    progress.update(progress.count, `${label}: raw`);
    times.raw.push(await timed(raw));
    progress.tick(messages, `${label}: core`);
    times.core.push(await timed(core));
    progress.tick(messages, `${label}: naive`);
    times.naive.push(await timed(naive));
    progress.tick(naiveMessages);
    sandbox.smtp.reset();
  }
  progress.done();
  const rate = (count: number, ms: number) => Math.round((count / ms) * 1000 * 10) / 10;
  const coreMs = median(times.core);
  const rawMs = median(times.raw);
  const naiveMs = median(times.naive);
  const coreRate = rate(messages, coreMs);
  const rawRate = rate(messages, rawMs);
  const naiveRate = rate(naiveMessages, naiveMs);
  return {
    messages,
    naiveMessages,
    rounds,
    coreSender: { msgPerSec: coreRate, ms: Math.round(coreMs) },
    rawPooled: { msgPerSec: rawRate, ms: Math.round(rawMs) },
    naive: { msgPerSec: naiveRate, ms: Math.round(naiveMs) },
    ratioCoreVsRaw: Math.round((coreRate / rawRate) * 100) / 100,
    ratioCoreVsNaive: Math.round((coreRate / naiveRate) * 10) / 10,
  };
}
