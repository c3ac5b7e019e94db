/** Azure Storage clients for the outbox (queue, tables, blob container), built from the Functions `AzureWebJobsStorage` convention. */
import type { TokenCredential } from '@azure/identity';
import { TableClient } from '@azure/data-tables';
import { QueueServiceClient, type QueueClient } from '@azure/storage-queue';
import { BlobServiceClient, type BlobClient, type ContainerClient } from '@azure/storage-blob';
import { RestError, type Pipeline, type PipelinePolicy } from '@azure/core-rest-pipeline';
import { ConfigError } from '../config';
import { MailError, ensureError } from '../errors';
import { CREDENTIAL_TRY_TIMEOUT_MS, isTimeoutError, timeoutHttpClient, tryTimeoutPolicy } from '../timeouts';

/** The queue the outbox worker (outboxDeliver) listens to; the host moves failing messages to `<name>-poison`. */
export const OUTBOX_QUEUE = 'mail-outbox';
export const OUTBOX_POISON_QUEUE = `${OUTBOX_QUEUE}-poison`;
/** Status records, one entity per message. */
export const STATUS_TABLE = 'MailStatus';
/** Idempotency keys, one entity per (mailbox, key). */
export const IDEMPOTENCY_TABLE = 'MailIdempotency';
/** Rendered messages (attachments included): `<id>.json`. */
export const PAYLOAD_CONTAINER = 'mail-payloads';
/** Batch notifications: the queue producers write to, and its poison queue. */
export const NOTIFICATIONS_QUEUE = 'mail-notifications';
export const NOTIFICATIONS_POISON_QUEUE = `${NOTIFICATIONS_QUEUE}-poison`;
/** Batches too large for a queue message (over 64 KB), and batches whose fan-out continues in a later invocation. */
export const BATCH_CONTAINER = 'mail-batches';
/** One summary entity per notification batch. */
export const BATCH_TABLE = 'MailBatches';
/** Pacing state shared by every instance: one entity per sender mailbox, ETag-guarded. */
export const PACING_TABLE = 'MailPacing';
/** Blob leases, one blob per allowed SMTP connection of a sender mailbox (the connection cap). */
export const PACING_LEASE_CONTAINER = 'mail-pacing';
/** Suppressed recipients (unsubscribes and suppressions added over the API): one entity per (list, address). */
export const SUPPRESSION_TABLE = 'MailSuppressions';
/** Digest items producers write to (`{ digest, recipient, item, idempotencyKey? }`), and its poison queue. */
export const DIGEST_ITEMS_QUEUE = 'mail-digest-items';
export const DIGEST_ITEMS_POISON_QUEUE = `${DIGEST_ITEMS_QUEUE}-poison`;
/** Scheduled digests: pending items, the recipients index and one run record per digest (see src/digests/digestStore.ts). */
export const DIGEST_TABLE = 'MailDigestItems';
/** The app setting (and prefix of the identity-based settings) the Functions host uses for its own storage. */
export const STORAGE_SETTING = 'AzureWebJobsStorage';

/** Storage calls are retried a little by the SDK, then fail fast: an HTTP caller gets 503, the queue host retries. */
export const STORAGE_MAX_TRIES = 3;
const STORAGE_RETRY_DELAY_MS = 200;
const STORAGE_MAX_RETRY_DELAY_MS = 2_000;
/**
 * Every queue, table and blob request (one try) must be answered within this, or it is cut and retried; the same
 * value goes to the service as its own `timeout`. Generous enough for a 48 MB payload upload inside an Azure region;
 * a hung endpoint fails after STORAGE_MAX_TRIES of it plus the back-off (about 91 s).
 */
export const STORAGE_TRY_TIMEOUT_MS = 30_000;

/** Options of {@link createStorage}. */
export interface StorageOptions {
  /** The per-try bound of every storage request; default {@link STORAGE_TRY_TIMEOUT_MS}. */
  tryTimeoutMs?: number;
}

