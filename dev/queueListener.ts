/** Listens to one storage queue with the Functions host's semantics: batches, leases, dequeueCount, retries with visibility, `<queue>-poison`. */
import { randomUUID } from 'node:crypto';
import { QueueServiceClient, type DequeuedMessageItem } from '@azure/storage-queue';
import type { QueueSettings } from './hostJson';
import type { Invoker } from './invoker';
import type { DevFunction } from './registrations';

export type QueueFunction = Extract<DevFunction, { kind: 'queue' }>;

/** The lease the host takes on a message it is processing (the extension's default visibility while running, 10 min). */
export const MESSAGE_LEASE_SECONDS = 600;
/**
 * The host's polling back-off (Storage Queues extension: QueuePollingIntervals.Minimum and
 * RandomizedExponentialBackoffStrategy): after a poll that found messages the next wait is 100 ms; each empty poll
 * then adds 100 ms × 2^(n-1), ±20 % at random, until maxPollingInterval, where it stays until a message is found.
 */
export const MIN_POLL_DELAY_MS = 100;
const POLL_RANDOMISATION = 0.2;

/** The waits between polls of one queue, as the host computes them. `random` is Math.random's shape (tests fix it). */
export class PollBackoff {
  #current: number;
  #exponent = 1;
  readonly #max: number;
  readonly #random: () => number;

  constructor(maxMs: number, random: () => number = Math.random) {
    this.#max = Math.max(MIN_POLL_DELAY_MS, maxMs);
    this.#current = MIN_POLL_DELAY_MS;
    this.#random = random;
  }

