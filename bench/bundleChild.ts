/**
 * Bundles a bench child the way scripts/build.mjs bundles the app (esbuild, CommonJS, minified, templates embedded,
 * the send path's packages left to dist/functions/sendPath.js and loaded on first use), so that a child measuring
 * memory runs the code the Functions host runs: a bundle under plain `node`, not TypeScript sources under the tsx
 * loader, which alone adds about 35 MiB of resident memory.
 */
import { copyFileSync, mkdtempSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { build } from 'esbuild';
import { sendPathPlugin, SEND_PATH_FILE } from '../scripts/sendPathPlugin';
import { templatesPlugin } from '../scripts/templatesPlugin';

const ROOT = path.resolve(__dirname, '..');

/**
 * Bundles `entry` (a path under the repository) into a fresh temporary directory beside a copy of the built send
 * path (`npm run build` first) and returns the bundle's path. The caller removes the directory when done.
 */
export async function bundleBenchChild(entry: string): Promise<{ file: string; dir: string }> {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'm365-mailer-bench-'));
  const name = path.basename(entry).replace(/\.ts$/, '');
  await build({
    entryPoints: { [name]: path.resolve(ROOT, entry) },
    outdir: dir,
    bundle: true,
    platform: 'node',
    target: 'node20',
    format: 'cjs',
    minify: true,
    keepNames: true,
    legalComments: 'none',
    logLevel: 'warning',
    external: ['@azure/functions-core'],
    define: { 'import.meta.url': '__bundleFileUrl' },
    banner: { js: "const __bundleFileUrl = require('node:url').pathToFileURL(__filename).href;" },
    plugins: [templatesPlugin({ templatesDir: path.join(ROOT, 'templates') }), sendPathPlugin()],
  });
  copyFileSync(path.join(ROOT, 'dist/functions', SEND_PATH_FILE), path.join(dir, SEND_PATH_FILE));
  return { file: path.join(dir, `${name}.js`), dir };
}
