/** The W3C trace context the dev host gives each invocation, as the Functions host's activity does. */
import { randomBytes } from 'node:crypto';

/** The longest `traceparent` header looked at; a version-00 value is 55 characters. */
const MAX_TRACEPARENT_CHARS = 512;
/** Fixed-width fields, anchored, no nested quantifier: linear in the (bounded) input. */
const TRACEPARENT = /^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?$/;
const ALL_ZERO = /^0+$/;

/** The trace id and flags of an incoming `traceparent`, or undefined when it is absent or not valid W3C Trace Context. */
export function parentTrace(header: string | undefined): { traceId: string; flags: string } | undefined {
  if (header === undefined || header.length > MAX_TRACEPARENT_CHARS) return undefined;
  // Optional whitespace around a header value is not part of it; anything else must match exactly (lower-case hex).
  const match = TRACEPARENT.exec(header.trim());
  if (!match) return undefined;
  const [, version, traceId, spanId, flags, rest] = match as unknown as [
    string,
    string,
    string,
    string,
    string,
    string?,
  ];
  // Version ff is invalid; version 00 has exactly four fields; a later version may append fields after a '-'.
  if (version === 'ff' || (version === '00' && rest !== undefined)) return undefined;
  if (ALL_ZERO.test(traceId) || ALL_ZERO.test(spanId)) return undefined;
  return { traceId, flags };
}

/**
 * A version-00 traceparent for a new span: in the caller's trace when `parent` is a valid traceparent (same trace id,
 * new span id, its flags), else in a fresh trace. Queue and timer invocations, which have no caller, get a fresh one.
 */
export function childTraceParent(parent?: string): string {
  const trace = parentTrace(parent);
  return `00-${trace?.traceId ?? randomId(16)}-${randomId(8)}-${trace?.flags ?? '01'}`;
}

/** Random bytes as lower-case hex, never all zeros (an invalid id). */
function randomId(bytes: number): string {
  for (;;) {
    const id = randomBytes(bytes).toString('hex');
    if (!ALL_ZERO.test(id)) return id;
  }
}
