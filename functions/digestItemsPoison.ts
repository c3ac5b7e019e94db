/** Queue mail-digest-items-poison: logs a refused item with its reason, or stores one the host gave up on once storage is back. */
import { app, type InvocationContext } from '@azure/functions';
import { getAppServices } from '../src/appServices';
import { DIGEST_ITEMS_POISON_QUEUE, STORAGE_SETTING } from '../src/storage/storageClients';
import { invocationOf } from './invocation';
import { dequeueCountOf } from './queue';

export async function digestItemsPoison(message: unknown, context: InvocationContext): Promise<void> {
  const services = getAppServices();
  const dequeueCount = dequeueCountOf(context);
  await services.digests.markPoisoned(message, {
    ...invocationOf(context, services),
    ...(dequeueCount !== undefined ? { dequeueCount } : {}),
  });
}

app.storageQueue('digestItemsPoison', {
  queueName: DIGEST_ITEMS_POISON_QUEUE,
  connection: STORAGE_SETTING,
  handler: digestItemsPoison,
});
