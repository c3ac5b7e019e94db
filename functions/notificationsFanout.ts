/** Queue mail-notifications: fans a batch (or the next chunk of a stored one) out into the outbox; storage failures throw, so the host retries. */
import { app, type InvocationContext } from '@azure/functions';
import { getAppServices } from '../src/appServices';
import { NOTIFICATIONS_QUEUE, STORAGE_SETTING } from '../src/storage/storageClients';
import { invocationOf } from './invocation';
import { dequeueCountOf } from './queue';
import type { FanoutProgress } from '../src/notifications/notifications';

export async function notificationsFanout(message: unknown, context: InvocationContext): Promise<void> {
  const services = getAppServices();
  const dequeueCount = dequeueCountOf(context);
  await services.notifications.handleMessage(message, {
    ...invocationOf(context, services),
    ...(dequeueCount !== undefined ? { dequeueCount } : {}),
    // A large batch runs as many invocations: one line each in the host's log says how far it is (counts only).
    onChunk: (progress) => context.log(chunkProgressLine(progress)),
  });
}

const count = (n: number) => n.toLocaleString('en-US');

/** "batch <id>: 4,000/10,000 recipients accepted", with the rejected ones counted apart when there are any. */
export function chunkProgressLine(p: FanoutProgress): string {
  const share = `${count(p.processed)}/${count(p.total)} recipients`;
  return p.rejected === 0
    ? `batch ${p.batchId}: ${share} accepted`
    : `batch ${p.batchId}: ${share} processed (${count(p.accepted)} accepted, ${count(p.rejected)} rejected)`;
}

app.storageQueue('notificationsFanout', {
  queueName: NOTIFICATIONS_QUEUE,
  connection: STORAGE_SETTING,
  handler: notificationsFanout,
});
