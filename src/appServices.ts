/** The process-wide dependencies of the function app, built once from the app settings on first use. */
import { exportSettings, loadConfig, readSettings, type Config } from './config';
import { Digests } from './digests/digests';
import { Delivery, defaultBackoffSeconds, type DeliverDeps } from './outbox/delivery';
import { ensureError } from './errors';
import { BatchBlobStore } from './notifications/batchBlobStore';
import { BatchStore } from './notifications/batchStore';
import { IdempotencyStore } from './outbox/idempotencyStore';
import { createLogger, type Logger } from './logger';
import { lazyMailer } from './sender/lazyMailer';
import type { Mailer } from './sender/senderServices';
import { SuppressionStore } from './suppression/suppressionStore';
import { UnsubscribeLinks } from './suppression/unsubscribeLinks';
import { defaultRedactor, registerSecretSettings, type Redactor } from './redact';
import { Notifications } from './notifications/notifications';
import { Outbox } from './outbox/outbox';
import { ConnectionSlots } from './pacing/connectionSlots';
import { Pacer, pacingLimits } from './pacing/pacer';
import { MessageStore } from './outbox/messageStore';
import { Retention } from './outbox/retention';
import { StatusStore } from './outbox/statusStore';
import { createStorage, storageTargetFromSettings, type StorageClients } from './storage/storageClients';
import { templateBundle } from './templates/templateBundle';
import { TemplateRenderer } from './templates/templateRenderer';
import { telemetryFromConfig, type Telemetry } from './telemetry';

/** Everything the HTTP handlers and the outbox worker use. */
export interface AppServices {
  config: Config;
  /** The sender, its token source and Key Vault reader: built, and the send path loaded, on the first call. */
  mailer(): Promise<Mailer>;
  storage: StorageClients;
  status: StatusStore;
  payloads: MessageStore;
  renderer: TemplateRenderer;
  outbox: Outbox;
  /** The outbox worker: the mail-outbox and poison triggers and `?wait=true` deliver through it. */
  delivery: Delivery;
  /** Batch notifications: POST /api/notifications, the mail-notifications fan-out, batch status. */
  notifications: Notifications;
  /** Scheduled digests: item intake (HTTP, mail-digest-items), the runs, their status. */
  digests: Digests;
  /** The mailbox's shared pacing state (absent with MAIL_PACING=off). */
  pacer?: Pacer;
  /** The mailbox's cross-instance SMTP connection cap (absent with MAIL_PACING=off); GET /api/health takes one too. */
  slots?: ConnectionSlots;
  /** Deletes records, keys, payloads and batches past MAIL_RETENTION_DAYS (the retention timer). */
  retention: Retention;
  /** Suppressed recipients (MailSuppressions): /api/suppressions, /api/unsubscribe, and the checks before bulk mail. */
  suppressions: SuppressionStore;
  /** List-Unsubscribe headers of bulk mail and the tokens of /api/unsubscribe. */
  unsubscribe: UnsubscribeLinks;
  logger: Logger;
  /** Scrubs logs and error answers; knows the storage account key, IDENTITY_HEADER and every Key Vault secret read. */
  redactor: Redactor;
  now: () => number;
  close(): Promise<void>;
}

export interface AppServicesOptions {
  logger?: Logger;
  telemetry?: Telemetry;
  /** Use this mailer instead of building one (tests share one sandbox mailer); its redactor is used. */
  mailer?: Mailer;
  /** The redactor for logs and answers when no mailer is passed; default the process-wide one. */
  redactor?: Redactor;
  now?: () => number;
  /** Delivery tuning (lease, attempts, back-off) for tests. */
  delivery?: Pick<DeliverDeps, 'leaseMs' | 'maxAttempts' | 'backoffSeconds' | 'concurrencyBackoffMs'>;
}

