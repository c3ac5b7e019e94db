/**
 * One app instance of the fault suite in its own process: the dev host serving the built bundle
 * (dist/functions/index.js) with HTTP routes, queue triggers and timers, as a Functions instance would.
 *
 * Settings come from the environment. TEST_FUNCTION_KEY is the key of its HTTP routes (the same on every instance, as
 * in one Function App); TEST_MESSAGE_LEASE_SECONDS shortens how long a killed instance's in-flight queue messages
 * stay hidden. Prints `{"event":"ready","url":…}` on stdout once it serves; every host and app log line goes to
 * stderr, where the suite scans it for secrets. SIGTERM stops it cleanly; SIGKILL is the crash under test.
 */
import path from 'node:path';
import { startDevHost } from '../../dev/host';

const ROOT = path.resolve(__dirname, '../..');

async function main(): Promise<void> {
  const lease = Number(process.env.TEST_MESSAGE_LEASE_SECONDS ?? 0);
  const host = await startDevHost({
    entry: path.join(ROOT, 'dist/functions/index.js'),
    hostJsonPath: path.join(ROOT, 'host.json'),
    port: 0,
    pollIntervalMs: 250,
    ...(process.env.TEST_FUNCTION_KEY ? { functionKey: process.env.TEST_FUNCTION_KEY } : {}),
    ...(lease > 0 ? { messageLeaseSeconds: lease } : {}),
    log: (line) => process.stderr.write(`${line}\n`),
  });
  process.stdout.write(`${JSON.stringify({ event: 'ready', url: host.url, pid: process.pid })}\n`);
  const stop = () => {
    host.stop().then(
      () => process.exit(0),
      () => process.exit(1),
    );
  };
  process.once('SIGTERM', stop);
  process.once('SIGINT', stop);
}

main().catch((error: unknown) => {
  process.stderr.write(`${error instanceof Error ? (error.stack ?? error.message) : String(error)}\n`);
  process.exit(1);
});
