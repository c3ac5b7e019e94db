/**
 * Application Insights telemetry for mail outcomes.
 *
 * Events go out as Application Insights custom events (`customEvents` table) through
 * `@azure/monitor-opentelemetry-exporter`'s AzureMonitorLogExporter: an OpenTelemetry log record carrying the
 * `microsoft.custom_event.name` attribute becomes an `EventData` envelope. The duration metric goes through
 * AzureMonitorMetricExporter (`customMetrics`, name `mail.send.duration`, aggregated per export interval).
 *
 * Cold start: nothing of OpenTelemetry or the exporter is loaded when this module is imported (about
 * 150–250 ms here). They are loaded on the first track call, from a setImmediate, and records are buffered
 * (with their original timestamps) until then. Without a connection string nothing is ever loaded.
 *
 * Privacy: only the allow-listed fields of MailEventProperties are copied, one by one, and string values that
 * look like an address or a token are replaced. Addresses, subjects, bodies, tokens and secrets cannot reach
 * the wire through this module.
 *
 * Network: statsbeat / SDK stats (which otherwise go to a Microsoft host and probe the VM metadata endpoint)
 * are switched off; live metrics are never started; the only host contacted is the connection string's
 * IngestionEndpoint, which must be https (the exporter silently rewrites http:// to https://), and, with
 * Entra ID authentication, the managed identity endpoint.
 *
 * Entra ID authentication: an Application Insights resource with local authentication off refuses telemetry
 * sent with the connection string alone. APPLICATIONINSIGHTS_AUTHENTICATION_STRING (`Authorization=AAD`, with
 * `;ClientId=<id>` for a user-assigned identity), the setting the Functions host reads for its own telemetry,
 * makes the exporter send a managed identity token for `https://monitor.azure.com/.default` with every post.
 */
import tls from 'node:tls';
import { parseTraceParent } from './invocation';
import type { Config } from './config';
import type { Logger } from './logger';
import { MAIL_SOURCES, type MailSource } from './message';
import type { AzureMonitorExporterOptions } from '@azure/monitor-opentelemetry-exporter';
import type { TokenCredential } from '@azure/identity';
import type { Logger as OtelLogger } from '@opentelemetry/api-logs';
import type { Histogram, Context } from '@opentelemetry/api';
import type { LoggerProvider } from '@opentelemetry/sdk-logs';
import type { PipelinePolicy } from '@azure/core-rest-pipeline';
import type { MeterProvider } from '@opentelemetry/sdk-metrics';
import { WAIT_REASONS, type WaitReason } from './outbox/statusStore';
import { CREDENTIAL_TRY_TIMEOUT_MS, timeoutHttpClient, tryTimeoutPolicy } from './timeouts';

/** Every custom event the app records; names are part of the contract with dashboards and alerts. */
export const MAIL_EVENT_NAMES = [
  'MailSent',
  'MailFailed',
  'MailDeferred',
  /** Over a pacing limit: back in the queue; `reason` says which limit. */
  'MailPaced',
  /** Exchange answered 432 4.3.2 despite the pacing. */
  'MailThrottled',
  'BatchAccepted',
  /** A batch refused as a whole on the queue (a batchId reused for other content): it went to the poison queue. */
  'BatchRejected',
  'NotificationRecipientRejected',
  /** A bulk message not sent to a suppressed recipient; `stage` says whether at accept or at delivery. Counts only. */
  'MailSuppressed',
  /** One run of a scheduled digest: its name and counts, never an address. */
  'DigestRun',
] as const;
export type MailEventName = (typeof MAIL_EVENT_NAMES)[number];

