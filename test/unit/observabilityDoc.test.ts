/** docs/observability.md names only what the app emits: its events table and every KQL query's fields and event names. */
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { MAIL_EVENT_NAMES, eventFields, type MailEventProperties } from '../../src/telemetry';

const DOC = readFileSync(path.resolve(__dirname, '../../docs/observability.md'), 'utf8');

/** Every field given: `Required` makes a new field of MailEventProperties fail to compile here until it is added. */
const EVERY_FIELD: Required<MailEventProperties> = {
  id: 'm',
  source: 'http',
  template: 't',
  batchId: 'b',
  attempt: 1,
  durationMs: 1,
  smtpCode: 432,
  smtpEnhancedCode: '4.3.2',
  errorCode: 'CONCURRENCY_LIMIT',
  transient: true,
  recipientCount: 1,
  refusedCount: 1,
  reason: 'rate',
  retryInSeconds: 1,
  stage: 'delivery',
  list: 'l',
  index: 0,
  digest: 'd',
  recipients: 1,
  items: 1,
  omitted: 1,
  invocationId: 'i',
  operationId: '0af7651916cd43dd8448eb211c80319c',
  acceptOperationId: '0af7651916cd43dd8448eb211c80319c',
  traceParent: '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01',
};
const EMITTED = eventFields(EVERY_FIELD);
const PROPERTIES = new Set(Object.keys(EMITTED.properties));
const MEASUREMENTS = new Set(Object.keys(EMITTED.measurements));
/** Accepted by eventFields, but no caller in the app passes it: the operation id goes in operation_Id instead. */
const NOT_EMITTED = new Set(['operationId']);
/** Dimensions the Functions host writes on its own `requests` and `traces` rows. */
const HOST_DIMENSIONS = new Set(['InvocationId']);

/** The rows of the Events table: event name, documented fields, and those marked as measurements (*m*). */
function eventsTable(): Array<{ event: string; fields: string[]; measurements: string[] }> {
  const section = DOC.slice(DOC.indexOf('## Events'), DOC.indexOf('## Queries'));
  return section
    .split('\n')
    .filter((line) => /^\| `[A-Z]/.test(line))
    .map((line) => {
      const [, name, , fieldsCell] = line.split('|').map((cell) => cell.trim());
      // Parentheses hold values (`rate`, `accept`), not fields.
      const cell = (fieldsCell ?? '').replace(/\([^)]*\)/g, '');
      const fields = [...cell.matchAll(/`(\w+)`/g)].map((m) => m[1] as string);
      const measurements = [...cell.matchAll(/`(\w+)` \*m\*/g)].map((m) => m[1] as string);
      return { event: (name ?? '').replace(/`/g, ''), fields, measurements };
    });
}

function kqlBlocks(): string[] {
  return [...DOC.matchAll(/```kql\n([\s\S]*?)```/g)].map((m) => m[1] as string);
}

describe('the events table', () => {
  const rows = eventsTable();

  it('has one row per event the app records, and no other', () => {
    expect(rows.map((r) => r.event).sort()).toEqual([...MAIL_EVENT_NAMES].sort());
  });

  it('lists only fields the app emits, measurements only where they are numbers, and every field emitted', () => {
    const documented = new Set(rows.flatMap((r) => r.fields));
    for (const row of rows) {
      for (const field of row.fields) expect(PROPERTIES, `${row.event}: ${field}`).toContain(field);
      for (const field of row.measurements) expect(MEASUREMENTS, `${row.event}: ${field} *m*`).toContain(field);
    }
    const undocumented = [...PROPERTIES].filter((f) => !documented.has(f) && !NOT_EMITTED.has(f));
    expect(undocumented).toEqual([]);
    // A measurement is always marked where its field is listed.
    for (const row of rows) {
      for (const field of row.fields) {
        if (MEASUREMENTS.has(field)) expect(row.measurements, `${row.event}: ${field}`).toContain(field);
      }
    }
  });
});

describe('the KQL queries', () => {
  const blocks = kqlBlocks();
  const documented = new Set(eventsTable().flatMap((r) => r.fields));
  const documentedMeasurements = new Set(eventsTable().flatMap((r) => r.measurements));

  it('are there: by outcome, by error code, throttling, rate, p95, a message’s story, events per invocation', () => {
    expect(blocks.length).toBe(7);
    expect(blocks.some((b) => b.includes('acceptOperationId') && b.includes('requests') && b.includes('traces'))).toBe(
      true,
    );
  });

  it.each(kqlBlocks().map((block, i) => [i + 1, block] as const))(
    'query %i references only emitted dimensions, measurements and event names',
    (_n, block) => {
      const dimensions = [...block.matchAll(/customDimensions(?:\.(\w+)|\["(\w+)"\])/g)].map(
        (m) => (m[1] ?? m[2]) as string,
      );
      const measurements = [...block.matchAll(/customMeasurements(?:\.(\w+)|\["(\w+)"\])/g)].map(
        (m) => (m[1] ?? m[2]) as string,
      );
      // Quoted PascalCase words are event names (function names and values are camelCase or lower-case).
      const eventNames = [...block.matchAll(/"([A-Z][A-Za-z]+)"/g)].map((m) => m[1] as string);
      expect(dimensions.length + measurements.length + eventNames.length).toBeGreaterThan(0);
      for (const d of dimensions)
        expect(documented.has(d) || HOST_DIMENSIONS.has(d), `customDimensions.${d}`).toBe(true);
      for (const m of measurements) expect(documentedMeasurements, `customMeasurements.${m}`).toContain(m);
      for (const e of eventNames) expect(MAIL_EVENT_NAMES as readonly string[], `event "${e}"`).toContain(e);
      // Bare references (`customDimensions` without a field) would dodge the checks above.
      expect(block.match(/customDimensions(?![.[])/g)).toBeNull();
      expect(block.match(/customMeasurements(?![.[])/g)).toBeNull();
    },
  );
});
