/** Queue mail-outbox-poison: the host gave up on an outbox message; its status becomes `failed` with reason "poison: …". */
import { app, type InvocationContext } from '@azure/functions';
import { parseOutboxMessage } from '../src/outbox/outboxQueue';
import { getAppServices } from '../src/appServices';
import { OUTBOX_POISON_QUEUE, STORAGE_SETTING } from '../src/storage/storageClients';
import { invocationOf } from './invocation';
import { dequeueCountOf } from './queue';

export async function outboxPoison(message: unknown, context: InvocationContext): Promise<void> {
  const services = getAppServices();
  const invocation = invocationOf(context, services);
  const parsed = parseOutboxMessage(message);
  if (!parsed) {
    invocation.logger.error('mail-outbox-poison message is not { id }; dropped');
    return;
  }
  await services.delivery.markPoisoned(parsed.id, { ...invocation, dequeueCount: dequeueCountOf(context) });
}

app.storageQueue('outboxPoison', {
  queueName: OUTBOX_POISON_QUEUE,
  connection: STORAGE_SETTING,
  handler: outboxPoison,
});