export interface StorageClients {
  outboxQueue: QueueClient;
  poisonQueue: QueueClient;
  statusTable: TableClient;
  idempotencyTable: TableClient;
  payloads: ContainerClient;
  notificationsQueue: QueueClient;
  notificationsPoisonQueue: QueueClient;
  batches: ContainerClient;
  batchTable: TableClient;
  pacingTable: TableClient;
  pacingLeases: ContainerClient;
  suppressionTable: TableClient;
  digestItemsQueue: QueueClient;
  digestItemsPoisonQueue: QueueClient;
  digestTable: TableClient;
  /** Creates the queues, tables and container. Once per process; a failed attempt is retried on the next call. */
  ensureResources(): Promise<void>;
  /**
   * Creates only the resources named, each once per process (a failed attempt is retried on the next call): a path
   * that needs two of them, such as an HTTP accept, does not wait on the first request for all fifteen.
   */
  ensure(...names: StorageResource[]): Promise<void>;
}

/** The queues, tables and containers of {@link StorageClients}, by property name. */
export type StorageResource = Exclude<keyof StorageClients, 'ensureResources' | 'ensure'>;

/** How to reach storage: a connection string (Azurite, shared keys) or service URIs with a token credential. */
export type StorageTarget =
  | { kind: 'connectionString'; connectionString: string }
  | {
      kind: 'identity';
      queueServiceUri: string;
      tableServiceUri: string;
      blobServiceUri: string;
      credential: TokenCredential;
    };

/**
 * Reads the storage target from app settings the way the Functions host does: `AzureWebJobsStorage` (a connection
 * string), or the identity-based `AzureWebJobsStorage__queueServiceUri` / `__tableServiceUri` / `__blobServiceUri`
 * (or `__accountName`) with `__clientId` selecting a user-assigned identity. Throws ConfigError naming the setting.
 */
export function storageTargetFromSettings(settings: Record<string, string | undefined>): StorageTarget {
  const get = (suffix: string) => settings[`${STORAGE_SETTING}${suffix}`]?.trim() || undefined;
  const connectionString = get('');
  if (connectionString) return { kind: 'connectionString', connectionString };
  const account = get('__accountName');
  const queueServiceUri =
    get('__queueServiceUri') ?? (account ? `https://${account}.queue.core.windows.net` : undefined);
  const tableServiceUri =
    get('__tableServiceUri') ?? (account ? `https://${account}.table.core.windows.net` : undefined);
  const blobServiceUri = get('__blobServiceUri') ?? (account ? `https://${account}.blob.core.windows.net` : undefined);
  if (!queueServiceUri && !tableServiceUri && !blobServiceUri) {
    throw new ConfigError([
      `${STORAGE_SETTING} is required: a storage connection string (locally "UseDevelopmentStorage=true" or Azurite's), or the identity-based ${STORAGE_SETTING}__queueServiceUri, ${STORAGE_SETTING}__tableServiceUri and ${STORAGE_SETTING}__blobServiceUri (with ${STORAGE_SETTING}__credential=managedidentity and ${STORAGE_SETTING}__clientId)`,
    ]);
  }
  const missing = [
    ['__queueServiceUri', queueServiceUri],
    ['__tableServiceUri', tableServiceUri],
    ['__blobServiceUri', blobServiceUri],
  ]
    .filter(([, value]) => !value)
    .map(
      ([suffix]) =>
        `${STORAGE_SETTING}${suffix} is required with identity-based storage: the outbox uses queues, tables and blobs`,
    );
  if (missing.length) throw new ConfigError(missing);
  // Named one by one, and not quoted: a service URI can carry a SAS token.
  const notUrls = [
    ['__queueServiceUri', queueServiceUri],
    ['__tableServiceUri', tableServiceUri],
    ['__blobServiceUri', blobServiceUri],
  ]
    .filter(([, value]) => !/^https?:\/\/[^/\s]+/i.test(value as string) || !URL.canParse(value as string))
    .map(
      ([suffix]) =>
        `${STORAGE_SETTING}${suffix} is invalid: the http(s) URL of the storage account's service, e.g. https://<account>.queue.core.windows.net`,
    );
  if (notUrls.length) throw new ConfigError(notUrls);
  const clientId = get('__clientId');
  return {
    kind: 'identity',
    queueServiceUri: queueServiceUri as string,
    tableServiceUri: tableServiceUri as string,
    blobServiceUri: blobServiceUri as string,
    // The storage token's requests are bounded as well: a hung identity endpoint must not hang every storage call.
    credential: new (identityPackage().DefaultAzureCredential)({
      ...(clientId ? { managedIdentityClientId: clientId } : {}),
      httpClient: timeoutHttpClient(CREDENTIAL_TRY_TIMEOUT_MS),
    }),
  };
}

