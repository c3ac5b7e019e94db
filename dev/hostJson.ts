/** Reads the host.json settings the dev host honours (queues, HTTP route prefix), with the real host's defaults. */
import { existsSync, readFileSync } from 'node:fs';

/** Queue trigger settings (host.json `extensions.queues`), durations in milliseconds. */
export interface QueueSettings {
  batchSize: number;
  newBatchThreshold: number;
  maxDequeueCount: number;
  visibilityTimeoutMs: number;
  maxPollingIntervalMs: number;
  messageEncoding: 'base64' | 'none';
}

export interface HostSettings {
  queues: QueueSettings;
  http: { routePrefix: string };
}

// The Storage Queues extension's defaults (Microsoft.Azure.WebJobs.Extensions.Storage.Queues 5.x).
const DEFAULT_BATCH_SIZE = 16;
const MAX_BATCH_SIZE = 32;
const DEFAULT_MAX_DEQUEUE_COUNT = 5;
const DEFAULT_MAX_POLLING_INTERVAL_MS = 60_000;
const DEFAULT_ROUTE_PREFIX = 'api';

/** Parses a .NET TimeSpan (`hh:mm:ss`, `d.hh:mm:ss`, `hh:mm:ss.fff`) or a number of milliseconds. */
export function parseTimeSpan(value: unknown, setting: string): number {
  if (typeof value === 'number' && Number.isFinite(value) && value >= 0) return value;
  const match =
    typeof value === 'string' ? /^(?:(\d+)\.)?(\d{1,2}):(\d{1,2}):(\d{1,2}(?:\.\d+)?)$/.exec(value.trim()) : null;
  if (!match)
    throw new Error(`host.json: ${setting} must be a TimeSpan such as "00:00:30" (got ${JSON.stringify(value)})`);
  const [, days = '0', hours = '0', minutes = '0', seconds = '0'] = match;
  return Math.round(((Number(days) * 24 + Number(hours)) * 60 + Number(minutes)) * 60_000 + Number(seconds) * 1000);
}

function integer(value: unknown, setting: string, fallback: number, min: number, max: number): number {
  if (value === undefined || value === null) return fallback;
  if (typeof value !== 'number' || !Number.isInteger(value) || value < min || value > max) {
    throw new Error(`host.json: ${setting} must be an integer from ${min} to ${max} (got ${JSON.stringify(value)})`);
  }
  return value;
}

/** Reads `file` (absent means all defaults) and applies the host's defaults. */
export function readHostJson(file: string | undefined): HostSettings {
  const json: Record<string, unknown> =
    file && existsSync(file) ? (JSON.parse(readFileSync(file, 'utf8')) as Record<string, unknown>) : {};
  const extensions = (json.extensions ?? {}) as Record<string, Record<string, unknown> | undefined>;
  const queues = extensions.queues ?? {};
  const http = extensions.http ?? {};

  const batchSize = integer(queues.batchSize, 'extensions.queues.batchSize', DEFAULT_BATCH_SIZE, 1, MAX_BATCH_SIZE);
  const encoding = queues.messageEncoding ?? 'base64';
  if (encoding !== 'base64' && encoding !== 'none') {
    throw new Error(`host.json: extensions.queues.messageEncoding must be "base64" or "none"`);
  }
  const routePrefix = http.routePrefix ?? DEFAULT_ROUTE_PREFIX;
  if (typeof routePrefix !== 'string') throw new Error('host.json: extensions.http.routePrefix must be a string');
  return {
    queues: {
      batchSize,
      newBatchThreshold: integer(
        queues.newBatchThreshold,
        'extensions.queues.newBatchThreshold',
        Math.floor(batchSize / 2),
        0,
        Number.MAX_SAFE_INTEGER,
      ),
      maxDequeueCount: integer(
        queues.maxDequeueCount,
        'extensions.queues.maxDequeueCount',
        DEFAULT_MAX_DEQUEUE_COUNT,
        1,
        Number.MAX_SAFE_INTEGER,
      ),
      visibilityTimeoutMs:
        queues.visibilityTimeout === undefined ? 0 : parseTimeSpan(queues.visibilityTimeout, 'visibilityTimeout'),
      maxPollingIntervalMs:
        queues.maxPollingInterval === undefined
          ? DEFAULT_MAX_POLLING_INTERVAL_MS
          : parseTimeSpan(queues.maxPollingInterval, 'maxPollingInterval'),
      messageEncoding: encoding,
    },
    http: { routePrefix: routePrefix.replace(/^\/+|\/+$/g, '') },
  };
}
