/** Cold start: the deployed esbuild bundle (its entry, package.json main) vs the unbundled tsc output plus node_modules, each loaded in fresh processes. */
import { execFileSync } from 'node:child_process';
import { copyFileSync, cpSync, mkdirSync, rmSync, statSync } from 'node:fs';
import path from 'node:path';
import { build } from 'esbuild';
import { Progress } from '../dev/progress';

export interface ColdStartFigures {
  runs: number;
  bundle: VariantFigures & { bytes: number; sendPathBytes: number };
  unbundled: VariantFigures;
  ratioFirstResponse: number;
}

/** Medians of one variant, and what its first request had loaded (packages, or bundle files; from the last run). */
export interface VariantFigures {
  importMs: number;
  firstResponseMs: number;
  sinceProcessStartMs: number;
  loaded: string[];
}

const ROOT = path.resolve(__dirname, '..');

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 ? (sorted[mid] as number) : ((sorted[mid - 1] as number) + (sorted[mid] as number)) / 2;
}

const round = (n: number) => Math.round(n * 10) / 10;

/** Builds both artefacts and the child, then alternates fresh processes of each `runs` times. */
export async function runColdStartBench(
  env: Record<string, string>,
  options: { runs?: number } = {},
): Promise<ColdStartFigures> {
  // The machine is shared and noisy: enough runs that the median holds.
  const runs = options.runs ?? 11;
  const builds = new Progress({ label: 'coldstart: building', total: 3, unit: 'builds', rate: false });
  builds.update(0, 'the esbuild bundle');
  execFileSync(process.execPath, [path.join(ROOT, 'scripts/build.mjs')], { cwd: ROOT, stdio: 'inherit' });
  builds.update(1, 'tsc output');
  rmSync(path.join(ROOT, 'out/tsc'), { recursive: true, force: true });
  execFileSync(process.execPath, [require.resolve('typescript/bin/tsc'), '-p', 'tsconfig.build.json'], {
    cwd: ROOT,
    stdio: 'inherit',
  });
  // The unbundled app reads templates/ next to its sources, as under tsx.
  cpSync(path.join(ROOT, 'templates'), path.join(ROOT, 'out/tsc/templates'), { recursive: true });
  builds.update(2, 'the child');
  const childDir = path.join(ROOT, 'out/bench');
  mkdirSync(childDir, { recursive: true });
  await build({
    entryPoints: [path.join(ROOT, 'bench/coldStartChild.ts')],
    bundle: true,
    platform: 'node',
    target: 'node20',
    format: 'cjs',
    outfile: path.join(childDir, 'coldStartChild.js'),
    logLevel: 'warning',
  });
  copyFileSync(path.join(ROOT, 'dev/functionsCoreModule.cjs'), path.join(childDir, 'functionsCoreModule.cjs'));
  builds.update(3);
  builds.done();

  const entries = {
    bundle: path.join(ROOT, 'dist/functions/index.js'),
    unbundled: path.join(ROOT, 'out/tsc/functions/index.js'),
  };
  type Sample = Record<'status' | 'importMs' | 'firstResponseMs' | 'sinceProcessStartMs', number> & {
    loaded: string[];
  };
  const samples = { bundle: [] as Sample[], unbundled: [] as Sample[] };
  const progress = new Progress({ label: 'coldstart: fresh processes', total: runs * 2, unit: 'processes' });
  for (let i = 0; i < runs; i++) {
    for (const variant of ['bundle', 'unbundled'] as const) {
      progress.update(progress.count, variant);
      // BENCH_COLDSTART_NODE_ARGS adds Node flags to the children (e.g. `--cpu-prof --cpu-prof-dir=/tmp/cold`).
      const extra = (process.env.BENCH_COLDSTART_NODE_ARGS ?? '').split(' ').filter(Boolean);
      const output = execFileSync(
        process.execPath,
        [...extra, path.join(childDir, 'coldStartChild.js'), entries[variant]],
        {
          cwd: ROOT,
          env: { PATH: process.env.PATH ?? '', ...env },
          encoding: 'utf8',
        },
      );
      const result = JSON.parse(output.trim().split('\n').at(-1) as string) as Sample;
      if (result.status !== 202) throw new Error(`cold start ${variant}: POST /api/messages answered ${result.status}`);
      samples[variant].push(result);
      progress.tick();
    }
  }
  progress.done();
  const summary = (list: Sample[]): VariantFigures => ({
    importMs: round(median(list.map((s) => s.importMs))),
    firstResponseMs: round(median(list.map((s) => s.firstResponseMs))),
    sinceProcessStartMs: round(median(list.map((s) => s.sinceProcessStartMs))),
    loaded: list.at(-1)?.loaded ?? [],
  });
  const bundle = {
    ...summary(samples.bundle),
    bytes: statSync(path.join(path.dirname(entries.bundle), 'app.js')).size,
    sendPathBytes: statSync(path.join(path.dirname(entries.bundle), 'sendPath.js')).size,
  };
  const unbundled = summary(samples.unbundled);
  return {
    runs,
    bundle,
    unbundled,
    ratioFirstResponse: Math.round((bundle.firstResponseMs / unbundled.firstResponseMs) * 100) / 100,
  };
}