/**
 * @azure/identity, loaded only for identity-based storage: with a connection string (Azurite, account keys) nothing
 * of it is loaded to accept a message. A package require, which esbuild resolves and vitest leaves to Node.
 */
function identityPackage(): typeof import('@azure/identity') {
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  return require('@azure/identity') as typeof import('@azure/identity');
}

const isLocalHttp = (connectionString: string) =>
  /UseDevelopmentStorage=true/i.test(connectionString) || /Endpoint=http:\/\//i.test(connectionString);

/**
 * Adds the per-try timeout to the pipeline a queue or blob service client shares with every client derived from it
 * (getQueueClient, getContainerClient, getBlockBlobClient…). The Storage SDKs have no option for it: their
 * `tryTimeoutInMs` is only sent to the service, and a policy passed as `additionalPolicies` is added again by each
 * derived client, which the pipeline refuses ("Duplicate policy names"). Their context's pipeline is not public API,
 * so its absence fails here, at start-up, rather than leaving storage calls unbounded; the timeout tests pin it.
 */
function boundEveryTry(client: QueueServiceClient | BlobServiceClient, policy: PipelinePolicy): void {
  const pipeline = (client as unknown as { storageClientContext?: { pipeline?: Pipeline } }).storageClientContext
    ?.pipeline;
  if (typeof pipeline?.addPolicy !== 'function') {
    throw new Error('The Azure Storage SDK no longer exposes its client pipeline: storage requests cannot be bounded');
  }
  // After Sign, like `perRetry` additional policies: inside the SDK's retry loop, after the request is signed.
  pipeline.addPolicy(policy, { afterPhase: 'Sign' });
}

/** What a valid AzureWebJobsStorage connection string looks like (the rule a settings error states). */
const CONNECTION_STRING_RULE =
  'a storage connection string, "DefaultEndpointsProtocol=https;AccountName=<account>;AccountKey=<key>;EndpointSuffix=core.windows.net" (or "UseDevelopmentStorage=true" locally)';

/**
 * Builds the clients (no network). Call `ensureResources()` before first use. Every request of every client is
 * bounded by `options.tryTimeoutMs` per try: a hung storage endpoint ends as STORAGE_UNAVAILABLE. A malformed
 * connection string is a ConfigError naming AzureWebJobsStorage and the rule; neither the string nor the SDK's
 * message is repeated, since the string holds the account key.
 */
export function createStorage(target: StorageTarget, options: StorageOptions = {}): StorageClients {
  try {
    return buildStorage(target, options);
  } catch (error) {
    if (target.kind !== 'connectionString' || error instanceof MailError) throw error;
    throw new ConfigError([`${STORAGE_SETTING} is not a valid storage connection string: ${CONNECTION_STRING_RULE}`]);
  }
}

