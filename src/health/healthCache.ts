/**
 * The health answer's cache, one per process (per AppServices): a check runs at most once per window whatever the
 * number of callers, so GET /api/health, which is anonymous, cannot be used to hammer Entra ID, Key Vault or
 * Exchange. Concurrent callers share the one check in flight (single-flight).
 */
import type { HealthCheck } from './runHealth';

/** A healthy result is reused this long. */
export const HEALTH_PASS_CACHE_MS = 30_000;
/** An unhealthy one this long: shorter, so that a fixed dependency shows healthy soon, still at most 6 checks a minute. */
export const HEALTH_FAIL_CACHE_MS = 10_000;

export interface HealthResult {
  checks: HealthCheck[];
  /** When the checks finished. */
  checkedAt: number;
  /** True when this caller did not start the check (it came from the cache or from a check already in flight). */
  cached: boolean;
}

export interface HealthCacheOptions {
  passMs?: number;
  failMs?: number;
  now?: () => number;
}

export const isHealthy = (checks: readonly HealthCheck[]): boolean => checks.every((c) => c.status !== 'fail');

export class HealthCache {
  private last: { checks: HealthCheck[]; checkedAt: number } | undefined;
  private inFlight: Promise<{ checks: HealthCheck[]; checkedAt: number }> | undefined;
  private readonly passMs: number;
  private readonly failMs: number;
  private readonly now: () => number;

  constructor(
    private readonly run: () => Promise<HealthCheck[]>,
    options: HealthCacheOptions = {},
  ) {
    this.passMs = options.passMs ?? HEALTH_PASS_CACHE_MS;
    this.failMs = options.failMs ?? HEALTH_FAIL_CACHE_MS;
    this.now = options.now ?? Date.now;
  }

  /** The cached result while it is fresh, else the check in flight, else a new check. */
  async get(): Promise<HealthResult> {
    const last = this.last;
    if (last && this.now() - last.checkedAt < (isHealthy(last.checks) ? this.passMs : this.failMs)) {
      return { ...last, cached: true };
    }
    if (this.inFlight) return { ...(await this.inFlight), cached: true };
    const flight = this.run().then((checks) => ({ checks, checkedAt: this.now() }));
    this.inFlight = flight;
    try {
      this.last = await flight;
      return { ...this.last, cached: false };
    } finally {
      this.inFlight = undefined;
    }
  }
}
