/**
 * `npm run bundle-report`: what the app bundle files hold, from esbuild's metafile (dist/meta.json, written by
 * `npm run build`): each file's size and its largest packages by bytes in the output. dist/functions/app.js is what a
 * cold start reads; dist/functions/sendPath.js waits for the first delivery (see docs/benchmarks.md, Cold start).
 */
import { readFileSync } from 'node:fs';
import path from 'node:path';

interface Metafile {
  outputs: Record<string, { bytes: number; inputs: Record<string, { bytesInOutput: number }> }>;
}

const ROOT = path.resolve(__dirname, '..');
/** How many packages to list per file. */
const TOP = Number(process.argv[2] ?? 15);

/** `node_modules/<package>` for a package's file, else the source folder (src/outbox, functions…). */
function owner(input: string): string {
  const at = input.lastIndexOf('node_modules/');
  if (at < 0) return path.dirname(input).split('/').slice(0, 2).join('/');
  const parts = input.slice(at + 'node_modules/'.length).split('/');
  return parts[0]!.startsWith('@') ? `${parts[0]}/${parts[1]}` : parts[0]!;
}

const kib = (bytes: number) => `${(bytes / 1024).toFixed(0)} KiB`;

function main(): void {
  const meta = JSON.parse(readFileSync(path.join(ROOT, 'dist/meta.json'), 'utf8')) as Metafile;
  for (const [file, output] of Object.entries(meta.outputs)) {
    if (file.endsWith('.map')) continue;
    const byOwner = new Map<string, number>();
    for (const [input, { bytesInOutput }] of Object.entries(output.inputs)) {
      byOwner.set(owner(input), (byOwner.get(owner(input)) ?? 0) + bytesInOutput);
    }
    const ranked = [...byOwner].sort((a, b) => b[1] - a[1]);
    process.stdout.write(`${file}: ${kib(output.bytes)}, ${byOwner.size} packages and source folders\n`);
    for (const [name, bytes] of ranked.slice(0, TOP)) {
      process.stdout.write(
        `  ${kib(bytes).padStart(9)}  ${((bytes / output.bytes) * 100).toFixed(1).padStart(5)} %  ${name}\n`,
      );
    }
    process.stdout.write('\n');
  }
}

main();