function buildStorage(target: StorageTarget, options: StorageOptions): StorageClients {
  const tryTimeoutMs = options.tryTimeoutMs ?? STORAGE_TRY_TIMEOUT_MS;
  const queueRetry = {
    retryOptions: {
      maxTries: STORAGE_MAX_TRIES,
      retryDelayInMs: STORAGE_RETRY_DELAY_MS,
      maxRetryDelayInMs: STORAGE_MAX_RETRY_DELAY_MS,
      // The service's own timeout is in whole seconds; 0 would be refused, so short (test) bounds send none.
      ...(tryTimeoutMs >= 1_000 ? { tryTimeoutInMs: tryTimeoutMs } : {}),
    },
  };
  const tableOptions = {
    retryOptions: {
      maxRetries: STORAGE_MAX_TRIES - 1,
      retryDelayInMs: STORAGE_RETRY_DELAY_MS,
      maxRetryDelayInMs: STORAGE_MAX_RETRY_DELAY_MS,
    },
    // Each TableClient has a pipeline of its own, so the documented option works here.
    additionalPolicies: [{ policy: tryTimeoutPolicy(tryTimeoutMs), position: 'perRetry' as const }],
  };
  let queues: QueueServiceClient;
  let blobs: BlobServiceClient;
  let table: (name: string) => TableClient;
  if (target.kind === 'connectionString') {
    const cs = target.connectionString;
    queues = QueueServiceClient.fromConnectionString(cs, queueRetry);
    blobs = BlobServiceClient.fromConnectionString(cs, queueRetry);
    // Azurite speaks plain http; the tables SDK refuses that unless told.
    const insecure = isLocalHttp(cs) ? { allowInsecureConnection: true } : {};
    table = (name) => TableClient.fromConnectionString(cs, name, { ...tableOptions, ...insecure });
  } else {
    queues = new QueueServiceClient(target.queueServiceUri, target.credential, queueRetry);
    blobs = new BlobServiceClient(target.blobServiceUri, target.credential, queueRetry);
    table = (name) => new TableClient(target.tableServiceUri, name, target.credential, tableOptions);
  }
  boundEveryTry(queues, tryTimeoutPolicy(tryTimeoutMs));
  boundEveryTry(blobs, tryTimeoutPolicy(tryTimeoutMs));
  const clients = {
    outboxQueue: queues.getQueueClient(OUTBOX_QUEUE),
    poisonQueue: queues.getQueueClient(OUTBOX_POISON_QUEUE),
    statusTable: table(STATUS_TABLE),
    idempotencyTable: table(IDEMPOTENCY_TABLE),
    payloads: blobs.getContainerClient(PAYLOAD_CONTAINER),
    notificationsQueue: queues.getQueueClient(NOTIFICATIONS_QUEUE),
    notificationsPoisonQueue: queues.getQueueClient(NOTIFICATIONS_POISON_QUEUE),
    batches: blobs.getContainerClient(BATCH_CONTAINER),
    batchTable: table(BATCH_TABLE),
    pacingTable: table(PACING_TABLE),
    pacingLeases: blobs.getContainerClient(PACING_LEASE_CONTAINER),
    suppressionTable: table(SUPPRESSION_TABLE),
    digestItemsQueue: queues.getQueueClient(DIGEST_ITEMS_QUEUE),
    digestItemsPoisonQueue: queues.getQueueClient(DIGEST_ITEMS_POISON_QUEUE),
    digestTable: table(DIGEST_TABLE),
  };
  const created = new Map<StorageResource, Promise<void>>();
  const create = (name: StorageResource): Promise<void> => {
    let done = created.get(name);
    if (!done) {
      const client = clients[name];
      done = (client instanceof TableClient ? client.createTable() : client.createIfNotExists()).then(
        () => undefined,
        (error: unknown) => {
          created.delete(name);
          throw error;
        },
      );
      created.set(name, done);
    }
    return done;
  };
  const all = Object.keys(clients) as StorageResource[];
  // Every creation settles before the call does: a failed call leaves nothing in flight, so the next one tries again
  // each resource that was not created.
  const ensure = async (...names: StorageResource[]): Promise<void> => {
    const failed = (await Promise.allSettled(names.map(create))).find((r) => r.status === 'rejected');
    if (failed) throw failed.reason;
  };
  return { ...clients, ensure, ensureResources: () => ensure(...all) };
}