/** Builds a AppServices from `settings` (no network). Throws ConfigError naming each bad setting. */
export function createAppServices(
  settings: Record<string, string | undefined>,
  options: AppServicesOptions = {},
): AppServices {
  const redactor = options.mailer?.redactor ?? options.redactor ?? defaultRedactor;
  // Before anything can fail or log: the account key and IDENTITY_HEADER are known to every line written after this.
  // IDENTITY_HEADER is read from process.env too, because that is where the Azure SDK takes it from.
  registerSecretSettings(redactor, settings);
  registerSecretSettings(redactor, process.env);
  const config = loadConfig(settings);
  const storage = createStorage(storageTargetFromSettings(settings));
  const logger = options.logger ?? createLogger({ component: 'm365-mailer', redactor });
  const now = options.now ?? Date.now;
  // The limits hold across instances only through shared storage.
  const slots = config.limits.pacing
    ? new ConnectionSlots(storage.pacingLeases, config.sender, config.limits.maxConnections, { logger })
    : undefined;
  const pacer = config.limits.pacing
    ? new Pacer(storage.pacingTable, config.sender, pacingLimits(config), {
        now,
        leaseMs: options.delivery?.leaseMs ?? config.sendLeaseMs,
        ensure: () => storage.ensureResources(),
      })
    : undefined;
  const telemetry = options.telemetry ?? options.mailer?.telemetry ?? telemetryFromConfig(config, { logger });
  // Nothing of the send path (MSAL, @azure/identity, Key Vault, nodemailer) is loaded to accept a message.
  const mailer = lazyMailer(config, { logger, redactor, telemetry, slots, mailer: options.mailer });
  const renderer = new TemplateRenderer(templateBundle());
  const status = new StatusStore(storage.statusTable);
  const payloads = new MessageStore(storage.payloads);
  const idempotency = new IdempotencyStore(storage.idempotencyTable);
  const suppressions = new SuppressionStore(storage.suppressionTable);
  const unsubscribe = new UnsubscribeLinks({ config, secrets: mailer.secrets, now });
  const outbox = new Outbox({
    config,
    renderer,
    storage,
    status,
    payloads,
    idempotency,
    suppressions,
    unsubscribe,
    telemetry,
    logger,
    now,
  });
  const delivery = new Delivery({
    sender: mailer.sender,
    status,
    payloads,
    storage,
    suppressions,
    telemetry,
    logger,
    now,
    leaseMs: config.sendLeaseMs,
    backoffSeconds: (attempt) => defaultBackoffSeconds(attempt, config.retryBackoffSeconds),
    ...(pacer ? { pacer } : { quotaProbeMs: Math.max(1_000, config.limits.dailyWindowMs / 96) }),
    ...options.delivery,
  });
  const notifications = new Notifications({
    config,
    renderer,
    outbox,
    status,
    storage,
    unsubscribe,
    ...(delivery.deps.telemetry ? { telemetry: delivery.deps.telemetry } : {}),
    // A batch's recipients are spread over the schedule the mailbox can keep, in one write per chunk.
    ...(pacer ? { schedule: (count: number) => pacer.reserveSchedule(count) } : {}),
    logger,
    now,
  });
  const digests = new Digests({
    config,
    renderer,
    outbox,
    unsubscribe,
    storage,
    ...(delivery.deps.telemetry ? { telemetry: delivery.deps.telemetry } : {}),
    logger,
    now,
  });
  const retention = new Retention({
    config,
    storage,
    status,
    payloads,
    idempotency,
    batches: new BatchStore(storage.batchTable),
    batchBlobs: new BatchBlobStore(storage.batches),
    logger,
    now,
  });
  return {
    config,
    mailer: mailer.get,
    storage,
    status,
    payloads,
    renderer,
    outbox,
    delivery,
    notifications,
    digests,
    ...(pacer ? { pacer } : {}),
    ...(slots ? { slots } : {}),
    retention,
    suppressions,
    unsubscribe,
    logger,
    redactor,
    now,
    close: () => mailer.close(),
  };
}

let built: AppServices | undefined;
let failure: Error | undefined;

/**
 * The process's AppServices, from process.env (and local.settings.json when run locally). A settings error is logged
 * once, in full, and then thrown again (the same error, without a new stack) on every call: the triggers answer
 * with a short message instead of a stack trace per request.
 */
export function getAppServices(): AppServices {
  if (built) return built;
  if (failure) throw failure;
  try {
    registerSecretSettings(defaultRedactor, process.env);
    const settings = readSettings(process.env);
    exportSettings(settings);
    built = createAppServices(settings);
    return built;
  } catch (error) {
    failure = ensureError(error);
    createLogger({ component: 'm365-mailer' }).error(`The app cannot start: ${failure.message}`);
    throw failure;
  }
}

/** Closes the SMTP pool and flushes telemetry of the process AppServices, if one was built (the host's appTerminate hook). */
export async function closeAppServices(): Promise<void> {
  const services = built;
  built = undefined;
  await services?.close();
}