/** Only these fields exist, so addresses, subjects, bodies and secrets cannot be recorded. */
export interface MailEventProperties {
  id?: string;
  source?: MailSource;
  template?: string;
  batchId?: string;
  attempt?: number;
  durationMs?: number;
  smtpCode?: number;
  /** The enhanced status code of the SMTP reply (`4.7.500`, `5.7.3`): recorded only in that shape. */
  smtpEnhancedCode?: string;
  errorCode?: string;
  transient?: boolean;
  recipientCount?: number;
  /** MailSent: recipients Exchange refused while it accepted the message for the others (a count, never addresses). */
  refusedCount?: number;
  /** MailPaced, MailDeferred: why the message waits. */
  reason?: WaitReason;
  /** MailPaced: how long until the message is back. */
  retryInSeconds?: number;
  /** MailSuppressed: where the suppression was found. */
  stage?: 'accept' | 'delivery';
  /** MailSuppressed: the bulk list (a template name or list id, never an address). */
  list?: string;
  /** A recipient's position in its batch (NotificationRecipientRejected). */
  index?: number;
  /** DigestRun: the digest's name (its template folder without `digest-`). */
  digest?: string;
  /** DigestRun: recipients sent a digest, items they held, items counted but not listed. */
  recipients?: number;
  items?: number;
  omitted?: number;
  /** The Functions invocation id (InvocationContext.invocationId). */
  invocationId?: string;
  /** A W3C trace id (32 hex): recorded as a property and as the operation id (`operation_Id`). */
  operationId?: string;
  /**
   * Events of a message's delivery: the operation id (W3C trace id) of the invocation that accepted it into the
   * outbox, e.g. the `POST /api/messages` request, when another invocation delivers it. Recorded as a property only
   * when it is 32 hex digits.
   */
  acceptOperationId?: string;
  /**
   * The invocation's W3C traceparent (InvocationContext.traceContext.traceParent). Not recorded as a property:
   * it sets `operation_Id` and `operation_ParentId`, which correlates the event with the Functions request.
   */
  traceParent?: string;
}

/** Dimensions of the `mail.send.duration` metric: low cardinality only. */
export interface MailDurationDimensions {
  source?: MailSource;
  template?: string;
  outcome?: 'sent' | 'failed' | 'deferred';
}

export interface Telemetry {
  /** False for the no-op telemetry (no connection string). */
  readonly enabled: boolean;
  /** Records a custom event. Never throws and never waits for the network. */
  trackEvent(name: MailEventName, props: MailEventProperties): void;
  /** Records one `mail.send.duration` measurement (milliseconds). Never throws. */
  trackDuration(ms: number, dims?: MailDurationDimensions): void;
  /** Sends everything recorded so far and waits for the ingestion endpoint to answer (bounded). Never rejects. */
  flush(): Promise<void>;
  /** Flushes, then stops; later track calls are ignored. Never rejects. */
  shutdown(): Promise<void>;
}

export interface TelemetryOptions {
  /** APPLICATIONINSIGHTS_CONNECTION_STRING. Absent or empty: a no-op Telemetry that loads nothing. */
  connectionString?: string | undefined;
  /**
   * APPLICATIONINSIGHTS_AUTHENTICATION_STRING: `Authorization=AAD` (system-assigned identity) or
   * `Authorization=AAD;ClientId=<client id>` (user-assigned). Absent: the connection string alone authenticates,
   * which a resource with local authentication off refuses. See {@link parseAuthenticationString}.
   */
  authenticationString?: string | undefined;
  /** An extra CA (PEM) to trust for the ingestion endpoint (the sandbox); verification stays on. */
  extraCaPem?: string | undefined;
  /** Cloud role name (`cloud_RoleName`); default `m365-mailer`. */
  roleName?: string;
  /** Cloud role instance (`cloud_RoleInstance`); default the exporter's (the host name). */
  roleInstance?: string;
  /**
   * Directory for the exporter's offline storage (envelopes that failed with a retriable status are written
   * there and re-sent later). Absent: offline storage is disabled and such envelopes are dropped.
   */
  storageDirectory?: string;
  /** How long events wait in the batch before being sent; default 5000 ms. flush() sends at once. */
  exportDelayMs?: number;
  /** Metric export interval; default 60000 ms. flush() exports at once. */
  metricIntervalMs?: number;
  /** Upper bound for flush()/shutdown(); default 15000 ms. */
  flushTimeoutMs?: number;
  /** HTTP retries on 5xx/network errors inside one export (Azure SDK pipeline); default 3 retries from 800 ms. */
  retry?: { maxRetries?: number; retryDelayInMs?: number; maxRetryDelayInMs?: number };
  /**
   * Each request to the ingestion endpoint (one try) must be answered within this, or it is cut (and retried, then
   * reported to `onError`); default {@link TELEMETRY_REQUEST_TIMEOUT_MS}.
   */
  requestTimeoutMs?: number;
  /** Called with internal telemetry errors (load failures, export failures). Default: ignored. */
  onError?: (error: unknown) => void;
}

