/**
 * Cold-start cost of telemetry: `npx tsx bench/telemetry-import.ts [--runs N] [--json]`.
 *
 * src/telemetry.ts is compiled the way the deployed bundle is (esbuild, CommonJS, packages external) into a
 * temporary directory, then each case is timed in a fresh `node` process, N runs (default 5), median reported:
 *   - telemetry module: `require` of the compiled src/telemetry.ts alone (what every cold start pays);
 *   - exporter + SDKs: `require` of @azure/monitor-opentelemetry-exporter, @opentelemetry/sdk-logs,
 *     @opentelemetry/sdk-metrics, @opentelemetry/resources and @opentelemetry/api (paid once, off the
 *     request path, on the first tracked event);
 *   - first use: require telemetry + createTelemetry + trackEvent, until the deferred load has built the
 *     exporters (no network: nothing is flushed);
 *   - the same two with everything inlined by esbuild (as in the deployed bundle), where parsing is paid at
 *     require time and module initialisation is still deferred to the first tracked event.
 * Each child also reports whether any OpenTelemetry / exporter module was loaded by the plain import.
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { build } from 'esbuild';

const ROOT = path.resolve(__dirname, '..');
const HEAVY = /[\\/]node_modules[\\/]@(opentelemetry|azure[\\/]monitor-opentelemetry-exporter)[\\/]/;

interface Sample {
  ms: number;
  heavyModules: number;
}

function child(script: string): Sample {
  const out = execFileSync(process.execPath, ['-e', script], {
    cwd: ROOT,
    env: { ...process.env, NODE_PATH: path.join(ROOT, 'node_modules') },
    encoding: 'utf8',
  });
  return JSON.parse(out.trim().split('\n').pop() as string) as Sample;
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 ? (sorted[mid] as number) : ((sorted[mid - 1] as number) + (sorted[mid] as number)) / 2;
}

const report = (start: string) =>
  `process.stdout.write(JSON.stringify({ ms: Number(process.hrtime.bigint() - ${start}) / 1e6, heavyModules: Object.keys(require.cache).filter((f) => ${HEAVY}.test(f)).length }) + '\\n');`;

export async function measureTelemetryImport(
  runs = 5,
): Promise<Record<string, { medianMs: number; runsMs: number[]; heavyModules: number }>> {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'm365-telemetry-bench-'));
  try {
    const compiled = path.join(dir, 'telemetry.js');
    await build({
      entryPoints: [path.join(ROOT, 'src/telemetry.ts')],
      bundle: true,
      packages: 'external',
      platform: 'node',
      target: 'node20',
      format: 'cjs',
      outfile: compiled,
      logLevel: 'warning',
    });
    // As the deployed bundle carries it: every package inlined, module bodies initialised on first require.
    const bundled = path.join(dir, 'telemetry.bundle.js');
    await build({
      entryPoints: [path.join(ROOT, 'src/telemetry.ts')],
      bundle: true,
      platform: 'node',
      target: 'node20',
      format: 'cjs',
      outfile: bundled,
      logLevel: 'warning',
    });
    const file = JSON.stringify(compiled);
    const firstUse = (target: string) => `const t0 = process.hrtime.bigint();
        const { createTelemetry } = require(${target});
        const t = createTelemetry({ connectionString: 'InstrumentationKey=00000000-0000-4000-8000-000000000001;IngestionEndpoint=https://127.0.0.1:9/' });
        t.trackEvent('MailSent', { source: 'cli' });
        const wait = () => { if (!t.pipeline) return setImmediate(wait); ${report('t0')} process.exit(0); };
        wait();`;
    const cases: Record<string, string> = {
      'require src/telemetry.ts': `const t0 = process.hrtime.bigint(); require(${file}); ${report('t0')}`,
      'require exporter + sdk-logs + sdk-metrics': `const t0 = process.hrtime.bigint();
        require('@azure/monitor-opentelemetry-exporter'); require('@opentelemetry/sdk-logs'); require('@opentelemetry/sdk-metrics');
        require('@opentelemetry/resources'); require('@opentelemetry/api'); ${report('t0')}`,
      'first trackEvent until exporters built': firstUse(file),
      'bundle: require src/telemetry.ts (all inlined)': `const t0 = process.hrtime.bigint(); require(${JSON.stringify(bundled)}); ${report('t0')}`,
      'bundle: first trackEvent until exporters built': firstUse(JSON.stringify(bundled)),
    };
    const results: Record<string, { medianMs: number; runsMs: number[]; heavyModules: number }> = {};
    for (const [name, script] of Object.entries(cases)) {
      const samples: Sample[] = [];
      for (let i = 0; i < runs; i++) samples.push(child(script));
      const runsMs = samples.map((s) => Math.round(s.ms * 10) / 10);
      results[name] = {
        medianMs: median(runsMs),
        runsMs,
        heavyModules: Math.max(...samples.map((s) => s.heavyModules)),
      };
    }
    return results;
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

async function main(): Promise<void> {
  const runsArg = process.argv.indexOf('--runs');
  const runs = runsArg > 0 ? Number(process.argv[runsArg + 1]) : 5;
  const results = await measureTelemetryImport(runs);
  if (process.argv.includes('--json')) {
    process.stdout.write(`${JSON.stringify({ node: process.version, runs, results }, null, 2)}\n`);
    return;
  }
  process.stdout.write(`Telemetry import cost, ${runs} fresh node processes each, ${process.version}\n`);
  const rows = [['case', 'median ms', 'runs (ms)', 'OTel/exporter modules loaded']];
  for (const [name, r] of Object.entries(results))
    rows.push([
      name,
      r.medianMs.toFixed(1),
      r.runsMs.join(' '),
      name.startsWith('bundle') ? '(inlined)' : String(r.heavyModules),
    ]);
  const widths = rows[0]!.map((_, c) => Math.max(...rows.map((row) => (row[c] ?? '').length)));
  for (const row of rows) process.stdout.write(`${row.map((cell, c) => cell.padEnd(widths[c] ?? 0)).join('  ')}\n`);
}

if (require.main === module) {
  main().catch((error: unknown) => {
    process.stderr.write(`${error instanceof Error ? error.stack : String(error)}\n`);
    process.exit(1);
  });
}
