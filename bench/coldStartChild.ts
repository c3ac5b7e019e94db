/** One cold start, in a fresh process: load an app entry the way the worker does and answer one POST /api/messages. */
import { performance } from 'node:perf_hooks';
import { captureRegistrations } from '../dev/functionsCore';
import { Invoker, jsonPostInput } from '../dev/invoker';
import { normalise } from '../dev/registrations';

/**
 * The packages (node_modules/<name>) and bundle files (dist/…) loaded so far, from require.cache: what answering the
 * first request needed. The bundle inlines its packages, so for it this lists dist/ files only.
 */
function loadedFiles(): string[] {
  const names = new Set<string>();
  for (const file of Object.keys(require.cache)) {
    const at = file.lastIndexOf('node_modules/');
    if (at >= 0) {
      const parts = file.slice(at + 'node_modules/'.length).split('/');
      names.add(parts[0]!.startsWith('@') ? `${parts[0]}/${parts[1]}` : parts[0]!);
    } else if (file.includes('/dist/')) {
      names.add(file.slice(file.lastIndexOf('/dist/') + 1));
    }
  }
  return [...names].sort();
}

async function main(): Promise<void> {
  const entry = process.argv[2];
  if (!entry) throw new Error('usage: coldStartChild <entry>');
  const started = performance.now();
  const registrations = captureRegistrations(() => {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    require(entry);
  });
  const imported = performance.now();
  const fn = registrations.functions
    .map((f) => normalise(f.metadata, f.callback, process.env))
    .find((f) => f.kind === 'http' && f.route === 'messages' && f.methods.includes('POST'));
  if (!fn) throw new Error('no POST messages function in the entry');
  const invoker = new Invoker(registrations, () => {});
  const body = JSON.stringify({ to: 'cold@example.com', subject: 'Cold start', text: 'first request' });
  const response = await invoker.invoke(fn, jsonPostInput('http://127.0.0.1:7071/api/messages', body));
  const answered = performance.now();
  process.stdout.write(
    `${JSON.stringify({
      status: Number(response.returnValue?.http?.statusCode ?? 0),
      importMs: imported - started,
      firstResponseMs: answered - started,
      sinceProcessStartMs: answered,
      loaded: loadedFiles(),
    })}\n`,
  );
  process.exit(0);
}

main().catch((error: unknown) => {
  process.stderr.write(`${error instanceof Error ? (error.stack ?? error.message) : String(error)}\n`);
  process.exit(1);
});
