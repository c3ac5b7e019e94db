/** `npm run dev`: builds the bundle, starts Azurite, the Microsoft 365 sandbox and the dev host on :7071, until Ctrl-C. */
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { DEV_HOST_BASE_URL, startSandbox, type Sandbox } from '../sandbox';
import { startAzurite, type AzuriteInstance } from './azurite';
import { DEFAULT_PORT, startDevHost, type DevHost } from './host';
import { formatDuration, Progress } from './progress';

const out = (line = '') => process.stdout.write(`${line}\n`);

async function startHost(entry: string, env: Record<string, string>): Promise<DevHost> {
  try {
    return await startDevHost({ entry, env, port: DEFAULT_PORT });
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'EADDRINUSE') throw error;
    out(`Port ${DEFAULT_PORT} is busy (another func start or npm run dev?); using a free port instead.`);
    return startDevHost({ entry, env, port: 0 });
  }
}

function printFunctions(host: DevHost): void {
  const key = host.functionKey;
  out('Functions:');
  for (const fn of host.functions) {
    if (fn.kind === 'http') {
      const auth = fn.authLevel === 'anonymous' ? '' : `  (authLevel ${fn.authLevel}: ?code=<key>)`;
      out(`  ${fn.name}: [${fn.methods.join(',') || 'ANY'}] ${host.functionUrl(fn.name)}${auth}`);
    } else if (fn.kind === 'queue') out(`  ${fn.name}: queueTrigger on '${fn.queueName}' (${fn.connection})`);
    else if (fn.kind === 'timer')
      out(`  ${fn.name}: timerTrigger '${fn.schedule}'${fn.runOnStartup ? ' runOnStartup' : ''}`);
    else out(`  ${fn.name}: ${fn.triggerType} (not served by the dev host)`);
  }
  out();
  out(`Function key: ${key}   (send as ?code=<key> or the x-functions-key header)`);
  out();
  const base = `${host.url}${host.routePrefix ? `/${host.routePrefix}` : ''}`;
  const http = host.functions.filter((fn) => fn.kind === 'http');
  const send = http.find((fn) => fn.route.replace(/^\/+|\/+$/g, '') === 'messages' && fn.methods.includes('POST'));
  const status = http.find((fn) => /^messages\/\{id[^}]*\}$/.test(fn.route.replace(/^\/+|\/+$/g, '')));
  out('Try:');
  if (!send) out('  (no POST /messages function is registered yet)');
  out(
    `  curl -sS -X POST "${base}/messages?code=${key}" -H 'content-type: application/json' ` +
      `-d '{"to":"someone@example.com","subject":"Hello from m365-mailer","text":"It works"}'`,
  );
  if (!status) out('  (no GET /messages/{id} function is registered yet)');
  out(`  curl -sS "${base}/messages/<id>?code=${key}"`);
  out();
}

/** The start-up steps, in order: each is a line once it completes, and one progress line shows the one under way. */
const STEPS = ['build the bundle', 'start Azurite', 'start the sandbox', 'start the dev host'] as const;

/** Runs one start-up step under `progress` and prints what it took when it completes. */
async function step<T>(progress: Progress, index: number, run: () => T | Promise<T>, detail?: (value: T) => string) {
  const name = STEPS[index] as string;
  progress.update(index, `${name}…`);
  const started = Date.now();
  const value = await run();
  const extra = detail ? `: ${detail(value)}` : '';
  progress.log(`  [${index + 1}/${STEPS.length}] ${name} (${formatDuration(Date.now() - started)})${extra}`);
  progress.update(index + 1, '');
  return value;
}

