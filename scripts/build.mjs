// Bundles the Functions app and the CLI with esbuild: CommonJS, Node 20, @azure/functions-core left to the host.
import { build } from 'esbuild';
import { existsSync, mkdirSync, readdirSync, renameSync, rmSync } from 'node:fs';
import path from 'node:path';
import { tsImport } from 'tsx/esm/api';

// templates/ is embedded into the bundle (src/templates/templateBundle.ts is swapped for the JSON), so nothing reads it at run time.
const { templatesPlugin } = await tsImport('./templatesPlugin.ts', import.meta.url);

const common = {
  bundle: true,
  platform: 'node',
  target: 'node20',
  format: 'cjs',
  sourcemap: 'linked',
  legalComments: 'none',
  logLevel: 'warning',
  // The Functions host injects this module; it is never on disk.
  external: ['@azure/functions-core'],
  // esbuild resolves `import` statements to packages' ESM builds, and some (@azure/storage-common's crc64) read
  // import.meta.url, which CommonJS output leaves empty: give them this file's URL (see the banner below).
  define: { 'import.meta.url': '__bundleFileUrl' },
  plugins: [templatesPlugin({ templatesDir: 'templates' })],
};

const entryPoints = { cli: 'src/bin.ts' };
if (existsSync('functions/index.ts')) entryPoints['functions/index'] = 'functions/index.ts';

// Build beside dist/ and move each file in with an atomic rename: a process loading dist/ while another build runs
// (tests, npm run dev, the demo) never sees a half-written file.
const staging = `dist.staging-${process.pid}`;
rmSync(staging, { recursive: true, force: true });
await build({
  ...common,
  entryPoints,
  outdir: staging,
  banner: {
    js: "/* m365-mailer bundle */\nconst __bundleFileUrl = require('node:url').pathToFileURL(__filename).href;",
  },
});

for (const entry of readdirSync(staging, { recursive: true, withFileTypes: true })) {
  if (!entry.isFile()) continue;
  const from = path.join(entry.parentPath, entry.name);
  const to = path.join('dist', path.relative(staging, from));
  mkdirSync(path.dirname(to), { recursive: true });
  renameSync(from, to);
}
rmSync(staging, { recursive: true, force: true });
