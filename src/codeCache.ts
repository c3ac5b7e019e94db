/**
 * Loads a CommonJS bundle through V8's code cache: the bytecode V8 compiled for it at build time, so that a cold
 * process neither parses the bundle nor compiles the code it runs while loading.
 *
 * The cache sits beside the bundle (`<bundle>.cache`) and starts with the bundle's build id (the first line of the
 * bundle, which scripts/build.mjs writes into its banner), so a cache from another build is never used. V8 refuses a
 * cache made by another V8 version or with other flags; the bundle is then compiled as usual. With source maps on
 * (`--enable-source-maps`) the bundle is loaded by `require`, whose stack traces Node maps to src/: a script compiled
 * here would keep bundle positions.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import Module, { createRequire } from 'node:module';
import path from 'node:path';
import vm from 'node:vm';

/** How the last {@link requireWithCodeCache} loaded its bundle. */
export type CodeCacheOutcome = 'cache' | 'no-cache' | 'rejected' | 'source-maps';

/** The cache file of a bundle. */
export const codeCacheFile = (bundle: string): string => `${bundle}.cache`;

const buildIdOf = (source: string): string => source.slice(0, source.indexOf('\n'));

interface Loaded {
  script?: vm.Script;
  buildId: string;
  outcome: CodeCacheOutcome;
}

let last: Loaded | undefined;

/** The cache's V8 data when its build id is the bundle's; undefined when there is no usable cache. */
function readCache(bundle: string, buildId: string): Buffer | undefined {
  let data: Buffer;
  try {
    data = readFileSync(codeCacheFile(bundle));
  } catch {
    return undefined;
  }
  const header = Buffer.from(`${buildId}\n`);
  return data.subarray(0, header.length).equals(header) ? data.subarray(header.length) : undefined;
}

/**
 * Loads `bundle` (an absolute path) as a CommonJS module whose parent is `parent`, through its code cache when there
 * is one for this build, and returns its exports. The module is in `require.cache` as `require(bundle)` would put it;
 * stack traces name it `displayName`.
 */
export function requireWithCodeCache(bundle: string, parent: NodeModule, options: { displayName: string }): unknown {
  if (process.sourceMapsEnabled) {
    last = { buildId: '', outcome: 'source-maps' };
    return createRequire(parent.filename)(bundle);
  }
  const source = readFileSync(bundle, 'utf8');
  const buildId = buildIdOf(source);
  const cachedData = readCache(bundle, buildId);
  // Stack traces name the script as it was named when the cache was made (V8 keeps the cached name): a name that
  // holds wherever the package was built and deployed.
  const script = new vm.Script(Module.wrap(source), {
    filename: options.displayName,
    ...(cachedData ? { cachedData } : {}),
  });
  const outcome: CodeCacheOutcome = !cachedData ? 'no-cache' : script.cachedDataRejected ? 'rejected' : 'cache';
  last = { script, buildId, outcome };
  const ModuleClass = Module as unknown as new (
    id: string,
    parent: NodeModule,
  ) => NodeModule & {
    paths: string[];
    loaded: boolean;
  };
  const mod = new ModuleClass(bundle, parent);
  mod.filename = bundle;
  mod.paths = (Module as unknown as { _nodeModulePaths(dir: string): string[] })._nodeModulePaths(path.dirname(bundle));
  require.cache[bundle] = mod;
  try {
    const wrapper = script.runInThisContext() as (...args: unknown[]) => void;
    wrapper.call(mod.exports, mod.exports, createRequire(bundle), mod, bundle, path.dirname(bundle));
  } catch (error) {
    delete require.cache[bundle];
    throw error;
  }
  mod.loaded = true;
  return mod.exports;
}

/** How the last {@link requireWithCodeCache} of this process loaded its bundle (tests, the cold start benchmark). */
export function codeCacheOutcome(): CodeCacheOutcome | undefined {
  return last?.outcome;
}

/**
 * Writes the code cache of the bundle the last {@link requireWithCodeCache} loaded: everything V8 compiled for it so
 * far, which after loading is the bundle's top level and whatever registering the functions ran. The build's step.
 */
export function writeCodeCache(bundle: string): void {
  if (!last?.script) throw new Error(`writeCodeCache: ${bundle} was not loaded by requireWithCodeCache`);
  writeFileSync(
    codeCacheFile(bundle),
    Buffer.concat([Buffer.from(`${last.buildId}\n`), last.script.createCachedData()]),
  );
}
