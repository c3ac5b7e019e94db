/**
 * A process's first accept creates only what it writes (the outbox queue and the status table, and the idempotency
 * table when the request has a key), not all fifteen queues, tables and containers: the first request after a cold
 * start does not wait on the others. `ensureResources()` still creates every one, for the paths that need them.
 */
import { BlobServiceClient } from '@azure/storage-blob';
import { QueueServiceClient } from '@azure/storage-queue';
import { TableServiceClient } from '@azure/data-tables';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createAppServices, type AppServices } from '../../src/appServices';
import { appSettings, startServices, type Services } from '../support/stack';

let services: Services;
let rt: AppServices;

/** Every queue, table and container in the account, sorted by kind. */
async function inventory(connectionString: string) {
  const queues: string[] = [];
  for await (const q of QueueServiceClient.fromConnectionString(connectionString).listQueues()) queues.push(q.name);
  const tables: string[] = [];
  const tableService = TableServiceClient.fromConnectionString(connectionString, { allowInsecureConnection: true });
  for await (const t of tableService.listTables()) if (t.name) tables.push(t.name);
  const containers: string[] = [];
  for await (const c of BlobServiceClient.fromConnectionString(connectionString).listContainers()) {
    containers.push(c.name);
  }
  return { queues: queues.sort(), tables: tables.sort(), containers: containers.sort() };
}

beforeAll(async () => {
  services = await startServices();
  rt = createAppServices(appSettings(services));
});

afterAll(async () => {
  await rt?.close();
  await services?.close();
});

describe('storage resources', () => {
  it('the first accept creates the outbox queue and the status table only; a keyed one adds the idempotency table; ensureResources creates all 15', async () => {
    const cs = services.azurite.connectionString;
    expect(await inventory(cs)).toEqual({ queues: [], tables: [], containers: [] });

    const first = await rt.outbox.accept({ to: 'a@example.com', subject: 'First', text: 'Hello' }, { source: 'http' });
    expect(first.record.status).toBe('queued');
    expect(await inventory(cs)).toEqual({ queues: ['mail-outbox'], tables: ['MailStatus'], containers: [] });

    await rt.outbox.accept(
      { to: 'a@example.com', subject: 'Keyed', text: 'Hello' },
      { source: 'http', idempotencyKeyHeader: 'first-keyed' },
    );
    expect((await inventory(cs)).tables).toEqual(['MailIdempotency', 'MailStatus']);

    await rt.storage.ensureResources();
    const all = await inventory(cs);
    expect(all.queues).toEqual([
      'mail-digest-items',
      'mail-digest-items-poison',
      'mail-notifications',
      'mail-notifications-poison',
      'mail-outbox',
      'mail-outbox-poison',
    ]);
    expect(all.tables).toEqual([
      'MailBatches',
      'MailDigestItems',
      'MailIdempotency',
      'MailPacing',
      'MailStatus',
      'MailSuppressions',
    ]);
    expect(all.containers).toEqual(['mail-batches', 'mail-pacing', 'mail-payloads']);
  });
});