export const DURATION_METRIC = 'mail.send.duration';
/**
 * Each request to the ingestion endpoint must be answered within this. Ingestion answers in well under a second;
 * without a bound a hung endpoint would hold the export's socket and request for ever (flush() gives up waiting,
 * the request does not).
 */
export const TELEMETRY_REQUEST_TIMEOUT_MS = 10_000;
/** The attribute that makes AzureMonitorLogExporter emit an EventData (custom event) envelope. */
export const CUSTOM_EVENT_NAME_ATTRIBUTE = 'microsoft.custom_event.name';

const SOURCES: readonly MailSource[] = MAIL_SOURCES;
const OUTCOMES: ReadonlyArray<NonNullable<MailDurationDimensions['outcome']>> = ['sent', 'failed', 'deferred'];
/** Records kept while the exporter loads; beyond this they are counted and dropped. */
const MAX_PENDING = 1000;
const MAX_STRING = 256;
/** An SMTP enhanced status code (RFC 3463): class, subject, detail. */
const ENHANCED_CODE = /^[245]\.\d{1,3}\.\d{1,3}$/;
/** A W3C trace id: 32 lower-case hex digits. */
const TRACE_ID = /^[0-9a-f]{32}$/;
/** Statsbeat is read from this variable when an exporter is constructed (base.js `trackStatsbeat`). */
const STATSBEAT_OFF_ENV = 'APPLICATION_INSIGHTS_NO_STATSBEAT';

/** The setting that turns on Entra ID authentication of telemetry (the Functions host reads it too). */
export const AUTHENTICATION_STRING_SETTING = 'APPLICATIONINSIGHTS_AUTHENTICATION_STRING';
/** The scope of the ingestion token (the exporter asks for it unless the connection string names an AADAudience). */
export const MONITOR_SCOPE = 'https://monitor.azure.com/.default';

/** What APPLICATIONINSIGHTS_AUTHENTICATION_STRING asks for: a managed identity token, from this identity. */
export interface TelemetryAuthentication {
  kind: 'managed-identity';
  /** The user-assigned identity's client id; absent: the system-assigned identity. */
  clientId?: string;
}

const GUID_PATTERN = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

/**
 * Parses APPLICATIONINSIGHTS_AUTHENTICATION_STRING (`Authorization=AAD[;ClientId=<guid>]`, keys in any case and
 * order). Unset or blank: undefined. Anything else throws an Error naming the setting and the form, never the value
 * (a secret pasted into the wrong setting must not reach the logs).
 */
export function parseAuthenticationString(value: string | undefined): TelemetryAuthentication | undefined {
  if (value === undefined || value.trim() === '') return undefined;
  const invalid = () =>
    new Error(
      `${AUTHENTICATION_STRING_SETTING} is invalid: "Authorization=AAD" (system-assigned identity) or "Authorization=AAD;ClientId=<client id of the user-assigned managed identity>"`,
    );
  const parts = new Map<string, string>();
  for (const part of value.split(';')) {
    if (part.trim() === '') continue;
    const eq = part.indexOf('=');
    const key = eq > 0 ? part.slice(0, eq).trim().toLowerCase() : '';
    if (!key || parts.has(key)) throw invalid();
    parts.set(key, part.slice(eq + 1).trim());
  }
  const clientId = parts.get('clientid');
  const known = parts.size === (clientId === undefined ? 1 : 2);
  if (!known || parts.get('authorization')?.toUpperCase() !== 'AAD') throw invalid();
  if (clientId !== undefined && !GUID_PATTERN.test(clientId)) throw invalid();
  return clientId === undefined ? { kind: 'managed-identity' } : { kind: 'managed-identity', clientId };
}

