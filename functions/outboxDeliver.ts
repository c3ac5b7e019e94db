/** Queue mail-outbox: delivers one outbox message; a storage failure throws, so the host retries and finally poisons it. */
import { app, type InvocationContext } from '@azure/functions';
import { parseOutboxMessage } from '../src/outbox/outboxQueue';
import { getAppServices } from '../src/appServices';
import { OUTBOX_QUEUE, STORAGE_SETTING } from '../src/storage/storageClients';
import { invocationOf } from './invocation';
import { dequeueCountOf } from './queue';

export async function outboxDeliver(message: unknown, context: InvocationContext): Promise<void> {
  const services = getAppServices();
  const invocation = invocationOf(context, services);
  const parsed = parseOutboxMessage(message);
  if (!parsed) {
    // Retrying cannot fix a message that is not { id }: log it and let it go.
    invocation.logger.error('mail-outbox message is not { id }; dropped');
    return;
  }
  await services.delivery.deliver(parsed.id, { ...invocation, dequeueCount: dequeueCountOf(context) });
}

app.storageQueue('outboxDeliver', { queueName: OUTBOX_QUEUE, connection: STORAGE_SETTING, handler: outboxDeliver });
