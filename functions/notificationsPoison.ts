/** Queue mail-notifications-poison: the host gave up on a batch message; the batch becomes `failed` with reason "poison: …". */
import { app, type InvocationContext } from '@azure/functions';
import { getAppServices } from '../src/appServices';
import { NOTIFICATIONS_POISON_QUEUE, STORAGE_SETTING } from '../src/storage/storageClients';
import { invocationOf } from './invocation';
import { dequeueCountOf } from './queue';

export async function notificationsPoison(message: unknown, context: InvocationContext): Promise<void> {
  const services = getAppServices();
  const dequeueCount = dequeueCountOf(context);
  await services.notifications.markPoisoned(message, {
    ...invocationOf(context, services),
    ...(dequeueCount !== undefined ? { dequeueCount } : {}),
  });
}

app.storageQueue('notificationsPoison', {
  queueName: NOTIFICATIONS_POISON_QUEUE,
  connection: STORAGE_SETTING,
  handler: notificationsPoison,
});
