/**
 * The deployed entry, dist/functions/index.js (package.json main): loads the app bundle beside it,
 * dist/functions/app.js, through V8's code cache (src/codeCache.ts). Loading the app registers its functions.
 */
import path from 'node:path';
import { codeCacheOutcome, requireWithCodeCache, writeCodeCache } from './codeCache';

const APP_BUNDLE = path.join(__dirname, 'app.js');

requireWithCodeCache(APP_BUNDLE, module, { displayName: 'dist/functions/app.js' });

/** How the app bundle was loaded: from its code cache, without one, or by require (source maps on). */
export const appLoadedFrom = codeCacheOutcome();

/** Writes the app bundle's code cache (scripts/build.mjs runs this once the bundle is built). */
export function writeAppCodeCache(): void {
  writeCodeCache(APP_BUNDLE);
}
