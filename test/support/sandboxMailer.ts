/** Test support: a sandbox plus a real Mailer wired to it, with every log line captured for secret scanning (test/support/secretScan.ts). */
import type { TableClient } from '@azure/data-tables';
import { loadConfig, type Config } from '../../src/config';
import { createLogger } from '../../src/logger';
import { createMailer, type Mailer } from '../../src/sender/senderServices';
import { parseMessage, type MailMessage, type MessageInput } from '../../src/message';
import { Redactor } from '../../src/redact';
import { startSandbox, type Sandbox, type SandboxAuthMode, type SandboxOptions } from '../../sandbox';

/** Environment keys the Azure SDK reads from process.env itself (DefaultAzureCredential, ManagedIdentityCredential). */
const PROCESS_ENV_KEYS = ['AZURE_CLIENT_ID', 'IDENTITY_ENDPOINT', 'IDENTITY_HEADER'] as const;

export interface TestMailer extends Mailer {
  logs: string[];
}

/** Points the Azure SDK's own environment lookups at the sandbox (as App Service would). */
export function applySandboxEnv(sandbox: Sandbox): void {
  const settings = sandbox.settings();
  for (const key of PROCESS_ENV_KEYS) process.env[key] = settings[key];
  // The Azure SDK must not find credentials of the machine it runs on.
  for (const key of [
    'AZURE_CLIENT_SECRET',
    'AZURE_TENANT_ID',
    'AZURE_CLIENT_CERTIFICATE_PATH',
    'AZURE_FEDERATED_TOKEN_FILE',
  ])
    delete process.env[key];
}

/** A mailer for `mode` against `sandbox`; `overrides` change settings. */
export function sandboxMailer(
  sandbox: Sandbox,
  mode: SandboxAuthMode = 'client-secret',
  overrides: Record<string, string | undefined> = {},
): TestMailer {
  applySandboxEnv(sandbox);
  const config: Config = loadConfig({ ...sandbox.settings(mode), ...overrides });
  const logs: string[] = [];
  const redactor = new Redactor();
  const mailer = createMailer(config, {
    redactor,
    logger: createLogger({ redactor, level: 'debug', write: (line) => logs.push(line) }),
  });
  return Object.assign(mailer, { logs });
}

/** Validates a message the way every entry point does. */
export function message(mailer: Mailer, input: Partial<MessageInput> = {}): MailMessage {
  return parseMessage(
    { to: 'someone@example.com', subject: 'Test', text: 'Hello', ...input },
    {
      defaultFrom: mailer.config.sender,
      maxRecipients: mailer.config.limits.maxRecipients,
      maxMessageBytes: mailer.config.limits.maxMessageBytes,
    },
  );
}

export { startSandbox, type Sandbox, type SandboxOptions };

/**
 * Forgets the shared pacing state of every mailbox (send slots, the daily window, a quota block): each test starts
 * from an idle mailbox whatever ran before it.
 */
export async function resetPacingState(table: TableClient): Promise<void> {
  for await (const entity of table.listEntities()) {
    await table.deleteEntity(entity.partitionKey as string, entity.rowKey as string).catch((error: unknown) => {
      if ((error as { statusCode?: number }).statusCode !== 404) throw error;
    });
  }
}
