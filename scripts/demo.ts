/**
 * `npm run demo`: starts the whole stack, sends through the HTTP API and the outbox, collects digest items and runs
 * the digest, prints what Exchange and App Insights received, then runs `m365-mailer doctor` against the sandbox with
 * every check passing, and exits 0.
 */
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { startAzurite } from '../dev/azurite';
import { startDevHost } from '../dev/host';
import { startSandbox } from '../sandbox';
import { goodDomainRecords, startSandboxDns } from '../sandbox/dns';
import { runCli } from '../src/cli';

const ROOT = path.resolve(__dirname, '..');
const out = (line = '') => process.stdout.write(`${line}\n`);

async function main(): Promise<void> {
  out('Building the bundle the Functions host would load…');
  execFileSync(process.execPath, [path.join(ROOT, 'scripts/build.mjs')], { cwd: ROOT, stdio: 'inherit' });
  const [sandbox, azurite] = await Promise.all([startSandbox(), startAzurite()]);
  const host = await startDevHost({
    entry: path.join(ROOT, 'dist/functions/index.js'),
    env: { ...sandbox.settings(), AzureWebJobsStorage: azurite.connectionString },
    port: 0,
    pollIntervalMs: 200,
    log: () => {},
  });
  try {
    out(
      `Stack up: dev host ${host.url}, Azurite, sandbox (Entra ID ${sandbox.entra.url}, SMTP ${sandbox.smtp.host}:${sandbox.smtp.port})`,
    );
    const data = JSON.parse(readFileSync(path.join(ROOT, 'templates/order-shipped/sample.json'), 'utf8')) as unknown;
    const url = (route: string) => `${host.url}/api/${route}?code=${host.functionKey}`;
    const accepted = await fetch(url('messages'), {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'idempotency-key': 'demo-order-A-10492-shipped' },
      body: JSON.stringify({ to: 'customer@example.com', template: 'order-shipped', data }),
    });
    const body = (await accepted.json()) as { id: string; status: string };
    out(`POST /api/messages → ${accepted.status} ${JSON.stringify(body)}`);

    let status: { status: string; messageId?: string; error?: unknown } = { status: body.status };
    for (let i = 0; i < 100 && !['sent', 'failed'].includes(status.status); i++) {
      await new Promise((r) => setTimeout(r, 200));
      status = (await (await fetch(url(`messages/${body.id}`))).json()) as typeof status;
    }
    out(`GET /api/messages/${body.id} → ${JSON.stringify(status)}`);
    if (status.status !== 'sent') throw new Error(`the message ended ${status.status}`);

    const received = sandbox.smtp.messages.find((m) => m.parsed.messageId === status.messageId);
    if (!received) throw new Error('the sandbox received nothing');
    const session = sandbox.smtp.sessions.find((s) => s.id === received.sessionId);
    out();
    out('What Exchange (the sandbox) received:');
    out(`  authenticated as ${received.mailbox} with ${received.authMethod} over ${received.tlsVersion}`);
    out(`  MAIL FROM ${received.envelope.from}  RCPT TO ${received.envelope.to.join(', ')}`);
    out(`  Subject: ${received.parsed.subject}`);
    out(`  Parts: text ${received.parsed.text?.length ?? 0} chars, html ${received.parsed.html?.length ?? 0} chars`);
    out('  SMTP transcript (tokens redacted):');
    // Commands and final replies; EHLO continuation lines and the message body are left out.
    const transcript = (session?.transcript ?? []).filter((l) => !/^S: \d{3}-/.test(l) && !/^C: (?![A-Z]{4})/.test(l));
    for (const line of transcript.slice(0, 16)) out(`    ${line.slice(0, 110)}`);

    out();
    out('A digest: items collected for a recipient, then one message listing them.');
    const reader = 'adele.vance@example.com';
    const items = await fetch(url('digests/activity/items'), {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({
        items: [
          { recipient: reader, item: { title: 'Invoice INV-2041 was paid', detail: 'EUR 1,240.00 by bank transfer.' } },
          { recipient: reader, item: { title: 'Order A-10492 shipped', detail: '2 parcels, arriving Thursday.' } },
          { recipient: reader, item: { title: 'New comment on "Q4 roadmap"', actor: 'Megan Bowen' } },
        ],
      }),
    });
    out(`POST /api/digests/activity/items → ${items.status} ${JSON.stringify(await items.json())}`);
    const run = await fetch(url('digests/activity/run'), { method: 'POST' });
    const report = (await run.json()) as { outcome: string; run?: Record<string, unknown> };
    out(
      `POST /api/digests/activity/run → ${run.status} ${JSON.stringify({ outcome: report.outcome, recipients: report.run?.recipients, items: report.run?.items, periodEnd: report.run?.periodEnd })}`,
    );
    if (report.outcome !== 'completed') throw new Error(`the digest run ended ${report.outcome}`);
    let digest = sandbox.smtp.messages.find((m) => m.envelope.to.includes(reader));
    for (let i = 0; i < 100 && !digest; i++) {
      await new Promise((r) => setTimeout(r, 200));
      digest = sandbox.smtp.messages.find((m) => m.envelope.to.includes(reader));
    }
    if (!digest) throw new Error('the digest never arrived');
    out(`The digest arrived: "${digest.parsed.subject}" to ${digest.envelope.to.join(', ')}`);
    for (const line of (digest.parsed.text ?? '').split('\n').slice(0, 10)) out(`  | ${line}`);
    out(`GET /api/digests/activity → ${JSON.stringify(await (await fetch(url('digests/activity'))).json())}`);

    await sandbox.ingestion.waitFor(() => sandbox.ingestion.events('MailSent').length > 0, 10_000);
    out();
    out('What Application Insights (the sandbox) received:');
    for (const event of sandbox.ingestion.events())
      out(`  customEvent ${event.name} ${JSON.stringify(event.properties)}`);
    out();
    out('Text part as sent:');
    for (const line of (received.parsed.text ?? '').split('\n').slice(0, 16)) out(`  | ${line}`);

    // The doctor, as an operator would run it, with a loopback DNS server holding good SPF, DKIM and DMARC records
    // for the sandbox's domain (contoso.test has none in public DNS).
    const dns = await startSandboxDns(goodDomainRecords(sandbox.tenant.domain));
    try {
      out();
      out(`m365-mailer doctor --dns ${dns.server}:`);
      const code = await runCli(['doctor', '--dns', dns.server], {
        stdout: (text) => process.stdout.write(text.replace(/^(?=.)/gm, '  ')),
        stderr: (text) => process.stderr.write(text),
        env: sandbox.settings(),
        cwd: sandbox.dir,
      });
      if (code !== 0) throw new Error(`the doctor exited ${code}`);
    } finally {
      await dns.close();
    }
  } finally {
    await host.stop();
    await Promise.all([sandbox.close(), azurite.stop()]);
  }
}

main().then(
  () => process.exit(0),
  (error: unknown) => {
    process.stderr.write(`demo failed: ${error instanceof Error ? error.message : String(error)}\n`);
    process.exit(1);
  },
);
