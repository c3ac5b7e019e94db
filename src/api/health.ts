/**
 * GET /api/health (anonymous): settings, Key Vault, token and SMTP (connect, STARTTLS, AUTH, QUIT; nothing sent),
 * 200 when no check failed, 503 otherwise. Answers name each check, its status and, on a failure, the app's error
 * code only: no address, id, host name or claim. Cached per process (src/health/healthCache.ts).
 */
import type { AppServices } from '../appServices';
import { ensureError } from '../errors';
import { HealthCache, isHealthy, type HealthCacheOptions, type HealthResult } from '../health/healthCache';
import { HEALTH_CHECK_NAMES, runHealthChecks, settingsFailedChecks, type HealthCheck } from '../health/runHealth';
import type { ApiRequest, ApiResponse } from './apiTypes';
import type { ApiHandler } from './runApi';

/** The JSON body of every health answer. */
export interface HealthBody {
  status: 'healthy' | 'unhealthy';
  /** When the checks ran (ISO 8601). */
  checkedAt: string;
  /** True when this answer reuses a check this request did not start (cache or a check in flight). */
  cached: boolean;
  checks: HealthCheck[];
}

export interface HealthHandlerOptions extends HealthCacheOptions {
  /** Bound of each network step of a check; default HEALTH_STEP_TIMEOUT_MS. */
  timeoutMs?: number;
}

function answer(result: HealthResult): ApiResponse {
  const healthy = isHealthy(result.checks);
  const body: HealthBody = {
    status: healthy ? 'healthy' : 'unhealthy',
    checkedAt: new Date(result.checkedAt).toISOString(),
    cached: result.cached,
    checks: result.checks,
  };
  return { status: healthy ? 200 : 503, headers: { 'Cache-Control': 'no-store' }, jsonBody: body };
}

/** Runs the checks (never rejects) and logs an unhealthy result once per run, with the codes only. */
async function checkAndLog(services: AppServices, options: HealthHandlerOptions): Promise<HealthCheck[]> {
  let checks: HealthCheck[];
  try {
    checks = await runHealthChecks({
      config: services.config,
      redactor: services.redactor,
      slots: services.slots,
      ...(options.timeoutMs !== undefined ? { timeoutMs: options.timeoutMs } : {}),
    });
  } catch (error) {
    const e = ensureError(error);
    services.logger.error('health check failed unexpectedly', { name: e.name, error: e.message });
    checks = HEALTH_CHECK_NAMES.map((name) =>
      name === 'settings' ? { name, status: 'pass', detail: 'ok' } : { name, status: 'fail', detail: 'UNKNOWN' },
    );
  }
  // Not per request: per check run, so the cache bounds these lines too. `m365-mailer doctor` prints the details.
  const failed = checks.filter((c) => c.status === 'fail');
  if (failed.length) {
    services.logger.warn('health check unhealthy', { failed: failed.map((c) => `${c.name}: ${c.detail}`).join('; ') });
  }
  return checks;
}

/** A health handler with its own caches (one per AppServices: one per process in the app). */
export function createHealthHandler(options: HealthHandlerOptions = {}): ApiHandler {
  const caches = new WeakMap<AppServices, HealthCache>();
  const cacheOf = (services: AppServices): HealthCache => {
    let cache = caches.get(services);
    if (!cache) {
      const run = () => checkAndLog(services, options);
      cache = new HealthCache(run, options);
      caches.set(services, cache);
    }
    return cache;
  };
  const handler = async (_request: ApiRequest, services: AppServices): Promise<ApiResponse> =>
    answer(await cacheOf(services).get());
  // getAppServices() throws on bad settings: that is an unhealthy app (503, settings failed), not a 500. It needs no
  // cache: the settings error is remembered by getAppServices and nothing on the network is asked.
  return Object.assign(handler, {
    withoutServices: (error: unknown): ApiResponse =>
      answer({ checks: settingsFailedChecks(error), checkedAt: (options.now ?? Date.now)(), cached: false }),
  });
}

/** Handles GET /api/health for the Functions app. */
export const getHealth = createHealthHandler();
