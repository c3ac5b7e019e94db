/** The health cache's windows and single flight with a fake clock, and which setting names a settings failure may show. */
import { describe, expect, it } from 'vitest';
import { ConfigError } from '../../src/config';
import { HEALTH_FAIL_CACHE_MS, HEALTH_PASS_CACHE_MS, HealthCache } from '../../src/health/healthCache';
import { badSettingNames, settingsFailedChecks, type HealthCheck } from '../../src/health/runHealth';

const healthy: HealthCheck[] = [{ name: 'settings', status: 'pass', detail: 'ok' }];
const unhealthy: HealthCheck[] = [{ name: 'token', status: 'fail', detail: 'TOKEN_FAILED' }];

function clockedCache(results: HealthCheck[][]) {
  let time = 1_000_000;
  let runs = 0;
  const cache = new HealthCache(
    () => {
      runs++;
      return Promise.resolve(results[Math.min(runs - 1, results.length - 1)] as HealthCheck[]);
    },
    { now: () => time },
  );
  return { cache, runs: () => runs, advance: (ms: number) => (time += ms) };
}

describe('HealthCache', () => {
  it('reuses a healthy result for HEALTH_PASS_CACHE_MS, then checks again', async () => {
    const c = clockedCache([healthy]);
    expect((await c.cache.get()).cached).toBe(false);
    c.advance(HEALTH_PASS_CACHE_MS - 1);
    expect((await c.cache.get()).cached).toBe(true);
    expect(c.runs()).toBe(1);
    c.advance(1);
    expect((await c.cache.get()).cached).toBe(false);
    expect(c.runs()).toBe(2);
  });

  it('reuses an unhealthy result only for the shorter HEALTH_FAIL_CACHE_MS', async () => {
    expect(HEALTH_FAIL_CACHE_MS).toBeLessThan(HEALTH_PASS_CACHE_MS);
    const c = clockedCache([unhealthy, healthy]);
    expect((await c.cache.get()).checks).toEqual(unhealthy);
    c.advance(HEALTH_FAIL_CACHE_MS - 1);
    expect((await c.cache.get()).cached).toBe(true);
    c.advance(1);
    const next = await c.cache.get();
    expect(next).toMatchObject({ cached: false, checks: healthy });
    expect(c.runs()).toBe(2);
  });

  it('runs one check for concurrent callers; only the first is not cached', async () => {
    let release: (checks: HealthCheck[]) => void = () => {};
    let runs = 0;
    const cache = new HealthCache(() => {
      runs++;
      return new Promise<HealthCheck[]>((resolve) => (release = resolve));
    });
    const pending = [cache.get(), cache.get(), cache.get()];
    release(healthy);
    const results = await Promise.all(pending);
    expect(runs).toBe(1);
    expect(results.map((r) => r.cached)).toEqual([false, true, true]);
  });

  it('forgets a check that threw: the next caller starts a new one', async () => {
    let runs = 0;
    const cache = new HealthCache(() => (++runs === 1 ? Promise.reject(new Error('boom')) : Promise.resolve(healthy)));
    await expect(cache.get()).rejects.toThrow('boom');
    expect((await cache.get()).cached).toBe(false);
    expect(runs).toBe(2);
  });
});

describe('settings failures', () => {
  it('name known settings only, never a value a problem quotes', () => {
    const error = new ConfigError([
      'MAIL_TLS_CA_FILE points at a file that does not exist (/secret/path.pem): set it',
      'MAIL_SENDER is invalid: set it to the UPN',
      'alerts@contoso.com is not a setting name',
      'MAIL_SENDER is required',
    ]);
    expect(badSettingNames(error)).toEqual(['MAIL_TLS_CA_FILE', 'MAIL_SENDER']);
    const checks = settingsFailedChecks(error);
    expect(checks[0]).toEqual({
      name: 'settings',
      status: 'fail',
      detail: 'CONFIG_INVALID: MAIL_TLS_CA_FILE, MAIL_SENDER',
    });
    expect(JSON.stringify(checks)).not.toMatch(/secret\/path|contoso/);
    expect(checks.slice(1).map((c) => [c.name, c.status])).toEqual([
      ['key-vault', 'skip'],
      ['token', 'skip'],
      ['smtp', 'skip'],
    ]);
  });

  it('a non-settings error still fails settings with a code only', () => {
    expect(settingsFailedChecks(new Error('boom at /etc/x'))[0]).toEqual({
      name: 'settings',
      status: 'fail',
      detail: 'CONFIG_INVALID',
    });
  });
});