  /** The wait before the next poll, after an empty one; `foundSinceLastWait` resets it to the minimum. */
  next(foundSinceLastWait: boolean): number {
    if (foundSinceLastWait) {
      this.#current = MIN_POLL_DELAY_MS;
      this.#exponent = 1;
    } else if (this.#current !== this.#max) {
      const factor = 1 - POLL_RANDOMISATION + this.#random() * 2 * POLL_RANDOMISATION;
      const wait = MIN_POLL_DELAY_MS + factor * 2 ** (this.#exponent - 1) * MIN_POLL_DELAY_MS;
      if (wait < this.#max) {
        this.#current = wait;
        this.#exponent += 1;
      } else this.#current = this.#max;
    }
    return Math.round(this.#current);
  }
}
/** Azure Storage returns at most 32 messages per receive. */
const MAX_RECEIVE = 32;

export interface QueueListenerOptions {
  /** How long a received message stays hidden while its invocation runs (default MESSAGE_LEASE_SECONDS, as the host). */
  messageLeaseSeconds?: number;
  fn: QueueFunction;
  settings: QueueSettings;
  connectionString: string;
  invoker: Invoker;
  /** The longest wait between polls of an empty queue, in milliseconds. */
  pollIntervalMs: number;
}

export interface QueueListener {
  queueName: string;
  /** Polls now instead of waiting out the back-off. */
  wake(): void;
  stop(): Promise<void>;
}

/** Looks up a storage connection setting the way the host does: `<name>`, then `AzureWebJobs<name>`. */
export function storageConnectionString(name: string, env: NodeJS.ProcessEnv): string {
  const value = env[name] ?? env[`AzureWebJobs${name}`];
  if (value) return value;
  if (env[`${name}__queueServiceUri`] || env[`${name}__accountName`]) {
    throw new Error(
      `Storage connection "${name}" is identity-based; the dev host needs a connection string (Azurite).`,
    );
  }
  throw new Error(`Storage connection "${name}" is not set: set the app setting ${name} to a connection string.`);
}

const BASE64 = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;

/** Decodes a message body as the host does for `messageEncoding`; the worker then parses JSON text. */
export function decodeMessage(
  text: string,
  encoding: QueueSettings['messageEncoding'],
): { text: string; base64: boolean } {
  if (encoding === 'base64' && text.length > 0 && BASE64.test(text)) {
    const decoded = Buffer.from(text, 'base64');
    const utf8 = decoded.toString('utf8');
    if (Buffer.from(utf8, 'utf8').equals(decoded)) return { text: utf8, base64: true };
  }
  return { text, base64: false };
}

const json = (value: unknown) => ({ json: JSON.stringify(value) });

/** Starts polling `options.fn`'s queue (creating it if missing). */
export async function startQueueListener(options: QueueListenerOptions): Promise<QueueListener> {
  const { fn, settings, invoker } = options;
  const service = QueueServiceClient.fromConnectionString(options.connectionString);
  const queue = service.getQueueClient(fn.queueName);
  const poison = service.getQueueClient(`${fn.queueName}-poison`);
  await queue.createIfNotExists();

  let stopped = false;
  let wakeUp: (() => void) | undefined;
  const processing = new Set<Promise<void>>();
  const sleep = (ms: number) =>
    new Promise<void>((resolve) => {
      const timer = setTimeout(done, ms);
      function done() {
        clearTimeout(timer);
        wakeUp = undefined;
        resolve();
      }
      wakeUp = done;
    });
  const warn = (message: string) => invoker.log(fn.name, 'warning', message);

  const moveToPoison = async (message: DequeuedMessageItem, popReceipt: string) => {
    await poison.createIfNotExists();
    await poison.sendMessage(message.messageText);
    await queue.deleteMessage(message.messageId, popReceipt);
    warn(
      `Message ${message.messageId} has reached MaxDequeueCount of ${settings.maxDequeueCount}. Moving message to queue '${fn.queueName}-poison'.`,
    );
  };

  const handleMessage = async (message: DequeuedMessageItem) => {
    // A message already past the limit (e.g. its last attempt crashed the process) goes straight to poison.
    if (message.dequeueCount > settings.maxDequeueCount) return moveToPoison(message, message.popReceipt);
    const decoded = decodeMessage(message.messageText, settings.messageEncoding);
    if (settings.messageEncoding === 'base64' && !decoded.base64) {
      warn(
        `Message ${message.messageId} is not base64; the Functions host (messageEncoding "base64") would not accept it.`,
      );
    }
    const triggerMetadata = {
      Id: json(message.messageId),
      DequeueCount: json(message.dequeueCount),
      InsertionTime: json(message.insertedOn.toISOString()),
      ExpirationTime: json(message.expiresOn.toISOString()),
      NextVisibleTime: json(message.nextVisibleOn.toISOString()),
      PopReceipt: json(message.popReceipt),
      sys: json({ MethodName: fn.name, UtcNow: new Date().toISOString(), RandGuid: randomUUID() }),
    };
    try {
      await invoker.invoke(fn, { trigger: { string: decoded.text }, triggerMetadata });
    } catch {
      if (message.dequeueCount >= settings.maxDequeueCount) return moveToPoison(message, message.popReceipt);
      await queue.updateMessage(
        message.messageId,
        message.popReceipt,
        undefined,
        Math.round(settings.visibilityTimeoutMs / 1000),
      );
      return;
    }
    await queue.deleteMessage(message.messageId, message.popReceipt);
  };

  const loop = async () => {
    const backoff = new PollBackoff(options.pollIntervalMs);
    let found = false;
    while (!stopped) {
      // Like the host: fetch the next batch once the messages still running drop to newBatchThreshold.
      if (processing.size > settings.newBatchThreshold) {
        await Promise.race(processing);
        continue;
      }
      let messages: DequeuedMessageItem[];
      try {
        const received = await queue.receiveMessages({
          numberOfMessages: Math.min(settings.batchSize, MAX_RECEIVE),
          visibilityTimeout: options.messageLeaseSeconds ?? MESSAGE_LEASE_SECONDS,
        });
        messages = received.receivedMessageItems;
      } catch (error) {
        if (stopped) break;
        warn(`Polling queue '${fn.queueName}' failed: ${error instanceof Error ? error.message : String(error)}`);
        messages = [];
      }
      if (messages.length === 0) {
        await sleep(backoff.next(found));
        found = false;
        continue;
      }
      // Like the host: poll again at once (once the batch threshold allows), and wait the minimum after the next empty poll.
      found = true;
      for (const message of messages) {
        const run: Promise<void> = handleMessage(message)
          .catch((error: unknown) => {
            warn(
              `Completing message ${message.messageId} failed: ${error instanceof Error ? error.message : String(error)}`,
            );
          })
          .finally(() => processing.delete(run));
        processing.add(run);
      }
    }
  };
  const running = loop();

  return {
    queueName: fn.queueName,
    wake: () => wakeUp?.(),
    async stop() {
      stopped = true;
      wakeUp?.();
      await running;
      while (processing.size > 0) await Promise.allSettled([...processing]);
    },
  };
}