/** A no-op Telemetry: what createTelemetry returns without a connection string. */
export const noopTelemetry: Telemetry = Object.freeze({
  enabled: false,
  trackEvent() {},
  trackDuration() {},
  flush: () => Promise.resolve(),
  shutdown: () => Promise.resolve(),
});

/**
 * Checks a connection string without loading the exporter. Returns a message naming the problem, or undefined
 * when it is usable. (An `http://` IngestionEndpoint is refused: the exporter would silently call https on it.)
 */
export function validateConnectionString(connectionString: string): string | undefined {
  const parts = new Map<string, string>();
  for (const part of connectionString.split(';')) {
    const eq = part.indexOf('=');
    if (eq > 0) parts.set(part.slice(0, eq).trim().toLowerCase(), part.slice(eq + 1).trim());
  }
  const key = parts.get('instrumentationkey');
  if (!key) return 'APPLICATIONINSIGHTS_CONNECTION_STRING has no InstrumentationKey';
  if (!/^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i.test(key)) {
    return 'APPLICATIONINSIGHTS_CONNECTION_STRING InstrumentationKey is not a GUID';
  }
  const endpoint = parts.get('ingestionendpoint');
  if (endpoint !== undefined) {
    let url: URL;
    try {
      url = new URL(endpoint);
    } catch {
      return 'APPLICATIONINSIGHTS_CONNECTION_STRING IngestionEndpoint is not a URL';
    }
    if (url.protocol !== 'https:') return 'APPLICATIONINSIGHTS_CONNECTION_STRING IngestionEndpoint must be https://';
  }
  return undefined;
}

/** Creates the product's telemetry. No connection string → the no-op telemetry (nothing loaded, nothing sent). */
export function createTelemetry(options: TelemetryOptions = {}): Telemetry {
  const connectionString = options.connectionString?.trim();
  if (!connectionString) return noopTelemetry;
  return new ExportingTelemetry({ ...options, connectionString });
}

/**
 * The app's telemetry from its Config: the connection and authentication strings, the extra CA, the role name, and
 * export failures logged as warnings (the exporter tells nobody about dropped batches). Loads nothing until the first event.
 */
export function telemetryFromConfig(config: Config, options: { logger: Logger; roleName?: string }): Telemetry {
  return createTelemetry({
    connectionString: config.appInsightsConnectionString,
    authenticationString: config.appInsightsAuthenticationString,
    extraCaPem: config.extraCaPem,
    roleName: options.roleName ?? 'm365-mailer',
    onError: (error: unknown) =>
      options.logger.warn('telemetry export failed', { error: error instanceof Error ? error.message : String(error) }),
  });
}

// ---------------------------------------------------------------------------------------------------------------
// Field-by-field copying: the only way data reaches a record.

function safeString(value: unknown): string | undefined {
  if (typeof value !== 'string') return undefined;
  const cleaned = value.replace(/[\u0000-\u001f\u007f]/g, ' ').trim();
  if (!cleaned) return undefined;
  // Allow-listed fields hold ids and codes. Anything shaped like an address or a bearer token is not one.
  if (cleaned.includes('@') || /eyJ[A-Za-z0-9_-]{8,}/.test(cleaned)) return '[redacted]';
  return cleaned.slice(0, MAX_STRING);
}

function safeNumber(value: unknown): number | undefined {
  return typeof value === 'number' && Number.isFinite(value) ? value : undefined;
}

