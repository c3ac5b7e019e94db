/** The sender's own composition: builds the sender and everything it needs (secrets, tokens, connection slots) from one Config, once per process. */
import type { Config } from '../config';
import type { ConnectionSlots } from '../pacing/connectionSlots';
import { silentLogger, type Logger } from '../logger';
import { defaultRedactor, type Redactor } from '../redact';
import { KeyVaultSecrets, createAzureCredential, type SecretSource } from './keyVaultSecrets';
import { MailSender } from './mailSender';
import { createSmtpAuthSource, type SmtpAuthSource } from './smtpAuth';
import { telemetryFromConfig, type Telemetry } from '../telemetry';

/** Everything a trigger or the CLI needs to send. */
export interface Mailer {
  config: Config;
  sender: MailSender;
  auth: SmtpAuthSource;
  secrets?: SecretSource;
  telemetry: Telemetry;
  logger: Logger;
  redactor: Redactor;
  /** Closes the SMTP pool and flushes telemetry. */
  close(): Promise<void>;
}

/** Builds a Mailer. Pass `telemetry`/`logger` to override the defaults (tests, the CLI). */
export function createMailer(
  config: Config,
  options: {
    logger?: Logger;
    telemetry?: Telemetry;
    redactor?: Redactor;
    roleName?: string;
    /** The mailbox's cross-instance connection cap. */
    slots?: ConnectionSlots;
    /** The Key Vault reader to share (the app's, which the unsubscribe key reads too); default one of its own. */
    secrets?: SecretSource;
  } = {},
): Mailer {
  const redactor = options.redactor ?? defaultRedactor;
  const logger = options.logger ?? silentLogger;
  const keyVaultUrl = 'keyVaultUrl' in config.auth ? config.auth.keyVaultUrl : undefined;
  const secrets = !keyVaultUrl
    ? undefined
    : (options.secrets ??
      new KeyVaultSecrets(keyVaultUrl, createAzureCredential(config), { extraCaPem: config.extraCaPem, redactor }));
  const auth = createSmtpAuthSource(config, secrets, redactor);
  const telemetry =
    options.telemetry ??
    telemetryFromConfig(config, { logger, ...(options.roleName ? { roleName: options.roleName } : {}) });
  const sender = new MailSender(config, auth, {
    telemetry,
    logger,
    ...(options.slots ? { slots: options.slots } : {}),
  });
  return {
    config,
    sender,
    auth,
    ...(secrets ? { secrets } : {}),
    telemetry,
    logger,
    redactor,
    async close() {
      await sender.close();
      await telemetry.shutdown();
    },
  };
}
