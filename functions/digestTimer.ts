/** Timer on MAIL_DIGEST_SCHEDULE: runs every digest with pending items. A missed run (isPastDue) simply runs now. */
import { app, type InvocationContext, type Timer } from '@azure/functions';
import { getAppServices } from '../src/appServices';
import { digestScheduleSetting, readSettings } from '../src/config';
import { invocationOf } from './invocation';

export async function digestTimer(timer: Timer, context: InvocationContext): Promise<void> {
  const services = getAppServices();
  const invocation = invocationOf(context, services);
  const { logger } = invocation;
  if (timer.isPastDue) logger.info('digest run past due: running now');
  const reports = await services.digests.runAll(invocation);
  for (const report of reports) {
    if (report.outcome === 'busy' || report.outcome === 'superseded') {
      logger.info('digest run skipped: another run holds it', {
        digest: report.digest,
        outcome: report.outcome,
      });
    }
  }
}

/**
 * The schedule is the app setting, read when the worker registers its functions (the Functions host and the dev host
 * both take the schedule the worker reports); local.settings.json is read too outside Azure.
 */
function schedule(): string {
  try {
    return digestScheduleSetting(readSettings(process.env));
  } catch {
    return digestScheduleSetting(process.env);
  }
}

app.timer('digestTimer', { schedule: schedule(), handler: digestTimer });