/** The custom dimensions (all strings, as Application Insights stores them) and measurements of one event. */
export function eventFields(props: MailEventProperties): {
  properties: Record<string, string>;
  measurements: Record<string, number>;
} {
  const p: Partial<Record<keyof MailEventProperties, unknown>> = props && typeof props === 'object' ? props : {};
  const properties: Record<string, string> = {};
  const measurements: Record<string, number> = {};
  const str = (
    key: 'id' | 'template' | 'batchId' | 'digest' | 'errorCode' | 'invocationId' | 'operationId' | 'list',
  ) => {
    const v = safeString(p[key]);
    if (v !== undefined) properties[key] = v;
  };
  const num = (
    key:
      | 'attempt'
      | 'durationMs'
      | 'smtpCode'
      | 'recipientCount'
      | 'refusedCount'
      | 'retryInSeconds'
      | 'index'
      | 'recipients'
      | 'items'
      | 'omitted',
    measurement: boolean,
  ) => {
    let v = safeNumber(p[key]);
    if (v === undefined) return;
    if (key === 'durationMs') v = Math.round(v);
    properties[key] = String(v);
    if (measurement) measurements[key] = v;
  };
  str('id');
  if (SOURCES.includes(p.source as MailSource)) properties.source = p.source as MailSource;
  str('template');
  str('batchId');
  num('attempt', true);
  num('durationMs', true);
  num('smtpCode', false);
  if (typeof p.smtpEnhancedCode === 'string' && ENHANCED_CODE.test(p.smtpEnhancedCode)) {
    properties.smtpEnhancedCode = p.smtpEnhancedCode;
  }
  str('errorCode');
  if (typeof p.transient === 'boolean') properties.transient = String(p.transient);
  num('recipientCount', true);
  num('refusedCount', true);
  if (typeof p.reason === 'string' && (WAIT_REASONS as readonly string[]).includes(p.reason))
    properties.reason = p.reason;
  num('retryInSeconds', true);
  num('index', false);
  if (p.stage === 'accept' || p.stage === 'delivery') properties.stage = p.stage;
  str('list');
  str('digest');
  num('recipients', true);
  num('items', true);
  num('omitted', true);
  str('invocationId');
  str('operationId');
  const acceptOperationId = typeof p.acceptOperationId === 'string' ? p.acceptOperationId.toLowerCase() : '';
  if (TRACE_ID.test(acceptOperationId) && !/^0+$/.test(acceptOperationId)) {
    properties.acceptOperationId = acceptOperationId;
  }
  return { properties, measurements };
}

function durationDimensions(dims: MailDurationDimensions | undefined): Record<string, string> {
  const d: Partial<Record<keyof MailDurationDimensions, unknown>> = dims && typeof dims === 'object' ? dims : {};
  const out: Record<string, string> = {};
  if (SOURCES.includes(d.source as MailSource)) out.source = d.source as string;
  const template = safeString(d.template);
  if (template !== undefined) out.template = template;
  if (OUTCOMES.includes(d.outcome as 'sent')) out.outcome = d.outcome as string;
  return out;
}

/** Trace id and parent span id from a W3C traceparent (strictly parsed), or a bare 32-hex trace id. */
function correlation(props: MailEventProperties): { traceId: string; spanId?: string } | undefined {
  const tp = parseTraceParent(props.traceParent);
  if (tp) return { traceId: tp.traceId, spanId: tp.spanId };
  const op = typeof props.operationId === 'string' ? props.operationId.trim().toLowerCase() : '';
  if (TRACE_ID.test(op) && !/^0+$/.test(op)) return { traceId: op };
  return undefined;
}

// ---------------------------------------------------------------------------------------------------------------
// The exporting implementation.

interface Pipeline {
  logger: OtelLogger;
  histogram: Histogram;
  loggerProvider: LoggerProvider;
  meterProvider: MeterProvider;
  contextFor(trace: { traceId: string; spanId?: string } | undefined): Context | undefined;
}

type Op = (pipeline: Pipeline) => void;

