/** `npm run demo`: starts the sandbox, sends through the real core sender, prints what Exchange and App Insights received, exits 0. */
import { loadConfig } from '../src/config';
import { createLogger } from '../src/logger';
import { createMailer } from '../src/mailer';
import { parseMessage } from '../src/message';
import { Redactor } from '../src/redact';
import { templateBundle } from '../src/templateBundle';
import { TemplateRenderer } from '../src/templates';
import { startSandbox } from '../sandbox';

const out = (line = '') => process.stdout.write(`${line}\n`);

async function main(): Promise<void> {
  const sandbox = await startSandbox();
  const settings = sandbox.settings();
  // As App Service does: the Azure SDK reads the managed identity endpoint from the environment.
  for (const key of ['AZURE_CLIENT_ID', 'IDENTITY_ENDPOINT', 'IDENTITY_HEADER'] as const)
    process.env[key] = settings[key];
  const redactor = new Redactor();
  const mailer = createMailer(loadConfig(settings), { redactor, logger: createLogger({ redactor, level: 'warn' }) });
  try {
    out(
      `Sandbox up: Entra ID ${sandbox.entra.url}, Key Vault ${sandbox.keyVault.url}, SMTP ${sandbox.smtp.host}:${sandbox.smtp.port}`,
    );
    const renderer = new TemplateRenderer(templateBundle());
    const rendered = renderer.render('order-shipped', renderer.sample('order-shipped'));
    const message = parseMessage(
      { to: 'customer@example.com', subject: rendered.subject, text: rendered.text, html: rendered.html },
      { defaultFrom: mailer.config.sender, maxRecipients: 500, maxMessageBytes: mailer.config.limits.maxMessageBytes },
    );
    const result = await mailer.sender.send(message, { source: 'cli', id: 'demo-1', template: 'order-shipped' });
    out(`Sent ${result.messageId} in ${result.durationMs} ms: ${result.smtp.response}`);
    await mailer.telemetry.flush();

    const received = sandbox.smtp.messages.at(-1);
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
    out('What Application Insights (the sandbox) received:');
    for (const event of sandbox.ingestion.events())
      out(`  customEvent ${event.name} ${JSON.stringify(event.properties)}`);
    for (const metric of sandbox.ingestion.metrics())
      out(`  customMetric ${metric.name} count=${metric.count ?? 1} sum=${metric.value}`);
    out();
    out('Text part as sent:');
    for (const line of (received.parsed.text ?? '').split('\n').slice(0, 20)) out(`  | ${line}`);
  } finally {
    await mailer.close();
    await sandbox.close();
  }
}

main().then(
  () => process.exit(0),
  (error: unknown) => {
    process.stderr.write(`demo failed: ${error instanceof Error ? error.message : String(error)}\n`);
    process.exit(1);
  },
);