/** The HTTP status of an Azure SDK RestError (undefined for a network failure or anything else). */
export function storageStatusCode(error: unknown): number | undefined {
  const code = (error as { statusCode?: unknown } | null)?.statusCode;
  return typeof code === 'number' ? code : undefined;
}

/**
 * Runs a storage call and returns `answer` when it fails with one of `statuses`: the statuses that answer the
 * question rather than fail it (404: there is none; 409 or 412: someone else wrote first). Anything else is rethrown.
 */
export async function catchStatus<T, A>(
  call: () => Promise<T>,
  statuses: readonly number[],
  answer: A,
): Promise<T | A> {
  try {
    return await call();
  } catch (error) {
    const status = storageStatusCode(error);
    if (status !== undefined && statuses.includes(status)) return answer;
    throw error;
  }
}

/** What @azure/identity throws when the app identity cannot get a token (identity-based storage connections). */
const CREDENTIAL_ERRORS = new Set([
  'AggregateAuthenticationError',
  'CredentialUnavailableError',
  'AuthenticationError',
]);

/** True when the identity-based storage connection could not get a token for storage. */
export function isCredentialError(error: unknown): boolean {
  return error instanceof Error && CREDENTIAL_ERRORS.has(error.name);
}

/**
 * True for errors raised by the Azure Storage SDKs (RestError), including network failures they wrap, and for the
 * credential failures of an identity-based connection: the storage call never happened, and may succeed later.
 */
export function isStorageError(error: unknown): boolean {
  return error instanceof Error && (error.name === 'RestError' || isCredentialError(error));
}

/**
 * Reads a whole blob. A failure while its body streams (cut by the per-try bound, or the connection dropped) comes out
 * of the Storage SDK as an AbortError or a plain "received less data" Error, which would pass for a broken blob. It is
 * a storage failure like any other, so it is rethrown as a RestError that {@link isStorageError} recognises.
 */
export async function downloadBlob(blob: BlobClient): Promise<Buffer> {
  try {
    return await blob.downloadToBuffer();
  } catch (error) {
    if (isStorageError(error)) throw error;
    const cause = ensureError(error);
    throw Object.assign(
      new RestError(`the blob's body could not be read (${cause.message.split('\n')[0]})`, {
        code: 'REQUEST_SEND_ERROR',
      }),
      { cause },
    );
  }
}

/** Turns a storage SDK failure into STORAGE_UNAVAILABLE (transient), keeping the cause; anything else is returned as is. */
export function asStorageUnavailable(error: unknown): MailError | undefined {
  if (error instanceof MailError) return error.code === 'STORAGE_UNAVAILABLE' ? error : undefined;
  if (!isStorageError(error)) return undefined;
  if (isCredentialError(error)) {
    return new MailError(
      'STORAGE_UNAVAILABLE',
      `Storage unavailable: the app identity could not get a storage token; check ${STORAGE_SETTING}__credential and ${STORAGE_SETTING}__clientId (the client id of the user-assigned managed identity)`,
      { cause: error },
    );
  }
  const status = storageStatusCode(error);
  const what =
    status === 403 || status === 401
      ? `storage refused the request (${status}): check the app identity's storage roles or the account key`
      : status
        ? `storage answered ${status}`
        : isTimeoutError(error)
          ? `storage did not answer in time (${(error as Error).message}, after ${STORAGE_MAX_TRIES} tries)`
          : `storage could not be reached (${(error as { code?: string }).code ?? 'network error'}: ${(error as Error).message.split('\n')[0]?.slice(0, 200)})`;
  return new MailError('STORAGE_UNAVAILABLE', `Storage unavailable: ${what}`, { cause: error });
}
