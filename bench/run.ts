/** `npm run bench`: every figure is a ratio measured side by side in one run; prints a table and writes bench/results/latest.json. */
import { mkdirSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { startAzurite } from '../dev/azurite';
import { startSandbox } from '../sandbox';
import { applySandboxEnv } from '../test/support/sandboxMailer';
import { runColdStartBench } from './coldStart';
import { runDeliveryBench } from './delivery';
import { runDigestBench } from './digest';
import { runFanoutBench } from './fanout';
import { runFaultsBench } from './faults';
import { runHostileBench, TARGET_AFTER_RATIO } from './hostile';
import { runHttpAcceptBench } from './httpAccept';
import { runPacingBench } from './pacing';

const HUGE = 1_000_000_000;

/** PASS or FALLS SHORT, beside each figure that has a target. */
const verdict = (ok: boolean) => (ok ? 'PASS' : 'FALLS SHORT');
/** The targets the figures are held to (the README and docs claim them). */
const TARGETS = {
  coreVsRaw: 0.9,
  utilisation: 0.95,
  maxSessions: 3,
  /** The bundle must answer its first request sooner than unbundled tsc output. */
  coldStartRatio: 1,
  /** One fan-out invocation must finish well inside functionTimeout (600 s): a tenth of it. */
  chunkSeconds: 60,
  /** The digest run's peak RSS at the largest size. */
  digestRssMiB: 256,
  /** Time per item at the largest size over the smallest: flat (a quarter of slack for noise). */
  digestPerItemRatio: 1.25,
} as const;

function table(rows: string[][]): void {
  const widths = rows[0]!.map((_, c) => Math.max(...rows.map((r) => (r[c] ?? '').length)));
  for (const row of rows) process.stdout.write(`${row.map((cell, c) => cell.padEnd(widths[c] ?? 0)).join('  ')}\n`);
  process.stdout.write('\n');
}

async function main(): Promise<void> {
  const quick = process.argv.includes('--quick');
  const only = process.argv.find((a) => a.startsWith('--only='))?.slice('--only='.length);
  const want = (name: string) => !only || only.split(',').includes(name);
  const [sandbox, azurite] = await Promise.all([
    // The sandbox must not throttle the benchmark: pacing is measured on its own.
    startSandbox({ smtpLimits: { dailyRecipients: HUGE, ratePerMinute: HUGE } }),
    startAzurite(),
  ]);
  applySandboxEnv(sandbox);
  const env = { ...sandbox.settings(), AzureWebJobsStorage: azurite.connectionString };
  const results: Record<string, unknown> = {
    when: new Date().toISOString(),
    command: `npm run bench${process.argv.length > 2 ? ` -- ${process.argv.slice(2).join(' ')}` : ''}`,
    machine: {
      cpus: os.cpus().length,
      model: os.cpus()[0]?.model,
      node: process.version,
      memGiB: Math.round(os.totalmem() / 2 ** 30),
    },
  };
  try {
    if (want('delivery')) {
      const d = await runDeliveryBench(sandbox, quick ? { messages: 300, naiveMessages: 60, rounds: 1 } : {});
      results.delivery = d;
      table([
        [`Delivery (msg/s, median of ${d.rounds})`, 'value', 'ratio', 'target'],
        [`core sender, ${d.messages} messages`, String(d.coreSender.msgPerSec), '1.00', ''],
        [
          'raw pooled nodemailer, fixed token',
          String(d.rawPooled.msgPerSec),
          `core/raw = ${d.ratioCoreVsRaw}`,
          `>= ${TARGETS.coreVsRaw}: ${verdict(d.ratioCoreVsRaw >= TARGETS.coreVsRaw)}`,
        ],
        [
          `naive: new transport + token per message (${d.naiveMessages})`,
          String(d.naive.msgPerSec),
          `core/naive = ${d.ratioCoreVsNaive}`,
          `> 1: ${verdict(d.ratioCoreVsNaive > 1)}`,
        ],
      ]);
    }
    if (want('http')) {
      const h = await runHttpAcceptBench(env, quick ? { requests: 200 } : {});
      results.httpAccept = h;
      table([
        [`HTTP at ${h.concurrency} concurrent, ${h.requests} requests`, 'p50 ms', 'p99 ms', 'req/s'],
        [
          'POST /api/messages (accept: blob + table + queue)',
          String(h.post.p50Ms),
          String(h.post.p99Ms),
          String(h.post.perSec),
        ],
        ['GET /api/messages/{id} (one table read)', String(h.get.p50Ms), String(h.get.p99Ms), String(h.get.perSec)],
        ['ratio POST/GET p50', String(h.ratioPostVsGetP50), '', ''],
      ]);
    }
    if (want('coldstart')) {
      const c = await runColdStartBench(env, quick ? { runs: 3 } : {});
      results.coldStart = c;
      table([
        [
          `Cold start (median of ${c.runs} fresh processes)`,
          'import ms',
          'first POST answered ms',
          'since process start ms',
        ],
        [
          `esbuild bundle (${Math.round(c.bundle.bytes / 1024)} KiB)`,
          String(c.bundle.importMs),
          String(c.bundle.firstResponseMs),
          String(c.bundle.sinceProcessStartMs),
        ],
        [
          'tsc output + node_modules',
          String(c.unbundled.importMs),
          String(c.unbundled.firstResponseMs),
          String(c.unbundled.sinceProcessStartMs),
        ],
        [
          'ratio bundle/unbundled (first POST)',
          '',
          String(c.ratioFirstResponse),
          `< ${TARGETS.coldStartRatio}: ${verdict(c.ratioFirstResponse < TARGETS.coldStartRatio)}`,
        ],
      ]);
    }
    if (want('pacing')) {
      const p = await runPacingBench(quick ? { messages: 300 } : {});
      results.pacing = p;
      table([
        [
          `Pacing: ${p.workers} instances, ${p.messages} messages, limit ${p.limit.ratePerWindow} per ${p.limit.windowMs / 1000} s`,
          'value',
          'target',
        ],
        [
          'utilisation of the allowed rate',
          `${(p.utilisation * 100).toFixed(1)} %`,
          `>= ${TARGETS.utilisation * 100} %: ${verdict(p.utilisation >= TARGETS.utilisation)}`,
        ],
        [
          'most sends in any window',
          String(p.maxInAnyWindow),
          `<= ${p.limit.ratePerWindow}: ${verdict(p.maxInAnyWindow <= p.limit.ratePerWindow)}`,
        ],
        [
          'rate violations / 432 rejections (sandbox)',
          `${p.rateViolations} / ${p.rejections432}`,
          `0 / 0: ${verdict(p.rateViolations === 0 && p.rejections432 === 0)}`,
        ],
        [
          'peak concurrent SMTP sessions',
          String(p.maxConcurrentSessions),
          `<= ${TARGETS.maxSessions}: ${verdict(p.maxConcurrentSessions <= TARGETS.maxSessions)}`,
        ],
        ['longest pause between two sends (ms)', String(p.longestGapMs), ''],
      ]);
    }
    if (want('fanout')) {
      const f = await runFanoutBench(env, { recipients: quick ? 1_000 : 10_000 });
      results.fanout = f;
      table([
        [`Notification fan-out, ${f.recipients} recipients`, 'value', 'target'],
        ['wall time (s)', String(Math.round(f.wallMs / 100) / 10), ''],
        ['per recipient (ms)', String(f.perRecipientMs), ''],
        [
          'slowest chunk (s), of a 600 s functionTimeout',
          String(Math.round(f.maxChunkMs / 100) / 10),
          `<= ${TARGETS.chunkSeconds}: ${verdict(f.maxChunkMs <= TARGETS.chunkSeconds * 1000)}`,
        ],
        ['peak RSS (MiB), baseline', `${f.peakRssMiB} (${f.baselineRssMiB})`, ''],
        ['GET /api/notifications/{batchId} (ms)', String(f.countQueryMs), ''],
      ]);
    }
    if (want('digest')) {
      const sizesArg = process.argv.find((a) => a.startsWith('--digest-items='))?.slice('--digest-items='.length);
      const g = await runDigestBench(env, {
        sizes: sizesArg ? sizesArg.split(',').map(Number) : quick ? [1_000, 5_000] : [10_000, 100_000],
        recipients: quick ? 1_000 : 10_000,
      });
      results.digest = g;
      const largest = g.sizes[g.sizes.length - 1];
      table([
        ['Digests: intake + one run (delivery not included)', ...g.sizes.map((s) => `${s.items} items`), 'target'],
        ['recipients', ...g.sizes.map((s) => String(s.recipients)), ''],
        ['intake wall time (s)', ...g.sizes.map((s) => String(Math.round(s.intakeMs / 100) / 10)), ''],
        ['run wall time (s)', ...g.sizes.map((s) => String(Math.round(s.runMs / 100) / 10)), ''],
        [
          'per item, intake + run (ms)',
          ...g.sizes.map((s) => String(s.perItemMs)),
          `largest/smallest = ${g.perItemRatio}, <= ${TARGETS.digestPerItemRatio}: ${verdict(g.perItemRatio <= TARGETS.digestPerItemRatio)}`,
        ],
        [
          'raw Azurite reference, per entity (ms)',
          ...g.sizes.map((s) => String(s.rawPerEntityMs)),
          'transactions per partition, then one read per partition',
        ],
        [
          'per item over the reference',
          ...g.sizes.map((s) => String(s.perItemOverRaw)),
          `largest/smallest = ${g.perItemOverRawRatio}`,
        ],
        [
          'run peak RSS (MiB), baseline',
          ...g.sizes.map((s) => `${s.runPeakRssMiB} (${s.runBaselineRssMiB})`),
          `< ${TARGETS.digestRssMiB} at ${largest?.items}: ${verdict((largest?.runPeakRssMiB ?? Infinity) < TARGETS.digestRssMiB)}`,
        ],
        [
          'at the peak: heap used, heap total, external (MiB)',
          ...g.sizes.map((s) => `${s.runPeakHeapUsedMiB}, ${s.runPeakHeapTotalMiB}, ${s.runPeakExternalMiB}`),
          '',
        ],
      ]);
    }
    if (want('hostile')) {
      const h = await runHostileBench(env, quick ? { reps: 3, requests: 20 } : {});
      results.hostile = h;
      table([
        [
          `Hostile POST /api/messages bodies vs a normal body of the same size (median of ${h.reps}, in process)`,
          'bytes',
          'hostile ms',
          'worst ms',
          'normal ms',
          'ratio',
          `<= ${h.target}x`,
        ],
        ...h.shapes.map((s) => [
          `${s.shape} (${s.outcome}; normal: ${s.normal})`,
          String(s.bytes),
          String(s.hostileMedianMs),
          String(s.hostileWorstMs),
          String(s.normalMedianMs),
          String(s.ratio),
          s.verdict,
        ]),
        ['worst ratio', '', '', '', '', String(h.worstRatio), h.worstRatio <= h.target ? 'PASS' : 'FALLS SHORT'],
      ]);
      table([
        [
          `Dev host over HTTP: ${h.http.requests} normal POSTs before / right after the hostile ones`,
          'p50 ms',
          'p99 ms',
        ],
        ['before', String(h.http.beforeP50Ms), String(h.http.beforeP99Ms)],
        [`after (first: ${h.http.firstAfterMs} ms)`, String(h.http.afterP50Ms), String(h.http.afterP99Ms)],
        [`ratio after/before p50 (<= ${TARGET_AFTER_RATIO})`, String(h.http.ratioP50), h.http.verdict],
        [
          `hostile answers: ${h.http.hostileAnswers.map((a) => a.status).join(' ')}`,
          `slowest ${Math.max(...h.http.hostileAnswers.map((a) => a.ms))} ms`,
          '',
        ],
      ]);
    }
    if (want('faults')) {
      const f = await runFaultsBench({ quick });
      results.faults = f;
      table([
        [
          `Fault suite: ${f.requested} messages, ${f.scale.workers} instances, ${f.scale.ratePerWindow} per ${f.scale.windowMs / 1000} s, a kill every ${f.scale.kills.everyMs / 1000} s`,
          'value',
          'target',
          '',
        ],
        ...f.rows.map((row) => [row.figure, row.value, row.target, row.verdict]),
        ['fault suite', '', '', f.verdict],
      ]);
    }
    const out = path.resolve('bench/results/latest.json');
    mkdirSync(path.dirname(out), { recursive: true });
    writeFileSync(out, `${JSON.stringify(results, null, 2)}\n`);
    process.stdout.write(`Wrote ${path.relative(process.cwd(), out)}\n`);
  } finally {
    await Promise.all([sandbox.close(), azurite.stop()]);
  }
}

main().then(
  () => process.exit(0),
  (error: unknown) => {
    process.stderr.write(`bench failed: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}\n`);
    process.exit(1);
  },
);
