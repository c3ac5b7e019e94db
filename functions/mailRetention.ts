/** Timer: every hour, deletes status records, idempotency keys, payloads and batches past MAIL_RETENTION_DAYS, in bounded pages. */
import { app, type InvocationContext, type Timer } from '@azure/functions';
import { getAppServices } from '../src/appServices';
import { invocationOf } from './invocation';

/** NCRONTAB (6 fields): minute 17 of every hour, away from the top of the hour when scheduled work piles up. */
export const RETENTION_SCHEDULE = '0 17 * * * *';

export async function mailRetention(_timer: Timer, context: InvocationContext): Promise<void> {
  const services = getAppServices();
  const invocation = invocationOf(context, services);
  const report = await services.retention.run({ invocation });
  if (!report.complete) {
    invocation.logger.info('retention stopped at its budget; the next run carries on');
  }
}

app.timer('mailRetention', { schedule: RETENTION_SCHEDULE, handler: mailRetention });