type Modules = {
  exporter: typeof import('@azure/monitor-opentelemetry-exporter');
  identity: () => typeof import('@azure/identity');
  api: typeof import('@opentelemetry/api');
  logs: typeof import('@opentelemetry/sdk-logs');
  metrics: typeof import('@opentelemetry/sdk-metrics');
  resources: typeof import('@opentelemetry/resources');
};

/**
 * Loads OpenTelemetry and the exporter. CommonJS `require` keeps one copy of @azure/core-rest-pipeline shared
 * with the Key Vault client; esbuild bundles these requires as lazily initialised modules. Packages only:
 * a relative require of a .ts file would not resolve under vitest.
 */
function loadModules(): Modules {
  /* eslint-disable @typescript-eslint/no-require-imports */
  return {
    exporter: require('@azure/monitor-opentelemetry-exporter') as Modules['exporter'],
    // Only with Entra ID authentication; the app has usually loaded it already for Key Vault.
    identity: () => require('@azure/identity') as ReturnType<Modules['identity']>,
    api: require('@opentelemetry/api') as Modules['api'],
    logs: require('@opentelemetry/sdk-logs') as Modules['logs'],
    metrics: require('@opentelemetry/sdk-metrics') as Modules['metrics'],
    resources: require('@opentelemetry/resources') as Modules['resources'],
  };
  /* eslint-enable @typescript-eslint/no-require-imports */
}

/** Runs `construct` with statsbeat off: the exporter reads the variable in its constructor only. */
function withStatsbeatOff<T>(construct: () => T): T {
  const previous = process.env[STATSBEAT_OFF_ENV];
  process.env[STATSBEAT_OFF_ENV] = 'true';
  try {
    return construct();
  } finally {
    if (previous === undefined) delete process.env[STATSBEAT_OFF_ENV];
    else process.env[STATSBEAT_OFF_ENV] = previous;
  }
}

/** Reports every final ingestion answer that is not 200/206, and every transport error (TLS, refused…). */
function ingestionObserver(report: (error: unknown) => void): PipelinePolicy {
  return {
    name: 'm365MailerIngestionObserver',
    async sendRequest(request, next) {
      try {
        const response = await next(request);
        if (response.status !== 200 && response.status !== 206) {
          report(new Error(`Application Insights ingestion answered ${response.status}; the batch was not accepted`));
        }
        return response;
      } catch (error) {
        report(new Error(`Application Insights ingestion failed: ${(error as Error)?.message ?? String(error)}`));
        throw error;
      }
    },
  };
}

/**
 * The managed identity credential of APPLICATIONINSIGHTS_AUTHENTICATION_STRING, or undefined when it is unset.
 * ManagedIdentityCredential rather than DefaultAzureCredential: the setting names a managed identity, and a developer's
 * `az login` must not stand in for it. Each token request is bounded like every other credential's.
 */
function ingestionCredential(
  m: Modules,
  authenticationString: string | undefined,
  report: (error: unknown) => void,
): TokenCredential | undefined {
  const auth = parseAuthenticationString(authenticationString);
  if (!auth) return undefined;
  const { ManagedIdentityCredential } = m.identity();
  // An HTTP client rather than a policy: ManagedIdentityCredential replaces `additionalPolicies` with its own.
  const httpClient = timeoutHttpClient(CREDENTIAL_TRY_TIMEOUT_MS);
  const credential = auth.clientId
    ? new ManagedIdentityCredential({ clientId: auth.clientId, httpClient })
    : new ManagedIdentityCredential({ httpClient });
  // The exporter's bearer token policy runs before the ingestion observer and swallows its failure: report it here.
  return {
    async getToken(scopes, options) {
      try {
        return await credential.getToken(scopes, options);
      } catch (error) {
        const which = auth.clientId ? `user-assigned identity ${auth.clientId}` : 'system-assigned identity';
        const message = (error as Error)?.message?.split('\n')[0] ?? String(error);
        report(
          new Error(
            `Application Insights ingestion failed: the managed identity (${which}) could not get a token for ${String(scopes)}: ${message}`,
          ),
        );
        throw error;
      }
    },
  };
}

