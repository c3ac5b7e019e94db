/**
 * The deployed bundle in a fresh plain Node process: its accept path loads none of the send path (MSAL,
 * @azure/identity, Key Vault, nodemailer and the exporter wait for the first delivery), it loads through its code
 * cache, and with source maps on its stack traces name src/ files.
 */
import { execFile, execFileSync, spawnSync } from 'node:child_process';
import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { build } from 'esbuild';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startAzurite, type AzuriteInstance } from '../../dev/azurite';
import { SEND_PATH_PACKAGES } from '../../src/sendPathPackages';
import { startSandbox, type Sandbox } from '../support/sandboxMailer';

const run = promisify(execFile);
const ROOT = path.resolve(__dirname, '../..');
const ENTRY = path.join(ROOT, 'dist/functions/index.js');
/** The worker, bundled: a plain Node process, as the Functions worker is (tsx would turn source maps on). */
const WORKER = path.join(ROOT, 'out/test/acceptPathWorker.js');

let sandbox: Sandbox;
let azurite: AzuriteInstance;
/** What the build wrote on stderr (its warnings). */
let buildStderr: string;

beforeAll(async () => {
  const built = spawnSync(process.execPath, [path.join(ROOT, 'scripts/build.mjs')], { cwd: ROOT, encoding: 'utf8' });
  if (built.status !== 0) throw new Error(`the build failed: ${built.stderr}`);
  buildStderr = built.stderr;
  mkdirSync(path.dirname(WORKER), { recursive: true });
  await build({
    entryPoints: [path.join(__dirname, '../programs/acceptPathWorker.ts')],
    bundle: true,
    platform: 'node',
    target: 'node20',
    format: 'cjs',
    outfile: WORKER,
    logLevel: 'warning',
  });
  // The worker stand-in finds its module beside itself.
  copyFileSync(
    path.join(ROOT, 'dev/functionsCoreModule.cjs'),
    path.join(path.dirname(WORKER), 'functionsCoreModule.cjs'),
  );
  [sandbox, azurite] = await Promise.all([startSandbox(), startAzurite()]);
}, 120_000);

afterAll(async () => {
  await Promise.all([sandbox?.close(), azurite?.stop()]);
});

/** The packages (by node_modules name) esbuild put into one output file, from dist/meta.json. */
function packagesIn(output: string): Set<string> {
  const meta = JSON.parse(readFileSync(path.join(ROOT, 'dist/meta.json'), 'utf8')) as {
    outputs: Record<string, { inputs: Record<string, unknown> }>;
  };
  const inputs = meta.outputs[output]?.inputs;
  if (!inputs) throw new Error(`${output} is not in dist/meta.json`);
  const names = new Set<string>();
  for (const input of Object.keys(inputs)) {
    const at = input.lastIndexOf('node_modules/');
    if (at < 0) continue;
    const parts = input.slice(at + 'node_modules/'.length).split('/');
    names.add(parts[0]!.startsWith('@') ? `${parts[0]}/${parts[1]}` : parts[0]!);
  }
  return names;
}

describe('the send path is a file of its own', () => {
  it('dist/functions/app.js holds none of the send path packages; dist/functions/sendPath.js holds them all', () => {
    const app = packagesIn('dist/functions/app.js');
    const sendPath = packagesIn('dist/functions/sendPath.js');
    expect(SEND_PATH_PACKAGES.filter((name) => app.has(name))).toEqual([]);
    expect(SEND_PATH_PACKAGES.filter((name) => !sendPath.has(name))).toEqual([]);
    // What accepting needs is in the app bundle.
    for (const name of ['@azure/storage-blob', '@azure/data-tables', '@azure/storage-queue', 'zod', 'handlebars']) {
      expect(app.has(name), name).toBe(true);
    }
  });
});

