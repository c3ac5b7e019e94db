/** A stand-in for `@azure/functions-core`, the module the Functions Node.js worker injects: it records what `@azure/functions` registers. */
import Module from 'node:module';
import path from 'node:path';

/** One binding as `@azure/functions` describes it to the worker (`toCoreFunctionMetadata`). */
export interface RpcBindingInfo {
  type: string;
  direction?: 'in' | 'out' | 'inout';
  name?: string;
  [property: string]: unknown;
}

/** What `registerFunction` receives: the function name and its bindings, keyed by binding name (`$return` for the return value). */
export interface FunctionMetadata {
  name: string;
  bindings: Record<string, RpcBindingInfo>;
  retryOptions?: unknown;
}

/** The user's handler, exactly as passed to `app.http(...)` and friends. */
export type FunctionCallback = (...args: unknown[]) => unknown;

/** RPC typed data (the worker's wire format for values). */
export interface RpcTypedData {
  string?: string;
  json?: string;
  bytes?: Uint8Array;
  int?: number;
  double?: number;
  http?: RpcHttpData;
}

export interface RpcHttpCookie {
  name?: string;
  value?: string;
  domain?: { value?: string };
  path?: { value?: string };
  expires?: { value?: { seconds?: number } };
  secure?: { value?: boolean };
  httpOnly?: { value?: boolean };
  sameSite?: string;
  maxAge?: { value?: number };
}

export interface RpcHttpData {
  method?: string;
  url?: string;
  headers?: Record<string, string>;
  query?: Record<string, string>;
  params?: Record<string, string>;
  body?: RpcTypedData;
  statusCode?: string;
  cookies?: RpcHttpCookie[];
}

export interface RpcInvocationRequest {
  invocationId: string;
  functionId: string;
  inputData: Array<{ name: string; data: RpcTypedData }>;
  triggerMetadata: Record<string, RpcTypedData>;
  traceContext?: { traceParent?: string; traceState?: string; attributes?: Record<string, string> };
  retryContext?: { retryCount: number; maxRetryCount: number };
}

export interface RpcInvocationResponse {
  invocationId?: string;
  outputData?: Array<{ name: string; data?: RpcTypedData | null }>;
  returnValue?: RpcTypedData | null;
}

export type LogLevel = 'trace' | 'debug' | 'information' | 'warning' | 'error' | 'critical' | 'none';
export type LogCategory = 'user' | 'system' | 'customMetric';

/** The worker's per-invocation context, which the programming model turns into arguments for the handler. */
export interface CoreInvocationContext {
  invocationId: string;
  request: RpcInvocationRequest;
  metadata: FunctionMetadata;
  state?: 'preInvocationHooks' | 'postInvocationHooks' | 'invocation';
  log(level: LogLevel, category: LogCategory, message: string): void;
}

export interface InvocationModel {
  getArguments(): Promise<{ context: unknown; inputs: unknown[] }>;
  invokeFunction(context: unknown, inputs: unknown[], handler: FunctionCallback): Promise<unknown>;
  getResponse(context: unknown, result: unknown): Promise<RpcInvocationResponse>;
}

/** What `@azure/functions` passes to `setProgrammingModel`: the code that converts RPC data to handler arguments and back. */
export interface ProgrammingModel {
  name: string;
  version: string;
  getInvocationModel(coreCtx: CoreInvocationContext): InvocationModel;
  getCapabilities?(capabilities: Record<string, string>): Promise<Record<string, string>>;
}

export type HookName = 'appStart' | 'appTerminate' | 'preInvocation' | 'postInvocation' | 'log';
export type HookCallback = (context: Record<string, unknown>) => unknown;

/** Same contract as the worker's `Disposable`. */
export class Disposable {
  static from(...items: Array<{ dispose(): unknown }>): Disposable {
    return new Disposable(() => items.forEach((item) => item.dispose()));
  }
  #callOnDispose: (() => unknown) | undefined;
  constructor(callOnDispose: () => unknown) {
    this.#callOnDispose = callOnDispose;
  }
  dispose(): unknown {
    const call = this.#callOnDispose;
    this.#callOnDispose = undefined;
    return call?.();
  }
}

