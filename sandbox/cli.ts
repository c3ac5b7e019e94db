/** `npm run sandbox`: runs the local Microsoft 365 sandbox until Ctrl-C and writes the settings that point the app at it. */
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { goodDomainRecords, startSandboxDns } from './dns';
import { startSandbox } from './index';

/** Marks a local.settings.json the sandbox may overwrite; a file without it belongs to the user. */
export const GENERATED_MARKER = 'm365-mailer sandbox';

function isGenerated(file: string): boolean {
  try {
    return (JSON.parse(readFileSync(file, 'utf8')) as { Generated?: string }).Generated === GENERATED_MARKER;
  } catch {
    return false;
  }
}

async function main(): Promise<void> {
  const dir = path.resolve('.sandbox');
  mkdirSync(dir, { recursive: true });
  const sandbox = await startSandbox({ dir });
  // SPF, DKIM and DMARC for the sandbox's domain, for `m365-mailer doctor --dns` (the domain has none in public DNS).
  const dns = await startSandboxDns(goodDomainRecords(sandbox.tenant.domain));
  const settings = {
    FUNCTIONS_WORKER_RUNTIME: 'node',
    AzureWebJobsStorage: 'UseDevelopmentStorage=true',
    ...sandbox.settings(),
  };
  const localSettings = { Generated: GENERATED_MARKER, IsEncrypted: false, Values: settings };
  writeFileSync(path.join(dir, 'local.settings.json'), `${JSON.stringify(localSettings, null, 2)}\n`);
  const target = path.resolve('local.settings.json');
  const wrote = !existsSync(target) || isGenerated(target);
  if (wrote) writeFileSync(target, `${JSON.stringify(localSettings, null, 2)}\n`);

  const out = (line = '') => process.stdout.write(`${line}\n`);
  out('m365-mailer sandbox is running (Ctrl-C to stop)');
  out();
  out(`  Entra ID        ${sandbox.entra.url}/${sandbox.tenant.tenantId}`);
  out(`  Key Vault       ${sandbox.keyVault.url}`);
  out(`  Managed identity ${sandbox.identity.endpoint}`);
  out(`  App Insights    ${sandbox.ingestion.url}`);
  out(`  Exchange SMTP   ${sandbox.smtp.host}:${sandbox.smtp.port} (STARTTLS, XOAUTH2)`);
  out(`  DNS             ${dns.server} (SPF, DKIM, DMARC of ${sandbox.tenant.domain})`);
  out(`  Local CA        ${sandbox.caFile}`);
  out();
  out(`Inbox: ${sandbox.inbox.url}   (what Exchange received, live: HTML, headers, transcript, telemetry, pacing)`);
  out();
  out(
    wrote
      ? 'Settings written to local.settings.json (and .sandbox/local.settings.json). Try:'
      : 'Your local.settings.json was left alone; the sandbox settings are in .sandbox/local.settings.json. Export them, then:',
  );
  out(`  npx m365-mailer send --to someone@example.com --subject "Hello" --text "It works"`);
  out(`  npx m365-mailer doctor --dns ${dns.server}`);
  out();
  out('Settings:');
  for (const [key, value] of Object.entries(settings)) out(`  ${key}=${value}`);
  out();

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

  let stopping = false;
  const stop = async () => {
    if (stopping) return;
    stopping = true;
    out('Stopping sandbox…');
    await Promise.all([sandbox.close(), dns.close()]);
    process.exit(0);
  };
  // A signal handler's promise goes nowhere: report a failed close and exit instead of leaving it unhandled.
  const onSignal = () => {
    stop().catch((error: unknown) => {
      process.stderr.write(`sandbox failed to stop: ${error instanceof Error ? error.message : String(error)}\n`);
      process.exit(1);
    });
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
}

main().catch((error: unknown) => {
  process.stderr.write(`sandbox failed to start: ${error instanceof Error ? error.message : String(error)}\n`);
  process.exit(1);
});
