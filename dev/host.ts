/** The dev host: loads the app entry the Functions host loads, captures its registrations and serves its HTTP, queue and timer triggers locally. */
import { randomBytes } from 'node:crypto';
import Module, { createRequire } from 'node:module';
import path from 'node:path';
import { require as tsxRequire } from 'tsx/cjs/api';
import { captureRegistrations, installFunctionsCore, type Registrations } from './functionsCore';
import { readHostJson, type HostSettings } from './hostJson';
import { requestBodyLimit, startHttpListener, type HttpFunction, type HttpListener } from './httpListener';
import { Invoker } from './invoker';
import { startQueueListener, storageConnectionString, type QueueListener } from './queueListener';
import { normalise, type DevFunction } from './registrations';
import { startTimerListener, type TimerListener } from './timerListener';

// `@azure/functions` looks for the core module once, when first used: be in place before any app code loads it.
installFunctionsCore();

/** The port `func start` uses. */
export const DEFAULT_PORT = 7071;
/** The longest wait between polls of an empty queue in dev (the host's default, 1 min, is too slow to work with). */
export const DEFAULT_DEV_POLL_INTERVAL_MS = 2_000;
const DEFAULT_BIND_HOST = '127.0.0.1';

export interface DevHostOptions {
  /** The app entry: package.json `main` (the esbuild bundle), or a TypeScript file, loaded through tsx. */
  entry: string;
  /**
   * App settings, applied to process.env before the entry loads (as the host applies local.settings.json); restored on
   * stop. The host reads `FUNCTIONS_REQUEST_BODY_SIZE_LIMIT` (bytes, default 100 MB) from them, as in Azure.
   */
  env?: Record<string, string | undefined>;
  /** Default 7071; 0 picks a free port. */
  port?: number;
  /** Interface to bind; default 127.0.0.1. */
  bindHost?: string;
  /** Default `host.json` in the working directory; a missing file means the host's defaults. */
  hostJsonPath?: string;
  /** The key for `function`/`admin` routes (`?code=` or `x-functions-key`); default random. */
  functionKey?: string;
  /** The longest wait between polls of an empty queue; default min(host.json maxPollingInterval, 2 s). */
  pollIntervalMs?: number;
  /**
   * How long a queue message stays hidden while its invocation runs (the host's 10 min): a process killed mid-run
   * leaves its messages hidden this long. Tests of killed instances shorten it.
   */
  messageLeaseSeconds?: number;
  /** Where invocation logs go; default stderr. */
  log?: (line: string) => void;
}

export interface DevHost {
  /** Base URL, e.g. http://127.0.0.1:7071 (HTTP functions live under `/<routePrefix>/`). */
  url: string;
  port: number;
  routePrefix: string;
  functionKey: string;
  /** Request bodies over this many bytes are answered 413 by the host, before the function runs. */
  maxRequestBodyBytes: number;
  /** The registrations captured from the entry, normalised. */
  functions: DevFunction[];
  settings: HostSettings;
  /** The full URL of an HTTP function (route template as registered). */
  functionUrl(name: string): string;
  /** Invokes a timer function now; rejects with the handler's error. */
  runTimer(name: string): Promise<void>;
  /** Makes every queue listener poll now. */
  wakeQueues(): void;
  /** Stops HTTP, queues and timers, waits for running invocations, runs appTerminate hooks. */
  stop(): Promise<void>;
}

function loadEntry(entry: string): { registrations: Registrations; loadedModules: () => string[] } {
  const cache = (Module as unknown as { _cache: Record<string, unknown> })._cache;
  const before = new Set(Object.keys(cache));
  const registrations = captureRegistrations(() => {
    if (/\.[cm]?tsx?$/.test(entry)) tsxRequire(entry, __filename);
    else createRequire(entry)(entry);
  });
  const atLoad = Object.keys(cache).filter((key) => !before.has(key));
  // The bundle loads dist/functions/sendPath.js on first use, after the entry: unloaded with it.
  const beside = path.dirname(entry) + path.sep;
  return {
    registrations,
    loadedModules: () => [
      ...new Set([...atLoad, ...Object.keys(cache).filter((key) => !before.has(key) && key.startsWith(beside))]),
    ],
  };
}

function applyEnv(env: Record<string, string | undefined>): () => void {
  const previous = new Map<string, string | undefined>();
  for (const [key, value] of Object.entries(env)) {
    previous.set(key, process.env[key]);
    if (value === undefined) delete process.env[key];
    else process.env[key] = value;
  }
  return () => {
    for (const [key, value] of previous) {
      if (value === undefined) delete process.env[key];
      else process.env[key] = value;
    }
  };
}

