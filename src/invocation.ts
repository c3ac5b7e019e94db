/** The Functions invocation a piece of work runs in: the ids its telemetry is joined by, and the logger its lines go to. */
import { createLogger, type LevelSink, type Logger } from './logger';
import type { Redactor } from './redact';

/**
 * What a trigger knows of its invocation, handed to the core so that events and log lines belong to it. Every field
 * is optional: the CLI and tests run the core outside any invocation.
 */
export interface Invocation {
  /** `InvocationContext.invocationId`: the host's own invocation id (`InvocationId` in its `requests` and `traces`). */
  invocationId?: string | undefined;
  /**
   * `InvocationContext.traceContext.traceParent`: a W3C traceparent. Its trace id is the operation id (`operation_Id`)
   * of the host's request and dependency telemetry for this invocation, and its span id the request's id.
   */
  traceParent?: string | undefined;
  /** The invocation's logger (`context.log`/`warn`/`error`, redacted); absent: the process logger. */
  logger?: Logger | undefined;
}

/** The parts of a W3C traceparent (`version-traceid-parentid-flags`), all lower-case hex. */
export interface TraceParent {
  version: string;
  traceId: string;
  spanId: string;
  flags: string;
}

/** Longest header value looked at: a version-00 traceparent is 55 characters, later versions may append fields. */
const MAX_TRACEPARENT_CHARS = 512;
/** Fixed-width fields, anchored, no nested quantifier: linear in the (already bounded) input. */
const TRACEPARENT = /^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?$/;
const ALL_ZERO = /^0+$/;

/**
 * Parses a W3C traceparent strictly (Trace Context level 1): lower-case hex only, version `ff` invalid, version `00`
 * exactly 55 characters, trace id and parent id not all zeros; a later version may carry more fields after a `-`.
 * Anything else (absent, upper-case, malformed, too long) is undefined: the caller starts a fresh trace.
 */
export function parseTraceParent(value: unknown): TraceParent | undefined {
  if (typeof value !== 'string' || value.length > MAX_TRACEPARENT_CHARS) return undefined;
  const match = TRACEPARENT.exec(value.trim());
  if (!match) return undefined;
  const [, version, traceId, spanId, flags, rest] = match as unknown as [
    string,
    string,
    string,
    string,
    string,
    string?,
  ];
  if (version === 'ff' || (version === '00' && rest !== undefined)) return undefined;
  if (ALL_ZERO.test(traceId) || ALL_ZERO.test(spanId)) return undefined;
  return { version, traceId, spanId, flags };
}

/** The operation id (trace id) of a traceparent, or undefined when it is not a valid one. */
export function operationIdOf(traceParent: unknown): string | undefined {
  return parseTraceParent(traceParent)?.traceId;
}

/** The invocation's fields a telemetry event carries: its invocation id, and its traceparent for `operation_Id`. */
export function invocationTelemetry(invocation: Invocation | undefined): {
  invocationId?: string;
  traceParent?: string;
} {
  return {
    ...(invocation?.invocationId ? { invocationId: invocation.invocationId } : {}),
    ...(invocation?.traceParent ? { traceParent: invocation.traceParent } : {}),
  };
}

/** The logger for work in `invocation`: its own when it has one, else `fallback` (the process logger). */
export function invocationLogger(invocation: Invocation | undefined, fallback: Logger): Logger {
  return invocation?.logger ?? fallback;
}

/** What a trigger hands over: the invocation's ids and its context's log methods, before the app's redactor is known. */
export interface TriggerInvocation {
  invocationId?: string | undefined;
  traceParent?: string | undefined;
  /** The context's log methods by level; lines written through them belong to the invocation. */
  log?: LevelSink | undefined;
}

/** The Invocation of a trigger: its ids, and a logger writing redacted lines to its context. */
export function invocationFrom(trigger: TriggerInvocation | undefined, redactor: Redactor): Invocation {
  return {
    ...invocationTelemetry(trigger),
    ...(trigger?.log ? { logger: createLogger({ component: 'm365-mailer', redactor, sink: trigger.log }) } : {}),
  };
}
