/** `npm run bench`: every figure is a ratio measured side by side in one run; prints a table and writes bench/results/latest.json. */
import { mkdirSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { startSandbox } from '../sandbox';
import { runDeliveryBench } from './delivery';

const HUGE = 1_000_000_000;

async function main(): Promise<void> {
  const quick = process.argv.includes('--quick');
  const sandbox = await startSandbox({
    // The sandbox must not throttle the benchmark: pacing is measured on its own.
    smtpLimits: { dailyRecipients: HUGE, ratePerMinute: HUGE },
  });
  try {
    const delivery = await runDeliveryBench(sandbox, quick ? { messages: 300, naiveMessages: 60, rounds: 1 } : {});
    const results = {
      when: new Date().toISOString(),
      command: `npm run bench${quick ? ' -- --quick' : ''}`,
      machine: {
        cpus: os.cpus().length,
        model: os.cpus()[0]?.model,
        node: process.version,
        memGiB: Math.round(os.totalmem() / 2 ** 30),
      },
      delivery,
    };
    const rows = [
      ['Delivery (msg/s, median of ' + delivery.rounds + ')', 'value', 'ratio'],
      [`core sender, ${delivery.messages} messages`, String(delivery.coreSender.msgPerSec), '1.00'],
      [
        `raw pooled nodemailer, fixed token`,
        String(delivery.rawPooled.msgPerSec),
        `core/raw = ${delivery.ratioCoreVsRaw}`,
      ],
      [
        `naive: new transport + token per message (${delivery.naiveMessages})`,
        String(delivery.naive.msgPerSec),
        `core/naive = ${delivery.ratioCoreVsNaive}`,
      ],
    ];
    const widths = [0, 1, 2].map((c) => Math.max(...rows.map((r) => (r[c] ?? '').length)));
    for (const row of rows) process.stdout.write(`${row.map((cell, c) => cell.padEnd(widths[c] ?? 0)).join('  ')}\n`);
    const out = path.resolve('bench/results/latest.json');
    mkdirSync(path.dirname(out), { recursive: true });
    writeFileSync(out, `${JSON.stringify(results, null, 2)}\n`);
    process.stdout.write(`\nWrote ${path.relative(process.cwd(), out)}\n`);
  } finally {
    await sandbox.close();
  }
}

main().catch((error: unknown) => {
  process.stderr.write(`bench failed: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}\n`);
  process.exit(1);
});
