/** Invokes a registered function the way the Node.js worker does: through the app's own programming model, with hooks, logs and a trace context. */
import { randomUUID } from 'node:crypto';
import { format } from 'node:util';
import type {
  CoreInvocationContext,
  HookCallback,
  HookName,
  LogCategory,
  LogLevel,
  ProgrammingModel,
  Registrations,
  RpcInvocationResponse,
  RpcTypedData,
} from './functionsCore';
import type { DevFunction } from './registrations';
import { childTraceParent } from './traceContext';

export interface InvocationInput {
  /** The trigger's value in RPC form (what the host sends as input data). */
  trigger: RpcTypedData;
  triggerMetadata?: Record<string, RpcTypedData>;
  /** An incoming W3C traceparent; the invocation becomes its child span (a fresh trace when absent or invalid). */
  traceParent?: string | undefined;
}

/** A JSON POST to `url` as the host hands it to an HTTP trigger (the request's RPC form). */
export function jsonPostInput(url: string, json: string): InvocationInput {
  return {
    trigger: {
      http: {
        method: 'POST',
        url,
        headers: { 'content-type': 'application/json', 'content-length': String(Buffer.byteLength(json)) },
        query: {},
        params: {},
        body: { bytes: Buffer.from(json) },
      },
    },
  };
}

export type LogWriter = (line: string) => void;

/** Runs invocations and tracks the ones in flight, so that stopping can wait for them. */
export class Invoker {
  readonly #programmingModel: ProgrammingModel;
  readonly #hooks: Map<HookName, Set<HookCallback>>;
  readonly #write: LogWriter;
  readonly #appHookData: Record<string, unknown> = {};
  readonly #inFlight = new Set<Promise<unknown>>();

  constructor(registrations: Registrations, write: LogWriter) {
    if (!registrations.programmingModel) {
      throw new Error('The app entry registered functions but no programming model; is @azure/functions v4 loaded?');
    }
    this.#programmingModel = registrations.programmingModel;
    this.#hooks = registrations.hooks;
    this.#write = write;
  }

  /** Capabilities as the worker reports them to the host (this also locks `app.setup`). */
  async capabilities(): Promise<Record<string, string>> {
    return (await this.#programmingModel.getCapabilities?.({})) ?? {};
  }

  async appStart(functionAppDirectory: string): Promise<void> {
    await this.#runHooks('appStart', { hookData: {}, appHookData: this.#appHookData, functionAppDirectory });
  }

  async appTerminate(): Promise<void> {
    await this.#runHooks('appTerminate', { hookData: {}, appHookData: this.#appHookData });
  }

  /** Waits for every invocation that has started. */
  async drain(): Promise<void> {
    while (this.#inFlight.size > 0) await Promise.allSettled([...this.#inFlight]);
  }

  /** Invokes `fn`; rejects with the handler's error (which the caller maps to a 500 or a retry). */
  invoke(fn: DevFunction, input: InvocationInput): Promise<RpcInvocationResponse> {
    const run = this.#invoke(fn, input);
    this.#inFlight.add(run);
    const forget = () => this.#inFlight.delete(run);
    run.then(forget, forget);
    return run;
  }

  log(functionName: string, level: LogLevel, message: string): void {
    const label = level === 'information' ? '' : ` ${level}`;
    this.#write(`[${new Date().toISOString()}] [${functionName}${label}] ${message}`);
  }

  async #invoke(fn: DevFunction, input: InvocationInput): Promise<RpcInvocationResponse> {
    const invocationId = randomUUID();
    const coreCtx: CoreInvocationContext = {
      invocationId,
      metadata: fn.metadata,
      request: {
        invocationId,
        functionId: fn.name,
        inputData: [{ name: fn.triggerName, data: input.trigger }],
        triggerMetadata: input.triggerMetadata ?? {},
        traceContext: { traceParent: childTraceParent(input.traceParent), traceState: '', attributes: {} },
      },
      log: (level: LogLevel, category: LogCategory, message: string) => {
        if (category === 'system' && level !== 'warning' && level !== 'error' && level !== 'critical') return;
        this.log(fn.name, level, message);
      },
    };
    const model = this.#programmingModel.getInvocationModel(coreCtx);
    const { context, inputs: rawInputs } = await model.getArguments();
    const hookData: Record<string, unknown> = {};
    const pre = {
      hookData,
      appHookData: this.#appHookData,
      invocationContext: context,
      functionCallback: fn.callback,
      inputs: rawInputs,
    };
    coreCtx.state = 'preInvocationHooks';
    await this.#runHooks('preInvocation', pre);
    coreCtx.state = 'invocation';
    const started = Date.now();
    this.log(fn.name, 'information', `Executing (Id=${invocationId})`);
    let result: unknown;
    let error: unknown;
    try {
      result = await model.invokeFunction(context, pre.inputs, pre.functionCallback);
    } catch (caught) {
      error = caught;
    }
    const post = {
      hookData,
      appHookData: this.#appHookData,
      invocationContext: context,
      inputs: pre.inputs,
      result,
      error,
    };
    coreCtx.state = 'postInvocationHooks';
    await this.#runHooks('postInvocation', post);
    delete coreCtx.state;
    const elapsed = Date.now() - started;
    if (post.error !== undefined && post.error !== null) {
      const reason = post.error instanceof Error ? (post.error.stack ?? post.error.message) : format(post.error);
      this.log(fn.name, 'error', `Failed (Id=${invocationId}, Duration=${elapsed}ms)\n${reason}`);
      // eslint-disable-next-line @typescript-eslint/only-throw-error -- the function's (or a hook's) error, unchanged, as the host rethrows it
      throw post.error;
    }
    this.log(fn.name, 'information', `Succeeded (Id=${invocationId}, Duration=${elapsed}ms)`);
    return model.getResponse(context, post.result);
  }

  async #runHooks(name: HookName, context: Record<string, unknown>): Promise<void> {
    for (const hook of this.#hooks.get(name) ?? []) await hook(context);
  }
}
