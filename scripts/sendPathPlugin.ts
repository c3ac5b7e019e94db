/** esbuild plugin that leaves the send path's packages to dist/functions/sendPath.js: the app bundle requires that file for them, on first use. */
import type { Plugin } from 'esbuild';
import { SEND_PATH_PACKAGES } from '../src/sendPathPackages';

/** The send path bundle, beside the app bundle (its path relative to dist/functions/index.js). */
export const SEND_PATH_FILE = './sendPath.js';
const NAMESPACE = 'm365-mailer-send-path';

const escape = (name: string) => name.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&');

/**
 * Every import or require of one of SEND_PATH_PACKAGES (the package itself, not a subpath) becomes a small module
 * that requires SEND_PATH_FILE and takes the package from it. Where the app reaches such a module only through a
 * lazy require or `import()`, esbuild wraps it so that it runs on first use: the send path file is then neither read
 * nor parsed before that.
 */
export function sendPathPlugin(): Plugin {
  const filter = new RegExp(`^(${SEND_PATH_PACKAGES.map(escape).join('|')})$`);
  return {
    name: 'm365-mailer-send-path',
    setup(build) {
      build.onResolve({ filter }, (args) => ({ path: args.path, namespace: NAMESPACE }));
      build.onResolve({ filter: new RegExp(`^${escape(SEND_PATH_FILE)}$`), namespace: NAMESPACE }, () => ({
        path: SEND_PATH_FILE,
        external: true,
      }));
      build.onLoad({ filter: /.*/, namespace: NAMESPACE }, (args) => ({
        contents: `module.exports = require(${JSON.stringify(SEND_PATH_FILE)}).sendPathPackage(${JSON.stringify(args.path)});`,
        loader: 'js',
      }));
    },
  };
}