/** Starts the dev host for `options.entry`. Only one host loads an entry at a time in a process. */
export async function startDevHost(options: DevHostOptions): Promise<DevHost> {
  const write = options.log ?? ((line: string) => process.stderr.write(`${line}\n`));
  const settings = readHostJson(options.hostJsonPath ?? path.resolve('host.json'));
  const entry = path.resolve(options.entry);
  const restoreEnv = applyEnv(options.env ?? {});
  const cleanups: Array<() => Promise<void> | void> = [restoreEnv];
  const cleanUp = async () => {
    for (const step of cleanups.reverse()) await step();
    cleanups.length = 0;
  };

  try {
    const maxRequestBodyBytes = requestBodyLimit(process.env);
    const { registrations, loadedModules } = loadEntry(entry);
    // Unload what the entry loaded, so a later host in this process runs it (and its registrations) afresh.
    cleanups.splice(1, 0, () => {
      const cache = (Module as unknown as { _cache: Record<string, unknown> })._cache;
      for (const key of loadedModules()) delete cache[key];
    });
    if (registrations.functions.length === 0) {
      throw new Error(
        `${options.entry} registered no functions. Either it registers none, or @azure/functions was loaded before the dev host ` +
          '(it then stays in "test mode"): import dev/host before anything that imports @azure/functions.',
      );
    }
    const functions = registrations.functions.map((f) => normalise(f.metadata, f.callback, process.env));
    const invoker = new Invoker(registrations, write);
    const capabilities = await invoker.capabilities();
    if (capabilities.HttpUri) {
      throw new Error('app.setup({ enableHttpStream: true }) is not supported by the dev host yet');
    }
    for (const fn of functions) {
      if (fn.kind === 'unsupported') {
        invoker.log('host', 'warning', `Function "${fn.name}" (${fn.triggerType}) is not served by the dev host`);
      }
    }
    await invoker.appStart(path.dirname(entry));
    cleanups.push(() => invoker.appTerminate());
    cleanups.push(() => invoker.drain());

    const pollIntervalMs =
      options.pollIntervalMs ?? Math.min(settings.queues.maxPollingIntervalMs, DEFAULT_DEV_POLL_INTERVAL_MS);
    const queues: QueueListener[] = [];
    cleanups.push(async () => {
      await Promise.all(queues.map((q) => q.stop()));
    });
    for (const fn of functions) {
      if (fn.kind !== 'queue') continue;
      const connectionString = storageConnectionString(fn.connection, process.env);
      queues.push(
        await startQueueListener({
          fn,
          settings: settings.queues,
          connectionString,
          invoker,
          pollIntervalMs,
          ...(options.messageLeaseSeconds ? { messageLeaseSeconds: options.messageLeaseSeconds } : {}),
        }),
      );
    }

    const functionKey = options.functionKey ?? randomBytes(32).toString('base64url');
    const httpFunctions = functions.filter((fn): fn is HttpFunction => fn.kind === 'http');
    const http: HttpListener = await startHttpListener({
      functions: httpFunctions,
      routePrefix: settings.http.routePrefix,
      functionKey,
      invoker,
      port: options.port ?? DEFAULT_PORT,
      host: options.bindHost ?? DEFAULT_BIND_HOST,
      maxRequestBodyBytes,
    });
    cleanups.push(() => http.close());

    const timers = new Map<string, TimerListener>();
    cleanups.push(() => timers.forEach((t) => t.stop()));
    for (const fn of functions) {
      if (fn.kind === 'timer') timers.set(fn.name.toLowerCase(), startTimerListener(fn, invoker, process.env));
    }

    let stopping: Promise<void> | undefined;
    const prefix = settings.http.routePrefix ? `/${settings.http.routePrefix}` : '';
    return {
      url: http.url,
      port: http.port,
      routePrefix: settings.http.routePrefix,
      functionKey,
      maxRequestBodyBytes,
      functions,
      settings,
      functionUrl(name) {
        const fn = httpFunctions.find((f) => f.name.toLowerCase() === name.toLowerCase());
        if (!fn) throw new Error(`No HTTP function named "${name}"`);
        return `${http.url}${prefix}/${fn.route.replace(/^\/+/, '')}`;
      },
      runTimer(name) {
        const timer = timers.get(name.toLowerCase());
        if (!timer) throw new Error(`No timer function named "${name}"`);
        return timer.run();
      },
      wakeQueues: () => queues.forEach((q) => q.wake()),
      stop: () => (stopping ??= cleanUp()),
    };
  } catch (error) {
    await cleanUp();
    throw error;
  }
}