async function main(): Promise<void> {
  const root = process.cwd();
  const progress = new Progress({
    label: 'npm run dev: starting',
    total: STEPS.length,
    unit: 'steps',
    stream: process.stdout,
    rate: false,
  });
  await step(
    progress,
    0,
    () => {
      // Captured, so that the progress line stays whole; shown in full if the build fails.
      const build = spawnSync(process.execPath, ['scripts/build.mjs'], { cwd: root, encoding: 'utf8' });
      if (build.status !== 0) {
        progress.log(`${build.stdout}${build.stderr}`.trimEnd());
        throw new Error(`the build failed (node scripts/build.mjs, exit ${build.status ?? build.signal})`);
      }
    },
    () => 'node scripts/build.mjs',
  );
  const mainField = (JSON.parse(readFileSync(path.join(root, 'package.json'), 'utf8')) as { main: string }).main;
  const entry = path.resolve(root, mainField);
  if (!existsSync(entry)) {
    throw new Error(
      `${mainField} was not built: scripts/build.mjs bundles it from functions/index.ts, which must import every function`,
    );
  }

  const started: Array<() => Promise<void>> = [];
  let stopping = false;
  const stop = async (code: number) => {
    if (stopping) return;
    stopping = true;
    out('Stopping…');
    for (const step of started.reverse()) await step().catch(() => undefined);
    process.exit(code);
  };
  process.on('SIGINT', () => void stop(0));
  process.on('SIGTERM', () => void stop(0));

  try {
    const azurite: AzuriteInstance = await step(progress, 1, startAzurite, (a) => `blob :${a.ports.blob}`);
    started.push(() => azurite.stop());
    const dir = path.resolve(root, '.sandbox');
    mkdirSync(dir, { recursive: true });
    const sandbox: Sandbox = await step(progress, 2, () => startSandbox({ dir }));
    started.push(() => sandbox.close());
    sandbox.smtp.on(
      'message',
      (m: { envelope: { from: string; to: string[] }; parsed: { subject?: string }; raw: Buffer }) => {
        out(
          `[smtp] received from ${m.envelope.from} to ${m.envelope.to.join(', ')}: "${m.parsed.subject ?? ''}" (${m.raw.length} bytes)`,
        );
      },
    );
    sandbox.smtp.on('rejection', (r: { code: number; text: string; command: string }) => {
      out(`[smtp] ${r.command} rejected: ${r.code} ${r.text}`);
    });

    // What local.settings.json would hold: the sandbox's settings (MAIL_*, identity) and Azurite as AzureWebJobsStorage.
    const env: Record<string, string> = {
      FUNCTIONS_WORKER_RUNTIME: 'node',
      AzureWebJobsStorage: azurite.connectionString,
      ...sandbox.settings(),
    };
    const host = await step(
      progress,
      3,
      () => startHost(entry, env),
      (h) => `${h.functions.length} functions`,
    );
    started.push(() => host.stop());
    progress.done();
    // The sandbox points unsubscribe links at :7071; on another port they follow the host (the app reads its
    // settings on the first request, after this).
    if (host.url !== DEV_HOST_BASE_URL) process.env.MAIL_UNSUBSCRIBE_BASE_URL = host.url;

    out();
    out(`m365-mailer dev host is running on ${host.url} (Ctrl-C to stop)`);
    out();
    out(`  Azurite         blob :${azurite.ports.blob}  queue :${azurite.ports.queue}  table :${azurite.ports.table}`);
    out(`  Entra ID        ${sandbox.entra.url}/${sandbox.tenant.tenantId}`);
    out(`  Key Vault       ${sandbox.keyVault.url}`);
    out(`  App Insights    ${sandbox.ingestion.url}`);
    out(`  Exchange SMTP   ${sandbox.smtp.host}:${sandbox.smtp.port} (STARTTLS, XOAUTH2)`);
    out(`  Sender          ${env.MAIL_SENDER ?? ''}`);
    out();
    out(`Inbox: ${sandbox.inbox.url}   (what Exchange received, live: HTML, headers, transcript, telemetry, pacing)`);
    out();
    printFunctions(host);
  } catch (error) {
    process.stderr.write(`npm run dev failed: ${error instanceof Error ? error.message : String(error)}\n`);
    await stop(1);
  }
}

main().catch((error: unknown) => {
  process.stderr.write(`npm run dev failed: ${error instanceof Error ? error.message : String(error)}\n`);
  process.exit(1);
});
