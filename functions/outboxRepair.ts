/**
 * Timer: every 5 minutes, re-enqueues outbox records that should long have been delivered but have no queue message
 * (a crash between writing the record and enqueueing it, or a worker killed holding its lease). Delivery completes
 * idempotently, so a message that was merely late costs one dropped duplicate.
 */
import { app, type InvocationContext, type Timer } from '@azure/functions';
import { getRuntime } from '../src/runtime';

/** NCRONTAB (6 fields): second 0 of every 5th minute. */
export const OUTBOX_REPAIR_SCHEDULE = '0 */5 * * * *';

export async function outboxRepair(_timer: Timer, context: InvocationContext): Promise<void> {
  const rt = getRuntime();
  const ids = await rt.outbox.requeueOverdue();
  if (ids.length > 0)
    rt.logger.warn('re-enqueued overdue outbox records', { count: ids.length, invocationId: context.invocationId });
}

app.timer('outboxRepair', { schedule: OUTBOX_REPAIR_SCHEDULE, handler: outboxRepair });
