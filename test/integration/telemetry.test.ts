/** Telemetry reaches a local ingestion capture as Application Insights custom events and metrics, and nothing else does. */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readdirSync, rmSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { createCertificateAuthority, type CertificateAuthority } from '../../sandbox/ca';
import { startIngestionCapture, type IngestionCapture } from '../../sandbox/ingestion';
import {
  createTelemetry,
  noopTelemetry,
  validateConnectionString,
  type MailEventProperties,
  type Telemetry,
  type TelemetryOptions,
} from '../../src/telemetry';
import { secretScanner } from '../support/secretScan';

/** Every outbound socket this test process opens, so that "no host but the ingestion endpoint" is checked, not assumed. */
const connections: string[] = [];
// eslint-disable-next-line @typescript-eslint/unbound-method -- put back afterwards, and called with its socket (apply)
const originalConnect = net.Socket.prototype.connect;

let ca: CertificateAuthority;
let capture: IngestionCapture;
const started: Telemetry[] = [];

function telemetry(options: Partial<TelemetryOptions> = {}): Telemetry {
  const t = createTelemetry({ connectionString: capture.connectionString, extraCaPem: ca.certPem, ...options });
  started.push(t);
  return t;
}

beforeAll(async () => {
  net.Socket.prototype.connect = function (this: net.Socket, ...args: unknown[]) {
    const first = Array.isArray(args[0]) ? (args[0] as unknown[])[0] : args[0];
    const target =
      first && typeof first === 'object'
        ? (first as { host?: string; path?: string; port?: number })
        : { port: Number(first) };
    connections.push(target.path ?? `${target.host ?? 'localhost'}:${target.port}`);
    return (originalConnect as (...a: unknown[]) => net.Socket).apply(this, args);
  };
  ca = createCertificateAuthority('telemetry test CA');
  capture = await startIngestionCapture({ ca });
});

afterAll(async () => {
  await Promise.allSettled(started.map((t) => t.shutdown()));
  await capture?.close();
  net.Socket.prototype.connect = originalConnect;
});

beforeEach(() => capture.reset());