function buildPipeline(
  options: TelemetryOptions & { connectionString: string },
  report: (error: unknown) => void,
): Pipeline {
  const m = loadModules();
  const credential = ingestionCredential(m, options.authenticationString, report);
  const exporterOptions: AzureMonitorExporterOptions = {
    connectionString: options.connectionString,
    // The exporter adds a bearer token policy for MONITOR_SCOPE (or the connection string's AADAudience).
    ...(credential ? { credential } : {}),
    disableOfflineStorage: !options.storageDirectory,
    ...(options.storageDirectory ? { storageDirectory: options.storageDirectory } : {}),
    // The pipeline's own tlsPolicy: Node's roots plus the extra CA, verification on (as src/sender/tlsTrust.ts trustedCas).
    ...(options.extraCaPem ? { tlsOptions: { ca: [...tls.rootCertificates, options.extraCaPem].join('\n') } } : {}),
    ...(options.retry ? { retryOptions: options.retry } : {}),
    additionalPolicies: [
      // The exporter reports failed or dropped batches to nobody; this policy tells onError about them.
      { policy: ingestionObserver(report), position: 'perCall' },
      // Inside the retry loop: a hung try is cut and retried; the last one reaches the observer as an error.
      { policy: tryTimeoutPolicy(options.requestTimeoutMs ?? TELEMETRY_REQUEST_TIMEOUT_MS), position: 'perRetry' },
    ],
  };
  const { logExporter, metricExporter } = withStatsbeatOff(() => ({
    logExporter: new m.exporter.AzureMonitorLogExporter(exporterOptions),
    metricExporter: new m.exporter.AzureMonitorMetricExporter(exporterOptions),
  }));
  const resource = m.resources.resourceFromAttributes({
    'service.name': options.roleName ?? 'm365-mailer',
    ...(options.roleInstance ? { 'service.instance.id': options.roleInstance } : {}),
  });
  const flushTimeout = options.flushTimeoutMs ?? 15_000;
  const loggerProvider = new m.logs.LoggerProvider({
    resource,
    forceFlushTimeoutMillis: flushTimeout,
    processors: [
      new m.logs.BatchLogRecordProcessor(logExporter, {
        scheduledDelayMillis: options.exportDelayMs ?? 5_000,
        exportTimeoutMillis: flushTimeout,
        maxQueueSize: 2048,
        maxExportBatchSize: 512,
      }),
    ],
  });
  const interval = options.metricIntervalMs ?? 60_000;
  const meterProvider = new m.metrics.MeterProvider({
    resource,
    readers: [
      new m.metrics.PeriodicExportingMetricReader({
        exporter: metricExporter,
        exportIntervalMillis: interval,
        exportTimeoutMillis: Math.min(interval, flushTimeout),
      }),
    ],
  });
  const histogram = meterProvider.getMeter('m365-mailer').createHistogram(DURATION_METRIC, {
    unit: 'ms',
    description: 'Time to send one message, from the send call to the SMTP reply',
  });
  const { trace, ROOT_CONTEXT, TraceFlags } = m.api;
  return {
    logger: loggerProvider.getLogger('m365-mailer'),
    histogram,
    loggerProvider,
    meterProvider,
    contextFor(ids) {
      // Without a trace the exporter would use the active context; ROOT keeps foreign spans out.
      if (!ids) return ROOT_CONTEXT;
      // A bare operation id has no parent span: a random one marks the record as belonging to the operation.
      const spanId = ids.spanId ?? randomSpanId();
      return trace.setSpanContext(ROOT_CONTEXT, {
        traceId: ids.traceId,
        spanId,
        traceFlags: TraceFlags.SAMPLED,
        isRemote: true,
      });
    },
  };
}

function randomSpanId(): string {
  let id = '';
  while (id.length < 16) id += Math.floor(Math.random() * 16).toString(16);
  return /^0+$/.test(id) ? '0000000000000001' : id;
}

