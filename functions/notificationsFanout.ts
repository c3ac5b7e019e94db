/** Queue mail-notifications: fans a batch (or the next chunk of a stored one) out into the outbox; storage failures throw, so the host retries. */
import { app, type InvocationContext } from '@azure/functions';
import { getAppServices } from '../src/appServices';
import { NOTIFICATIONS_QUEUE, STORAGE_SETTING } from '../src/storage/storageClients';
import { invocationOf } from './invocation';
import { dequeueCountOf } from './queue';

export async function notificationsFanout(message: unknown, context: InvocationContext): Promise<void> {
  const services = getAppServices();
  const dequeueCount = dequeueCountOf(context);
  await services.notifications.handleMessage(message, {
    ...invocationOf(context, services),
    ...(dequeueCount !== undefined ? { dequeueCount } : {}),
  });
}

app.storageQueue('notificationsFanout', {
  queueName: NOTIFICATIONS_QUEUE,
  connection: STORAGE_SETTING,
  handler: notificationsFanout,
});
