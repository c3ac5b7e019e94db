/**
 * MAIL_RETRY_BACKOFF_SECONDS: the back-off after a transient failure, 30 s doubling per attempt up to 1 h by default,
 * scaled down by the fault suite along with the rate and daily windows. Read by the app's own services.
 */
import { describe, expect, it } from 'vitest';
import { ConfigError, loadConfig } from '../../src/config';
import { defaultBackoffSeconds } from '../../src/outbox/delivery';
import { createAppServices } from '../../src/appServices';

/** Valid settings for a client-secret app; nothing here connects anywhere. */
const settings = {
  MAIL_SENDER: 'alerts@contoso.test',
  MAIL_TENANT_ID: '00000000-0000-4000-8000-000000000001',
  MAIL_CLIENT_ID: '00000000-0000-4000-8000-000000000002',
  MAIL_KEY_VAULT_URL: 'https://vault.example.test',
  AzureWebJobsStorage: 'UseDevelopmentStorage=true',
};

/** The back-offs of attempts 1..n as the app's delivery computes them. */
function schedule(env: Record<string, string>, attempts: number): number[] {
  const rt = createAppServices({ ...settings, ...env });
  try {
    return Array.from({ length: attempts }, (_, i) => rt.delivery.deps.backoffSeconds!(i + 1));
  } finally {
    void rt.close();
  }
}

describe('MAIL_RETRY_BACKOFF_SECONDS', () => {
  it('defaults to 30 s doubling per attempt, capped at 1 h, with at most 10 % jitter', () => {
    expect(loadConfig(settings).retryBackoffSeconds).toBe(30);
    const waits = schedule({}, 9);
    const nominal = [30, 60, 120, 240, 480, 960, 1920, 3600, 3600];
    waits.forEach((wait, i) => {
      expect(wait, `attempt ${i + 1}`).toBeGreaterThanOrEqual(nominal[i]!);
      expect(wait, `attempt ${i + 1}`).toBeLessThanOrEqual(Math.round(nominal[i]! * 1.1));
    });
  });

  it('scales the whole schedule, cap included, and never goes under a second', () => {
    const waits = schedule({ MAIL_RETRY_BACKOFF_SECONDS: '1.25' }, 9);
    const nominal = [1.25, 2.5, 5, 10, 20, 40, 80, 150, 150];
    waits.forEach((wait, i) => {
      expect(wait, `attempt ${i + 1}`).toBeGreaterThanOrEqual(Math.max(1, Math.round(nominal[i]!)));
      expect(wait, `attempt ${i + 1}`).toBeLessThanOrEqual(Math.round(nominal[i]! * 1.1));
    });
    expect(defaultBackoffSeconds(1, 0.1)).toBe(1);
  });

  it('a bad value is named, never repeated', () => {
    for (const value of ['0', '-3', 'pasted-secret-value']) {
      expect(() => loadConfig({ ...settings, MAIL_RETRY_BACKOFF_SECONDS: value })).toThrow(ConfigError);
      try {
        loadConfig({ ...settings, MAIL_RETRY_BACKOFF_SECONDS: value });
      } catch (error) {
        expect((error as Error).message).toContain('MAIL_RETRY_BACKOFF_SECONDS must be a positive number of seconds');
        if (value.length > 2) expect((error as Error).message).not.toContain(value);
      }
    }
  });
});