/** Everything one load of an app entry registered. */
export interface Registrations {
  functions: Array<{ metadata: FunctionMetadata; callback: FunctionCallback }>;
  programmingModel: ProgrammingModel | undefined;
  hooks: Map<HookName, Set<HookCallback>>;
}

/** The module id the worker answers for `require('@azure/functions-core')`. */
export const FUNCTIONS_CORE_MODULE = '@azure/functions-core';

let capturing: Registrations | undefined;
// A library instance sets its programming model once per process; remember it for later loads that reuse that instance.
let lastProgrammingModel: ProgrammingModel | undefined;

/** Writes worker system logs of warning and above to stderr, as the host's console shows them. */
let systemLog: (level: LogLevel, message: string) => void = (level, message) => {
  if (level === 'warning' || level === 'error' || level === 'critical') process.stderr.write(`[worker] ${message}\n`);
};

/** The API object `require('@azure/functions-core')` returns (shape of the worker's `types-core`). */
export const functionsCore = {
  version: '3.10.1-dev',
  setProgrammingModel(programmingModel: ProgrammingModel): void {
    lastProgrammingModel = programmingModel;
    if (capturing) capturing.programmingModel = programmingModel;
  },
  getProgrammingModel(): ProgrammingModel | undefined {
    return capturing?.programmingModel ?? lastProgrammingModel;
  },
  registerFunction(metadata: FunctionMetadata, callback: FunctionCallback): Disposable {
    const registry = capturing;
    // The worker refuses registrations after start-up too: the host reads the function list once.
    if (!registry) throw new Error('A function can only be registered during app startup.');
    if (registry.functions.some((f) => f.metadata.name.toLowerCase() === metadata.name.toLowerCase())) {
      throw new Error(`A function with the name "${metadata.name}" has already been registered.`);
    }
    const entry = { metadata, callback };
    registry.functions.push(entry);
    return new Disposable(() => registry.functions.splice(registry.functions.indexOf(entry), 1));
  },
  registerHook(hookName: HookName, callback: HookCallback): Disposable {
    const registry = capturing;
    if (!registry) throw new Error(`A "${hookName}" hook can only be registered during app startup in the dev host.`);
    const set = registry.hooks.get(hookName) ?? new Set<HookCallback>();
    registry.hooks.set(hookName, set);
    set.add(callback);
    return new Disposable(() => set.delete(callback));
  },
  log(level: LogLevel, _category: LogCategory, message: string): void {
    systemLog(level, message);
  },
  Disposable,
};

/** Where `dev/functionsCoreModule.cjs` finds the API. */
const GLOBAL_KEY = Symbol.for('m365-mailer.dev.functionsCore');
const MODULE_FILE = path.join(__dirname, 'functionsCoreModule.cjs');
let installed = false;

/**
 * Makes `require('@azure/functions-core')` return {@link functionsCore} in this process, as the worker does.
 * Idempotent. Must run before anything loads `@azure/functions`, which looks the module up once and otherwise stays in test mode.
 */
export function installFunctionsCore(): void {
  (globalThis as Record<symbol, unknown>)[GLOBAL_KEY] = functionsCore;
  if (installed) return;
  installed = true;
  const patched = Module as unknown as { _resolveFilename: (request: string, ...rest: unknown[]) => string };
  const original = patched._resolveFilename;
  patched._resolveFilename = function resolveFilename(this: unknown, request: string, ...rest: unknown[]) {
    if (request === FUNCTIONS_CORE_MODULE) return MODULE_FILE;
    return original.call(this, request, ...rest);
  };
}

/** Runs `load` (which requires an app entry) and returns what it registered. Loads do not nest. */
export function captureRegistrations(load: () => void): Registrations {
  if (capturing) throw new Error('Another app entry is being loaded');
  installFunctionsCore();
  const registry: Registrations = { functions: [], programmingModel: undefined, hooks: new Map() };
  capturing = registry;
  try {
    load();
  } finally {
    capturing = undefined;
  }
  registry.programmingModel ??= lastProgrammingModel;
  return registry;
}

/** Replaces where worker system logs go (tests). */
export function setSystemLog(write: (level: LogLevel, message: string) => void): void {
  systemLog = write;
}