describe('custom events and the duration metric reach the ingestion endpoint', () => {
  it('MailSent arrives as a customEvents item with the exact properties and measurements, and mail.send.duration as a metric', async () => {
    const t = telemetry({ roleName: 'mailer-test' });
    expect(t.enabled).toBe(true);
    t.trackEvent('MailSent', {
      id: 'msg-1',
      source: 'http',
      template: 'order-shipped',
      batchId: 'batch-7',
      attempt: 2,
      durationMs: 123.4,
      smtpCode: 250,
      transient: false,
      recipientCount: 3,
      invocationId: 'inv-42',
      traceParent: '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01',
    });
    t.trackDuration(123.4, { source: 'http', template: 'order-shipped', outcome: 'sent' });
    t.trackDuration(76.6, { source: 'http', template: 'order-shipped', outcome: 'sent' });
    await t.flush();

    // flush() resolves after the ingestion endpoint answered: no waiting needed, but waitFor proves it either way.
    expect(await capture.waitFor((items) => items.some((i) => i.data.baseData.name === 'MailSent'), 5_000)).toBe(true);
    const events = capture.events('MailSent');
    expect(events).toHaveLength(1);
    const event = events[0]!;
    expect(event.properties).toEqual({
      id: 'msg-1',
      source: 'http',
      template: 'order-shipped',
      batchId: 'batch-7',
      attempt: '2',
      durationMs: '123',
      smtpCode: '250',
      transient: 'false',
      recipientCount: '3',
      invocationId: 'inv-42',
    });
    expect(event.measurements).toEqual({ attempt: 2, durationMs: 123, recipientCount: 3 });

    const item = capture.items.find((i) => i.data.baseType === 'EventData')!;
    expect(item.name).toBe('Microsoft.ApplicationInsights.Event');
    expect(item.iKey).toBe(capture.instrumentationKey);
    expect(item.path).toBe('/v2.1/track');
    expect(Date.parse(item.time)).toBeGreaterThan(Date.now() - 60_000);
    // Correlated with the Functions invocation through its traceparent.
    expect(item.tags['ai.operation.id']).toBe('0af7651916cd43dd8448eb211c80319c');
    expect(item.tags['ai.operation.parentId']).toBe('b7ad6b7169203331');
    expect(item.tags['ai.cloud.role']).toBe('mailer-test');

    const metrics = capture.metrics('mail.send.duration');
    expect(metrics).toHaveLength(1);
    expect(metrics[0]).toMatchObject({
      value: 200,
      count: 2,
      min: 76.6,
      max: 123.4,
      properties: { source: 'http', template: 'order-shipped', outcome: 'sent' },
    });
    expect(capture.items.find((i) => i.data.baseType === 'MetricData')?.name).toBe(
      'Microsoft.ApplicationInsights.Metric',
    );
  });

  it('every event name goes out as a custom event; events buffered before the exporter loads keep their order', async () => {
    const t = telemetry();
    t.trackEvent('MailFailed', {
      id: 'f',
      source: 'notification',
      errorCode: 'SMTP_AUTH_DISABLED',
      transient: false,
      smtpCode: 535,
    });
    t.trackEvent('MailDeferred', { id: 'd', source: 'notification', errorCode: 'RATE_LIMITED', transient: true });
    t.trackEvent('BatchAccepted', { batchId: 'b', source: 'notification', recipientCount: 10_000 });
    t.trackEvent('MailPaced', { id: 'p', source: 'http', template: 'welcome', reason: 'rate', retryInSeconds: 5 });
    t.trackEvent('MailSent', { id: 's', source: 'cli' });
    await t.flush();
    expect(capture.events().map((e) => e.name)).toEqual([
      'MailFailed',
      'MailDeferred',
      'BatchAccepted',
      'MailPaced',
      'MailSent',
    ]);
    expect(capture.events('MailFailed')[0]?.properties).toMatchObject({
      errorCode: 'SMTP_AUTH_DISABLED',
      transient: 'false',
      smtpCode: '535',
    });
    expect(capture.events('MailDeferred')[0]?.properties.transient).toBe('true');
    expect(capture.events('BatchAccepted')[0]?.measurements).toEqual({ recipientCount: 10_000 });
  });

  it('only allow-listed fields reach the wire: addresses, subjects, bodies and tokens passed in never do', async () => {
    const t = telemetry();
    const secrets = {
      to: 'private.person@example.com',
      subject: 'Quarterly salary review',
      text: 'body text that must stay private',
      token: 'eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl',
      password: 'hunter2-app-password',
      headers: { Authorization: 'Bearer abc.def.ghi' },
    };
    t.trackEvent('MailSent', { id: 'leak-check', source: 'http', ...(secrets as object) });
    // Allow-listed fields misused to carry an address or a token are replaced, not recorded.
    t.trackEvent('MailFailed', { id: 'someone@example.org', errorCode: secrets.token, batchId: 'ok-batch' });
    t.trackDuration(5, { source: 'http', outcome: 'sent', ...({ to: secrets.to } as object) });
    await t.flush();

    const wire = capture.rawBodies.join('\n');
    expect(wire).toContain('leak-check');
    // Each value in every encoding (JSON-escaped, base64 at any offset, URL-encoded), not only as written.
    const scan = secretScanner([
      { kind: 'address', label: 'to', value: secrets.to },
      { kind: 'subject', label: 'subject', value: secrets.subject },
      { kind: 'body', label: 'text', value: secrets.text },
      { kind: 'access-token', label: 'token', value: secrets.token },
      { kind: 'app-password', label: 'password', value: secrets.password },
      { kind: 'bearer', label: 'Authorization header', value: 'Bearer abc' },
      { kind: 'address', label: 'id misused for an address', value: 'someone@example.org' },
    ]);
    expect(scan.findAll({ telemetry: capture.rawBodies })).toEqual([]);
    expect(wire).not.toMatch(/"(to|subject|text|token|password|headers)"/);
    expect(capture.events('MailSent')[0]?.properties).toEqual({ id: 'leak-check', source: 'http' });
    expect(capture.events('MailFailed')[0]?.properties).toEqual({
      id: '[redacted]',
      errorCode: '[redacted]',
      batchId: 'ok-batch',
    });
    expect(capture.metrics('mail.send.duration')[0]?.properties).toEqual({ source: 'http', outcome: 'sent' });
  });
});

