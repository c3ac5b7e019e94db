/**
 * The fault suite at CI scale: 400 messages accepted over HTTP and drained by three dev-host instances while the
 * sandbox injects about 20 % transient SMTP faults, one instance is SIGKILLed and replaced while Key Vault is down,
 * and Entra ID answers 5xx in a burst. The full scale is `npm run bench -- --only=faults` (test/support/faultRun.ts).
 */
import { describe, expect, it } from 'vitest';
import net from 'node:net';
import { CI_SCALE, runFaultScenario } from '../support/faultRun';
import { connectionPortsOf } from '../support/processSockets';

/** Above the run's own deadline (5 min) plus the build, start-up, settling and shutdown around it. */
const TEST_TIMEOUT_MS = 8 * 60_000;

describe('the fault suite at CI scale', () => {
  it(
    'every message ends sent or failed with a reason; duplicates only from kills; no violation, no self-caused 432, no secret',
    async () => {
      const r = await runFaultScenario(CI_SCALE, {
        progressEveryMs: 15_000,
        onProgress: (p) =>
          process.stdout.write(
            `fault suite: ${Math.round(p.elapsedMs / 1000)} s, accepted ${p.accepted}, delivered ${p.delivered}, sent ${p.sent}, failed ${p.failed}, pending ${p.pending}, kills ${p.kills}\n`,
          ),
      });
      const { duplicateDetails, logTails, ...figures } = r;
      process.stdout.write(`fault suite figures: ${JSON.stringify(figures)}\n`);
      const diagnosis = JSON.stringify({ duplicateDetails, logTails: r.deadlineHit || r.stuck > 0 ? logTails : [] });

      // The scenario happened as planned: faults at about the rate asked for, of every kind, the kill, the outages.
      expect(r.deadlineHit, diagnosis).toBe(false);
      expect(r.accepted).toBe(CI_SCALE.messages);
      expect(r.faultRate).toBeGreaterThan(CI_SCALE.faultFraction * 0.75);
      expect(r.faultRate).toBeLessThan(CI_SCALE.faultFraction * 1.5);
      for (const kind of ['reply421', 'reply421OnCommand', 'force432', 'dropMidData', 'delay'] as const)
        expect(r.injected[kind], kind).toBeGreaterThan(0);
      expect(r.kills).toHaveLength(CI_SCALE.kills.max);
      expect(r.restartsDuringKeyVaultOutage).toBeGreaterThanOrEqual(1);
      expect(r.keyVault503).toBeGreaterThan(0);
      expect(r.entra5xx).toBeGreaterThan(0);

      // Nothing lost, nothing stuck, every failure classified.
      expect(r.lost, JSON.stringify(r.lostIds)).toBe(0);
      expect(r.stuck, JSON.stringify(r.stuckIds)).toBe(0);
      expect(r.sent + r.failed).toBe(r.accepted);
      expect(r.unclassifiedFailures, JSON.stringify(r.failedByCode)).toBe(0);
      // Every fault here is transient: a message fails only once its retries are used up.
      expect(r.failedWithoutRetries, JSON.stringify(r.failureSamples)).toBe(0);

      // Each duplicate is a copy Exchange had before a kill, sent again after it.
      expect(r.unexplainedDuplicates, diagnosis).toBe(0);
      expect(r.kills.reduce((n, k) => n + k.duplicates, 0)).toBe(r.duplicates);
      expect(r.received).toBe(r.sent + r.deliveredButFailed + r.duplicates);

      // Exchange's limits, kept through all of it.
      expect(r.rateViolations).toBe(0);
      expect(r.maxInAnyWindow).toBeLessThanOrEqual(CI_SCALE.ratePerWindow);
      // ... and it bound: more messages than one window allows, most of a window's worth in one.
      expect(r.received).toBeGreaterThan(CI_SCALE.ratePerWindow);
      expect(r.maxInAnyWindow).toBeGreaterThan(CI_SCALE.ratePerWindow * 0.6);
      expect(r.forced432).toBeGreaterThan(0);
      expect(r.selfCaused432).toBe(0);
      expect(r.connectionViolations).toBe(0);
      expect(r.peakSessions).toBeLessThanOrEqual(3);

      // No secret in any output, and every output was there to be scanned.
      expect(r.leaks).toEqual([]);
      for (const source of ['host logs', 'status records', 'telemetry', 'SMTP transcripts', 'HTTP answers'])
        expect(r.scannedBytes[source], source).toBeGreaterThan(0);
    },
    TEST_TIMEOUT_MS,
  );
});

describe('which process held an SMTP session', () => {
  it.runIf(process.platform === 'linux')(
    'reads the client ports of the connections a process has open to a port, from /proc',
    async () => {
      const server = net.createServer(() => {});
      await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
      const port = (server.address() as net.AddressInfo).port;
      const client = net.connect(port, '127.0.0.1');
      try {
        await new Promise<void>((resolve) => client.once('connect', resolve));
        expect(connectionPortsOf(process.pid, port)).toEqual([client.localPort]);
        expect(connectionPortsOf(process.pid, port + 1 === 65_536 ? 1 : port + 1)).toEqual([]);
      } finally {
        client.destroy();
        await new Promise<void>((resolve) => server.close(() => resolve()));
      }
    },
  );
});
