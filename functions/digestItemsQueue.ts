/** Queue mail-digest-items: stores one digest item; a bad message goes to the poison queue, storage failures throw. */
import { app, type InvocationContext } from '@azure/functions';
import { getAppServices } from '../src/appServices';
import { DIGEST_ITEMS_QUEUE, STORAGE_SETTING } from '../src/storage/storageClients';
import { invocationOf } from './invocation';

export async function digestItemsQueue(message: unknown, context: InvocationContext): Promise<void> {
  const services = getAppServices();
  await services.digests.handleQueueMessage(message, invocationOf(context, services));
}

app.storageQueue('digestItemsQueue', {
  queueName: DIGEST_ITEMS_QUEUE,
  connection: STORAGE_SETTING,
  handler: digestItemsQueue,
});