describe('a fresh process on the bundle', () => {
  it('answers POST /api/messages without loading the send path; the delivery then loads it and sends', async () => {
    const { stdout } = await run(process.execPath, [WORKER, ENTRY], {
      cwd: ROOT,
      env: { PATH: process.env.PATH ?? '', ...sandbox.settings(), AzureWebJobsStorage: azurite.connectionString },
    });
    const result = JSON.parse(stdout.trim().split('\n').pop()!) as {
      loadedFrom: string;
      accepted: number;
      id: string;
      sendPathAfterAccept: boolean;
      sendPathAfterDelivery: boolean;
    };
    expect(result.loadedFrom).toBe('cache');
    expect(result.accepted).toBe(202);
    expect(result.sendPathAfterAccept).toBe(false);
    expect(result.sendPathAfterDelivery).toBe(true);
    const received = sandbox.smtp.messages.filter((m) => m.parsed.subject === 'Accept path');
    expect(received).toHaveLength(1);
    expect(received[0]?.envelope.to).toEqual(['accept-path@example.com']);
  }, 60_000);
});

describe('the code cache', () => {
  it('is trained on a first accept: it holds more than the cache of the loaded bundle alone', () => {
    expect(buildStderr).not.toMatch(/code cache/);
    // The same bundle, loaded and cached without any request, in a directory of its own.
    const dir = mkdtempSync(path.join(os.tmpdir(), 'm365-mailer-cache-'));
    try {
      for (const file of ['index.js', 'app.js'])
        copyFileSync(path.join(ROOT, 'dist/functions', file), path.join(dir, file));
      execFileSync(
        process.execPath,
        ['-e', `require(${JSON.stringify(path.join(dir, 'index.js'))}).writeAppCodeCache()`],
        {
          env: { PATH: process.env.PATH ?? '' },
          stdio: 'ignore',
        },
      );
      const loadedOnly = statSync(path.join(dir, 'app.js.cache')).size;
      const trained = statSync(path.join(ROOT, 'dist/functions/app.js.cache')).size;
      // The first accept compiles the request's parsing, the outbox and the storage SDKs' pipeline: about a sixth more.
      expect(trained).toBeGreaterThan(loadedOnly * 1.08);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('stack traces', () => {
  /** The stack of the ConfigError the mail-outbox trigger throws without mail settings, and how the app loaded. */
  async function stackOfBundleError(nodeArgs: string[]): Promise<{ loadedFrom: string; stack: string }> {
    const { stdout } = await run(process.execPath, [...nodeArgs, WORKER, ENTRY, 'throw'], {
      cwd: ROOT,
      env: { PATH: process.env.PATH ?? '', MAIL_SENDER: 'alerts@contoso.com' },
    });
    return JSON.parse(stdout.trim().split('\n').pop()!) as { loadedFrom: string; stack: string };
  }

  it('with --enable-source-maps, an error thrown in the bundle names the src/ file and line it came from', async () => {
    const { loadedFrom, stack } = await stackOfBundleError(['--enable-source-maps']);
    expect(loadedFrom).toBe('source-maps');
    expect(stack).toMatch(/^MailError: Invalid settings/);
    // The frame that threw: loadConfig, in its TypeScript source, at the line that throws.
    const frame = /at loadConfig \((.*)\/src\/config\.ts:(\d+):\d+\)/.exec(stack);
    expect(frame, stack).not.toBeNull();
    expect(frame![1]).toBe(ROOT);
    const source = readFileSync(path.join(ROOT, 'src/config.ts'), 'utf8').split('\n');
    expect(source[Number(frame![2]) - 1]).toMatch(/throw new ConfigError/);
    expect(stack).toMatch(/at createAppServices \(.*\/src\/appServices\.ts:\d+:\d+\)/);
  });

  it('without it the app loads from its code cache, and the stack names the bundle', async () => {
    const { loadedFrom, stack } = await stackOfBundleError([]);
    expect(loadedFrom).toBe('cache');
    expect(stack).toMatch(/^MailError: Invalid settings/);
    // Named as in the package, wherever it was built or deployed: the code cache keeps the name it was made with.
    expect(stack).toMatch(/at loadConfig \(dist\/functions\/app\.js:\d+:\d+\)/);
  });
});
