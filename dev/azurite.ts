/** Starts Azurite (Blob, Queue, Table) in memory on free loopback ports, with telemetry off, for tests and `npm run dev`. */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';

/** Azurite's well-known development account (public, documented by Microsoft; not a secret). */
export const DEV_ACCOUNT = 'devstoreaccount1';
export const DEV_ACCOUNT_KEY =
  'Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==';
const START_TIMEOUT_MS = 30_000;
const HOST = '127.0.0.1';

/** Options of {@link startAzurite}. */
export interface AzuriteOptions {
  /** false: Azurite's output goes to this process's stdout and stderr. Default true. */
  silent?: boolean;
  /**
   * Serve HTTPS with this certificate and accept OAuth bearer tokens (`--oauth basic`: Azurite checks a token's
   * lifetime, issuer prefix and audience, not its signature). Shared key access still works. Default: plain HTTP.
   */
  oauth?: { certPem: string; keyPem: string };
}

export interface AzuriteInstance {
  /** A full connection string (for AzureWebJobsStorage). */
  connectionString: string;
  /** The service URIs, account included (for the identity-based AzureWebJobsStorage__*ServiceUri settings). */
  serviceUris: { blob: string; queue: string; table: string };
  ports: { blob: number; queue: number; table: number };
  pid: number | undefined;
  stop(): Promise<void>;
}

/** Asks the OS for a free port on loopback. */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.unref();
    server.on('error', reject);
    server.listen(0, HOST, () => {
      const address = server.address();
      server.close(() =>
        typeof address === 'object' && address ? resolve(address.port) : reject(new Error('no port')),
      );
    });
  });
}

function canConnect(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = net.connect(port, HOST);
    socket.once('connect', () => {
      socket.destroy();
      resolve(true);
    });
    socket.once('error', () => resolve(false));
  });
}

/** How many times start-up is tried with fresh ports when Azurite exits at once (another process took a port). */
const START_ATTEMPTS = 3;
/** How much of Azurite's stderr an error quotes. */
const STDERR_TAIL_CHARS = 2_000;

/** Azurite exited before its three services accepted connections; `stderr` is the end of what it printed. */
class AzuriteExitedError extends Error {
  constructor(readonly stderr: string) {
    super(`Azurite exited during start-up${stderr ? `: ${stderr}` : ''}`);
  }
}

/**
 * Starts Azurite as a child process and waits until all three services accept connections. A free port can be
 * taken by another process between {@link freePort} and Azurite binding it, so an early exit is retried on new ports.
 */
export async function startAzurite(options: AzuriteOptions = {}): Promise<AzuriteInstance> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await startOnce(options);
    } catch (error) {
      if (!(error instanceof AzuriteExitedError) || attempt >= START_ATTEMPTS) throw error;
    }
  }
}

async function startOnce(options: AzuriteOptions): Promise<AzuriteInstance> {
  const [blob, queue, table] = [await freePort(), await freePort(), await freePort()];
  // In-memory persistence: only the debug log and extent metadata would touch the working directory.
  const location = mkdtempSync(path.join(tmpdir(), 'azurite-'));
  const entry = path.join(path.dirname(require.resolve('azurite/package.json')), 'dist/src/azurite.js');
  const tls: string[] = [];
  if (options.oauth) {
    const cert = path.join(location, 'azurite-cert.pem');
    const key = path.join(location, 'azurite-key.pem');
    writeFileSync(cert, options.oauth.certPem);
    writeFileSync(key, options.oauth.keyPem, { mode: 0o600 });
    tls.push('--oauth', 'basic', '--cert', cert, '--key', key);
  }
  const child: ChildProcess = spawn(
    process.execPath,
    [
      entry,
      '--inMemoryPersistence',
      '--disableTelemetry',
      '--skipApiVersionCheck',
      '--silent',
      '--blobHost',
      HOST,
      '--blobPort',
      String(blob),
      '--queueHost',
      HOST,
      '--queuePort',
      String(queue),
      '--tableHost',
      HOST,
      '--tablePort',
      String(table),
      ...tls,
    ],
    { stdio: options.silent === false ? 'inherit' : ['ignore', 'ignore', 'pipe'], cwd: location },
  );
  let exited = false;
  let stderr = '';
  child.stderr?.setEncoding('utf8');
  child.stderr?.on('data', (chunk: string) => (stderr = (stderr + chunk).slice(-STDERR_TAIL_CHARS)));
  child.once('exit', () => (exited = true));
  const stop = async () => {
    if (!exited) {
      await new Promise<void>((resolve) => {
        child.once('exit', () => resolve());
        child.kill('SIGTERM');
        setTimeout(() => child.kill('SIGKILL'), 5_000).unref();
      });
    }
    rmSync(location, { recursive: true, force: true });
  };
  const deadline = Date.now() + START_TIMEOUT_MS;
  for (;;) {
    if (exited) {
      rmSync(location, { recursive: true, force: true });
      throw new AzuriteExitedError(stderr.trim());
    }
    const ready = await Promise.all([canConnect(blob), canConnect(queue), canConnect(table)]);
    if (ready.every(Boolean)) break;
    if (Date.now() > deadline) {
      await stop();
      throw new Error(`Azurite did not start within ${START_TIMEOUT_MS} ms`);
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  const protocol = options.oauth ? 'https' : 'http';
  const uri = (port: number) => `${protocol}://${HOST}:${port}/${DEV_ACCOUNT}`;
  return {
    connectionString:
      `DefaultEndpointsProtocol=${protocol};AccountName=${DEV_ACCOUNT};AccountKey=${DEV_ACCOUNT_KEY};` +
      `BlobEndpoint=${uri(blob)};QueueEndpoint=${uri(queue)};TableEndpoint=${uri(table)};`,
    serviceUris: { blob: uri(blob), queue: uri(queue), table: uri(table) },
    ports: { blob, queue, table },
    pid: child.pid,
    stop,
  };
}