describe('failure never reaches the caller', () => {
  it('without a connection string telemetry is a no-op that loads nothing and never throws', async () => {
    for (const cs of [undefined, '', '   ']) {
      const t = createTelemetry({ connectionString: cs });
      expect(t).toBe(noopTelemetry);
      expect(t.enabled).toBe(false);
      expect(() => t.trackEvent('MailSent', { id: 'x' })).not.toThrow();
      expect(() => t.trackDuration(1)).not.toThrow();
      await expect(t.flush()).resolves.toBeUndefined();
      await expect(t.shutdown()).resolves.toBeUndefined();
    }
  });

  it('ingestion answering 503 (or 500) does not throw into trackEvent or flush; once it recovers events arrive again', async () => {
    const errors: unknown[] = [];
    // No retries inside the HTTP pipeline, so the 503s reach the exporter itself.
    const t = telemetry({ retry: { maxRetries: 0 }, onError: (e) => errors.push(e) });
    capture.failNext(2, 503);
    expect(() => t.trackEvent('MailSent', { id: 'during-outage', source: 'http' })).not.toThrow();
    await expect(t.flush()).resolves.toBeUndefined();
    capture.failNext(1, 500);
    t.trackEvent('MailSent', { id: 'during-outage-2', source: 'http' });
    await expect(t.flush()).resolves.toBeUndefined();
    expect(capture.requests.map((r) => r.status)).toEqual([503, 500]);
    expect(capture.events()).toHaveLength(0);
    // The exporter drops these silently (offline storage is off); onError is told.
    expect(errors.map(String)).toEqual([
      expect.stringContaining('answered 503'),
      expect.stringContaining('answered 500'),
    ]);
    // The rejected posts were still on the wire: secret scanning covers them too.
    expect(capture.rawBodies.join('\n')).toContain('during-outage');

    t.trackEvent('MailSent', { id: 'after-outage', source: 'http' });
    await t.flush();
    expect(capture.events().map((e) => e.properties.id)).toEqual(['after-outage']);
  });

  it('with the SDK default retries a single 503 is retried and the event still arrives', async () => {
    const errors: unknown[] = [];
    const t = telemetry({ onError: (e) => errors.push(e) });
    capture.failNext(1, 503);
    t.trackEvent('MailSent', { id: 'retried', source: 'http' });
    await t.flush();
    expect(capture.requests.map((r) => r.status)).toEqual([503, 200]);
    // onError sees the final answer of an export, after the pipeline's retries.
    expect(errors).toEqual([]);
    expect(capture.events().map((e) => e.properties.id)).toEqual(['retried']);
  });

  it('an unreachable ingestion endpoint, garbage input and a throwing getter do not throw; flush still resolves', async () => {
    const errors: unknown[] = [];
    const closedPort = await new Promise<number>((resolve) => {
      const s = net.createServer().listen(0, '127.0.0.1', () => {
        const { port } = s.address() as net.AddressInfo;
        s.close(() => resolve(port));
      });
    });
    const t = telemetry({
      connectionString: `InstrumentationKey=${capture.instrumentationKey};IngestionEndpoint=https://127.0.0.1:${closedPort}/`,
      retry: { maxRetries: 0 },
      onError: (e) => errors.push(e),
    });
    const hostile = Object.defineProperty({}, 'id', {
      enumerable: true,
      get() {
        throw new Error('getter exploded');
      },
    }) as MailEventProperties;
    expect(() => t.trackEvent('MailSent', hostile)).not.toThrow();
    expect(() => t.trackEvent('MailSent', null as unknown as MailEventProperties)).not.toThrow();
    expect(() => t.trackEvent('NotAnEvent' as 'MailSent', {})).not.toThrow();
    expect(() => t.trackDuration(Number.NaN)).not.toThrow();
    expect(() => t.trackDuration(-1, null as unknown as undefined)).not.toThrow();
    t.trackEvent('MailSent', { id: 'to-nowhere' });
    const startedAt = Date.now();
    await expect(t.flush()).resolves.toBeUndefined();
    await expect(t.shutdown()).resolves.toBeUndefined();
    expect(Date.now() - startedAt).toBeLessThan(10_000);
    expect(errors.map(String).join('\n')).toContain('getter exploded');
    // After shutdown, tracking is ignored and still does not throw.
    expect(() => t.trackEvent('MailSent', { id: 'late' })).not.toThrow();
  });

  it('the ingestion certificate is verified: without the sandbox CA (or with another CA) nothing is delivered', async () => {
    const other = createCertificateAuthority('some other CA');
    for (const extraCaPem of [undefined, other.certPem]) {
      const errors: unknown[] = [];
      const t = telemetry({ extraCaPem, retry: { maxRetries: 0 }, onError: (e) => errors.push(e) });
      t.trackEvent('MailSent', { id: 'untrusted', source: 'http' });
      await expect(t.flush()).resolves.toBeUndefined();
      await t.shutdown();
      expect(errors.map(String).join('\n')).toMatch(/ingestion failed: .*(certificate|self.signed|unable to verify)/i);
    }
    expect(capture.requests).toEqual([]);
    expect(capture.rawBodies).toEqual([]);
  });

  it('trackEvent returns at once: it never waits for loading or the network', () => {
    const t = telemetry();
    const startedAt = process.hrtime.bigint();
    for (let i = 0; i < 200; i++) t.trackEvent('MailSent', { id: `fast-${i}`, source: 'http', durationMs: i });
    const ms = Number(process.hrtime.bigint() - startedAt) / 1e6;
    // One-sided and generous (a GC pause on a loaded two-core machine): loading or a network wait would take seconds.
    expect(ms).toBeLessThan(1_000);
  });
});

