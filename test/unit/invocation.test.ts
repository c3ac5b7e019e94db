/** The invocation the core runs in: strict W3C traceparent parsing (app and dev host), the invocation logger, acceptOperationId. */
import { describe, expect, it } from 'vitest';
import { childTraceParent, parentTrace } from '../../dev/traceContext';
import { invocationFrom, invocationTelemetry, operationIdOf, parseTraceParent } from '../../src/invocation';
import { scrubAddresses, type LogLevel } from '../../src/logger';
import { Redactor } from '../../src/redact';
import { eventFields } from '../../src/telemetry';

const TRACE = '0af7651916cd43dd8448eb211c80319c';
const SPAN = 'b7ad6b7169203331';
const VALID = `00-${TRACE}-${SPAN}-01`;

/** Valid W3C Trace Context level 1 values, and what must be refused, with why. */
const INVALID: Array<[string, string]> = [
  ['upper-case hex', `00-${TRACE.toUpperCase()}-${SPAN}-01`],
  ['all-zero trace id', `00-${'0'.repeat(32)}-${SPAN}-01`],
  ['all-zero parent id', `00-${TRACE}-${'0'.repeat(16)}-01`],
  ['version ff', `ff-${TRACE}-${SPAN}-01`],
  ['version 00 with a fifth field', `00-${TRACE}-${SPAN}-01-00`],
  ['a short trace id', `00-${TRACE.slice(1)}-${SPAN}-01`],
  ['a long parent id', `00-${TRACE}-${SPAN}0-01`],
  ['a one-digit flags field', `00-${TRACE}-${SPAN}-1`],
  ['no separators', `00${TRACE}${SPAN}01`],
  ['a non-hex digit', `00-${TRACE.slice(0, 31)}g-${SPAN}-01`],
  ['two values joined (a repeated header)', `${VALID}, ${VALID}`],
  ['empty', ''],
  ['far too long', `${VALID}-${'a'.repeat(600)}`],
];

describe('parseTraceParent (the app) and parentTrace (the dev host) agree, strictly', () => {
  it('takes a version-00 traceparent, with surrounding whitespace, and a later version with more fields', () => {
    expect(parseTraceParent(VALID)).toEqual({ version: '00', traceId: TRACE, spanId: SPAN, flags: '01' });
    expect(parseTraceParent(` ${VALID} `)?.traceId).toBe(TRACE);
    expect(parseTraceParent(`01-${TRACE}-${SPAN}-00-future`)).toEqual({
      version: '01',
      traceId: TRACE,
      spanId: SPAN,
      flags: '00',
    });
    expect(parentTrace(VALID)).toEqual({ traceId: TRACE, flags: '01' });
    expect(parentTrace(`01-${TRACE}-${SPAN}-00-future`)).toEqual({ traceId: TRACE, flags: '00' });
    expect(operationIdOf(VALID)).toBe(TRACE);
  });

  it.each(INVALID)('refuses %s', (_why, value) => {
    expect(parseTraceParent(value)).toBeUndefined();
    expect(parentTrace(value)).toBeUndefined();
    expect(operationIdOf(value)).toBeUndefined();
  });

  it('refuses what is not a string', () => {
    for (const value of [undefined, null, 42, {}, [VALID]]) expect(parseTraceParent(value)).toBeUndefined();
    expect(parentTrace(undefined)).toBeUndefined();
  });

  it('answers in linear time on long hostile input (no backtracking)', () => {
    const hostile = [
      `00-${TRACE}-${SPAN}-01-${'-'.repeat(500)}`,
      `00-${'0-'.repeat(250)}`,
      '0'.repeat(1_000_000),
      `00-${TRACE}-${SPAN}-01${'-0'.repeat(200)}`,
    ];
    const started = performance.now();
    for (let i = 0; i < 200; i++) {
      for (const value of hostile) {
        parseTraceParent(value);
        parentTrace(value);
      }
    }
    expect(performance.now() - started).toBeLessThan(500);
  });
});

describe('childTraceParent: the span the dev host gives an invocation', () => {
  it('a child of a valid caller: same trace id and flags, a new span id', () => {
    const child = childTraceParent(`00-${TRACE}-${SPAN}-00`);
    expect(child).toMatch(new RegExp(`^00-${TRACE}-[0-9a-f]{16}-00$`));
    expect(child).not.toContain(SPAN);
    expect(parseTraceParent(child)?.traceId).toBe(TRACE);
  });

  it('a fresh, valid trace for no caller or an invalid one, different each time', () => {
    const fresh = [undefined, ...INVALID.map(([, value]) => value)].map((parent) => childTraceParent(parent));
    for (const value of fresh) {
      const parsed = parseTraceParent(value);
      expect(parsed, value).toBeDefined();
      expect(parsed?.traceId).not.toBe(TRACE);
      expect(parsed?.traceId).not.toBe('0'.repeat(32));
    }
    expect(new Set(fresh.map((value) => parseTraceParent(value)?.traceId)).size).toBe(fresh.length);
  });
});

