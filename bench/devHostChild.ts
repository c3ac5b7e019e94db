/**
 * The dev host in a process of its own, for benches that load it from outside: the Functions host is not the
 * process its callers run in, so a load generator in the host's own event loop would charge its client work to the
 * app. Runs the built bundle (package.json `main`) with the settings in its environment.
 *
 * Prints `{"url":…,"functionKey":…,"routePrefix":…}` on stdout once its listeners run; SIGTERM, or its stdin closing
 * (the parent gone), stops it cleanly.
 */
import path from 'node:path';
import { startDevHost } from '../dev/host';

const ROOT = path.resolve(__dirname, '..');

async function main(): Promise<void> {
  const host = await startDevHost({
    entry: path.join(ROOT, 'dist/functions/index.js'),
    hostJsonPath: path.join(ROOT, 'host.json'),
    port: 0,
    log: () => {},
  });
  process.stdout.write(
    `${JSON.stringify({ url: host.url, functionKey: host.functionKey, routePrefix: host.routePrefix })}\n`,
  );
  const stop = () => {
    host.stop().then(
      () => process.exit(0),
      () => process.exit(1),
    );
  };
  process.once('SIGTERM', stop);
  process.once('SIGINT', stop);
  // The parent holds our stdin open while it runs: if it dies, stop too rather than hold a port and Azurite.
  process.stdin.resume();
  process.stdin.once('end', stop);
}

main().catch((error: unknown) => {
  process.stderr.write(`${error instanceof Error ? (error.stack ?? error.message) : String(error)}\n`);
  process.exit(1);
});