function withTimeout(promise: Promise<unknown>, ms: number, what: string): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`telemetry ${what} timed out after ${ms} ms`)), ms);
    timer.unref?.();
    promise.then(
      () => {
        clearTimeout(timer);
        resolve();
      },
      (error: unknown) => {
        clearTimeout(timer);
        reject(error instanceof Error ? error : new Error(String(error)));
      },
    );
  });
}

class ExportingTelemetry implements Telemetry {
  readonly enabled = true;
  /** Records dropped because the buffer was full or the exporter failed to load. */
  dropped = 0;
  private pending: Op[] = [];
  private pipeline: Pipeline | undefined;
  private loading: Promise<Pipeline | undefined> | undefined;
  private failed = false;
  private closed = false;

  constructor(private readonly options: TelemetryOptions & { connectionString: string }) {}

  trackEvent(name: MailEventName, props: MailEventProperties): void {
    try {
      if (this.closed || !MAIL_EVENT_NAMES.includes(name)) return;
      const { properties, measurements } = eventFields(props);
      const ids = correlation(props ?? {});
      const timestamp = Date.now();
      this.enqueue((p) => {
        const context = p.contextFor(ids);
        p.logger.emit({
          timestamp,
          body: { measurements },
          attributes: { [CUSTOM_EVENT_NAME_ATTRIBUTE]: name, ...properties },
          ...(context ? { context } : {}),
        });
      });
    } catch (error) {
      this.report(error);
    }
  }

  trackDuration(ms: number, dims?: MailDurationDimensions): void {
    try {
      if (this.closed || typeof ms !== 'number' || !Number.isFinite(ms) || ms < 0) return;
      const attributes = durationDimensions(dims);
      this.enqueue((p) => p.histogram.record(ms, attributes));
    } catch (error) {
      this.report(error);
    }
  }

  async flush(): Promise<void> {
    // Nothing was ever tracked: nothing to load, nothing to send.
    if (!this.loading) return;
    try {
      const pipeline = await this.loading;
      if (!pipeline) return;
      const timeout = this.options.flushTimeoutMs ?? 15_000;
      await withTimeout(
        Promise.all([pipeline.loggerProvider.forceFlush(), pipeline.meterProvider.forceFlush()]),
        timeout,
        'flush',
      );
    } catch (error) {
      this.report(error);
    }
  }

  async shutdown(): Promise<void> {
    if (this.closed) return;
    await this.flush();
    this.closed = true;
    this.pending = [];
    const pipeline = this.pipeline;
    if (!pipeline) return;
    try {
      const timeout = this.options.flushTimeoutMs ?? 15_000;
      await withTimeout(
        Promise.all([pipeline.loggerProvider.shutdown(), pipeline.meterProvider.shutdown()]),
        timeout,
        'shutdown',
      );
    } catch (error) {
      this.report(error);
    }
  }

  private enqueue(op: Op): void {
    if (this.pipeline) {
      op(this.pipeline);
      return;
    }
    if (this.failed || this.pending.length >= MAX_PENDING) {
      this.dropped += 1;
      return;
    }
    this.pending.push(op);
    this.start();
  }

  /** Loads and builds the pipeline on the next turn of the event loop, so the caller never waits for it. */
  private start(): void {
    this.loading ??= new Promise<void>((resolve) => setImmediate(resolve))
      .then(() => {
        const pipeline = buildPipeline(this.options, (error) => this.report(error));
        this.pipeline = pipeline;
        const ops = this.pending;
        this.pending = [];
        for (const op of ops) {
          try {
            op(pipeline);
          } catch (error) {
            this.report(error);
          }
        }
        return pipeline;
      })
      .catch((error: unknown) => {
        this.failed = true;
        this.dropped += this.pending.length;
        this.pending = [];
        this.report(error);
        return undefined;
      });
  }

  private report(error: unknown): void {
    try {
      this.options.onError?.(error);
    } catch {
      // The error sink itself failed; telemetry never throws into the caller.
    }
  }
}