describe('offline storage and the network', () => {
  it('offline storage is off by default; with storageDirectory, rejected items are kept only there', async () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'm365-telemetry-store-'));
    try {
      const t = telemetry({ storageDirectory: dir, retry: { maxRetries: 0 } });
      capture.failNext(1, 503);
      t.trackEvent('MailSent', { id: 'stored', source: 'http' });
      await t.flush();
      const files = readdirSync(dir, { recursive: true })
        .map(String)
        .filter((f) => f.endsWith('.ai.json'));
      expect(files).toHaveLength(1);
      await t.shutdown();
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('the only host any telemetry in this file contacted is the loopback ingestion capture (no statsbeat, no IMDS, no live metrics)', () => {
    expect(connections.length).toBeGreaterThan(0);
    const foreign = connections.filter((c) => !/^(127\.0\.0\.1|localhost|::1):\d+$/.test(c));
    expect(foreign).toEqual([]);
    expect(capture.requests.every((r) => r.path === '/v2.1/track')).toBe(true);
    // Statsbeat is switched off for the exporter's constructor only; the process environment is left as it was.
    expect(process.env.APPLICATION_INSIGHTS_NO_STATSBEAT).toBeUndefined();
  });
});

describe('cold start and configuration', () => {
  it('importing src/telemetry.ts loads no OpenTelemetry or exporter module; the first tracked event loads them', () => {
    const script = `
      const heavy = () => Object.keys(require.cache).filter((f) => /[\\\\/]node_modules[\\\\/]@(opentelemetry|azure[\\\\/]monitor-opentelemetry-exporter)[\\\\/]/.test(f)).length;
      const { createTelemetry } = require('./src/telemetry.ts');
      const afterImport = heavy();
      const noop = createTelemetry({});
      noop.trackEvent('MailSent', { id: 'x' });
      const afterNoop = heavy();
      const t = createTelemetry({ connectionString: 'InstrumentationKey=00000000-0000-4000-8000-000000000001;IngestionEndpoint=https://127.0.0.1:9/' });
      t.trackEvent('MailSent', { id: 'x' });
      const afterTrackSync = heavy();
      setImmediate(() => setImmediate(() => {
        console.log(JSON.stringify({ afterImport, afterNoop, afterTrackSync, afterLoad: heavy() }));
        process.exit(0);
      }));`;
    const out = execFileSync(process.execPath, ['--require', 'tsx/cjs', '-e', script], {
      cwd: path.resolve(__dirname, '../..'),
      encoding: 'utf8',
    });
    const counts = JSON.parse(out.trim().split('\n').pop() as string) as Record<string, number>;
    expect(counts).toMatchObject({ afterImport: 0, afterNoop: 0, afterTrackSync: 0 });
    expect(counts.afterLoad).toBeGreaterThan(10);
  });

  it('validateConnectionString names what is wrong', () => {
    expect(validateConnectionString(capture.connectionString)).toBeUndefined();
    expect(validateConnectionString('InstrumentationKey=00000000-0000-4000-8000-000000000001')).toBeUndefined();
    expect(validateConnectionString('IngestionEndpoint=https://x/')).toMatch(/no InstrumentationKey/);
    expect(validateConnectionString('InstrumentationKey=abc')).toMatch(/not a GUID/);
    expect(
      validateConnectionString(
        'InstrumentationKey=00000000-0000-4000-8000-000000000001;IngestionEndpoint=http://127.0.0.1:1/',
      ),
    ).toMatch(/must be https/);
  });
});
