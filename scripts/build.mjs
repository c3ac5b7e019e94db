// Bundles the Functions app and the CLI with esbuild: CommonJS, Node 20, @azure/functions-core left to the host.
// The app is dist/functions/app.js (HTTP, the outbox, storage, templates) and dist/functions/sendPath.js (the
// packages only sending needs: MSAL, @azure/identity, Key Vault, nodemailer, the telemetry exporter), which app.js
// requires on first use. The entry, dist/functions/index.js, loads app.js through the V8 code cache written here
// (app.js.cache) from a training run that accepts one message into a throwaway Azurite. dist/meta.json is esbuild's metafile of the app (`npm run bundle-report`).
import { execFileSync } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { build } from 'esbuild';
import {
  copyFileSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  renameSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { tsImport } from 'tsx/esm/api';

// templates/ is embedded into the bundle (src/templates/templateBundle.ts is swapped for the JSON), so nothing reads it at run time.
const { templatesPlugin } = await tsImport('./templatesPlugin.ts', import.meta.url);
const { sendPathPlugin } = await tsImport('./sendPathPlugin.ts', import.meta.url);

const common = {
  bundle: true,
  platform: 'node',
  target: 'node20',
  format: 'cjs',
  sourcemap: 'linked',
  legalComments: 'none',
  minify: true,
  keepNames: true,
  logLevel: 'warning',
  // The Functions host injects this module; it is never on disk.
  external: ['@azure/functions-core'],
  // esbuild resolves `import` statements to packages' ESM builds, and some (@azure/storage-common's crc64) read
  // import.meta.url, which CommonJS output leaves empty: give them this file's URL (see the banner below).
  define: { 'import.meta.url': '__bundleFileUrl' },
  // The first line is the build id: a code cache is used only with the bundle it was made from (src/codeCache.ts).
  banner: {
    js: `/* m365-mailer bundle ${randomUUID()} */\nconst __bundleFileUrl = require('node:url').pathToFileURL(__filename).href;`,
  },
  plugins: [templatesPlugin({ templatesDir: 'templates' })],
};

// Build beside dist/ and move each file in with an atomic rename: a process loading dist/ while another build runs
// (tests, npm run dev, the demo) never sees a half-written file.
const staging = `dist.staging-${process.pid}`;
rmSync(staging, { recursive: true, force: true });
// The CLI sends at once: it stays one file.
const builds = [
  build({
    ...common,
    entryPoints: { cli: 'src/bin.ts' },
    outdir: staging,
    plugins: [templatesPlugin({ templatesDir: 'templates', mustReplace: false })],
  }),
];
if (existsSync('functions/index.ts')) {
  builds.push(
    build({
      ...common,
      entryPoints: { 'functions/app': 'functions/index.ts' },
      outdir: staging,
      metafile: true,
      plugins: [...common.plugins, sendPathPlugin()],
    }),
    build({
      ...common,
      entryPoints: { 'functions/sendPath': 'src/sendPathPackages.ts' },
      outdir: staging,
      metafile: true,
      plugins: [],
    }),
    build({ ...common, entryPoints: { 'functions/index': 'src/bundleEntry.ts' }, outdir: staging, plugins: [] }),
  );
}
// The code cache's training run needs an Azurite and its own script: both are made ready while the app bundles.
const training = existsSync('functions/index.ts') ? prepareTraining() : undefined;
try {
  const [, app, sendPath] = await Promise.all(builds);
  if (app && sendPath) {
    const outputs = { ...app.metafile.outputs, ...sendPath.metafile.outputs };
    const meta = {
      inputs: { ...app.metafile.inputs, ...sendPath.metafile.inputs },
      // Output paths as they are once moved into dist/.
      outputs: Object.fromEntries(
        Object.entries(outputs).map(([file, output]) => [path.join('dist', path.relative(staging, file)), output]),
      ),
    };
    writeFileSync(path.join(staging, 'meta.json'), JSON.stringify(meta));
    await writeCodeCache(path.resolve(staging, 'functions/index.js'), training);
  }
} finally {
  await training?.close();
}

/**
 * Starts what the code cache's training run needs (scripts/codeCacheTraining.ts bundled into a temporary directory,
 * and a throwaway Azurite) without waiting for it. Neither promise rejects unhandled: a failure is met in
 * writeCodeCache. `close()` stops the Azurite and removes the directory, whatever happened.
 */
function prepareTraining() {
  const work = mkdtempSync(path.join(os.tmpdir(), 'm365-mailer-codecache-'));
  const script = build({
    entryPoints: { codeCacheTraining: 'scripts/codeCacheTraining.ts' },
    outdir: work,
    bundle: true,
    platform: 'node',
    target: 'node20',
    format: 'cjs',
    logLevel: 'warning',
    external: ['@azure/functions-core'],
  }).then(() => {
    copyFileSync('dev/functionsCoreModule.cjs', path.join(work, 'functionsCoreModule.cjs'));
    return path.join(work, 'codeCacheTraining.js');
  });
  const azurite = tsImport('../dev/azurite.ts', import.meta.url).then(({ startAzurite }) => startAzurite());
  script.catch(() => {});
  azurite.catch(() => {});
  return {
    work,
    script,
    azurite,
    close: async () => {
      await azurite.then(
        (instance) => instance.stop(),
        () => {},
      );
      rmSync(work, { recursive: true, force: true });
    },
  };
}

/**
 * Writes the app bundle's V8 code cache from a training run: a plain Node process, as the worker runs the app, loads
 * the bundle and accepts one message into the throwaway Azurite (scripts/codeCacheTraining.ts), so the cache holds
 * what a cold instance's first accept compiles. If that run cannot happen, the cache holds what loading compiled.
 */
async function writeCodeCache(entry, training) {
  try {
    const [script, azurite] = await Promise.all([training.script, training.azurite]);
    // Run outside the repository, so no local.settings.json is read.
    execFileSync(process.execPath, [script, entry], {
      cwd: training.work,
      stdio: ['ignore', 'ignore', 'pipe'],
      env: { PATH: process.env.PATH ?? '', AzureWebJobsStorage: azurite.connectionString },
    });
  } catch (error) {
    // The error's own line (a Node stack trace opens with the file and line it was thrown at).
    const lines = String(error?.stderr || error?.message || error)
      .trim()
      .split('\n');
    const reason = lines.find((line) => /Error\b/.test(line)) ?? lines[0];
    console.warn(`build: the code cache holds the loaded bundle only (its training run failed: ${reason})`);
    execFileSync(process.execPath, ['-e', `require(${JSON.stringify(entry)}).writeAppCodeCache()`], {
      stdio: 'ignore',
      env: { PATH: process.env.PATH ?? '' },
    });
  }
}

for (const entry of readdirSync(staging, { recursive: true, withFileTypes: true })) {
  if (!entry.isFile()) continue;
  const from = path.join(entry.parentPath, entry.name);
  const to = path.join('dist', path.relative(staging, from));
  mkdirSync(path.dirname(to), { recursive: true });
  renameSync(from, to);
}
rmSync(staging, { recursive: true, force: true });