describe('invocationFrom: the logger and ids of a trigger', () => {
  it('writes each level to the context’s method of that level, redacted, without a second timestamp', () => {
    const redactor = new Redactor();
    redactor.add('a-secret-value-from-key-vault');
    const written: Array<[LogLevel, string]> = [];
    const sink = {
      debug: (line: string) => written.push(['debug', line]),
      info: (line: string) => written.push(['info', line]),
      warn: (line: string) => written.push(['warn', line]),
      error: (line: string) => written.push(['error', line]),
    };
    const invocation = invocationFrom({ invocationId: 'inv-1', traceParent: VALID, log: sink }, redactor);
    expect(invocationTelemetry(invocation)).toEqual({ invocationId: 'inv-1', traceParent: VALID });
    invocation.logger?.warn('storage said a-secret-value-from-key-vault', { code: 'X' });
    invocation.logger?.error('failed', { token: 'Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.sig' });
    invocation.logger?.info('fine');
    expect(written).toEqual([
      ['warn', 'm365-mailer: storage said [redacted] {"code":"X"}'],
      ['error', 'm365-mailer: failed {"token":"Bearer [redacted]"}'],
      ['info', 'm365-mailer: fine'],
    ]);
  });

  it('has no logger without the context’s log methods, and no ids it was not given', () => {
    expect(invocationFrom(undefined, new Redactor())).toEqual({});
    expect(invocationFrom({ invocationId: 'x' }, new Redactor())).toEqual({ invocationId: 'x' });
  });
});

describe('scrubAddresses: no address in a log line', () => {
  it('replaces every address in an Exchange reply, and leaves what is not one', () => {
    expect(
      scrubAddresses(
        'mail failed {"smtp":"550 5.2.252 SendAsDenied; alerts@contoso.com not allowed to send as billing@contoso.com."}',
      ),
    ).toBe('mail failed {"smtp":"550 5.2.252 SendAsDenied; [address] not allowed to send as [address]."}');
    expect(scrubAddresses('Recipient a.b+tag@sub.example.co.uk not found')).toBe('Recipient [address] not found');
    expect(scrubAddresses('no address here; @ alone, user@localhost, @example.com, x@.com')).toBe(
      'no address here; @ alone, user@localhost, @example.com, x@.com',
    );
  });

  it('runs in linear time on hostile input', () => {
    const hostile = [
      'a'.repeat(200_000) + '@',
      'a@'.repeat(100_000),
      '.@.'.repeat(60_000),
      `a@${'b.'.repeat(100_000)}`,
    ];
    const started = performance.now();
    for (const text of hostile) scrubAddresses(text);
    // A quadratic scan of these would take minutes; a linear one takes well under a second even on a busy machine.
    expect(performance.now() - started).toBeLessThan(2_000);
  });
});

describe('acceptOperationId on an event', () => {
  it('is recorded as a property when it is a trace id, lower-cased; anything else is left out', () => {
    expect(eventFields({ acceptOperationId: TRACE }).properties).toEqual({ acceptOperationId: TRACE });
    expect(eventFields({ acceptOperationId: TRACE.toUpperCase() }).properties).toEqual({ acceptOperationId: TRACE });
    for (const bad of ['0'.repeat(32), 'someone@example.com', TRACE.slice(1), VALID, 42]) {
      expect(eventFields({ acceptOperationId: bad as string }).properties).toEqual({});
    }
  });

  it('smtpEnhancedCode is recorded only as an enhanced status code', () => {
    expect(eventFields({ smtpEnhancedCode: '4.7.500' }).properties).toEqual({ smtpEnhancedCode: '4.7.500' });
    for (const bad of ['4.7', '432', '4.7.500 text', 'x@example.com']) {
      expect(eventFields({ smtpEnhancedCode: bad }).properties).toEqual({});
    }
  });

  it('the traceparent itself is never a property: it becomes the operation id and parent', () => {
    expect(eventFields({ traceParent: VALID, invocationId: 'inv' }).properties).toEqual({ invocationId: 'inv' });
  });
});
