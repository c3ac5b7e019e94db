// Bundles the Functions app and the CLI with esbuild: CommonJS, Node 20, @azure/functions-core left to the host.
import { build } from 'esbuild';
import { rmSync, existsSync } from 'node:fs';
import { tsImport } from 'tsx/esm/api';

// templates/ is embedded into the bundle (src/templateBundle.ts is swapped for the JSON), so nothing reads it at run time.
const { templatesPlugin } = await tsImport('./templatesPlugin.ts', import.meta.url);

rmSync('dist', { recursive: true, force: true });

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

await build({
  ...common,
  entryPoints,
  outdir: 'dist',
  banner: {
    js: "/* m365-mailer bundle */\nconst __bundleFileUrl = require('node:url').pathToFileURL(__filename).href;",
  },
});
