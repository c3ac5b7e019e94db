/**
 * The app's Mailer and Key Vault reader, built on first use. Accepting a message into the outbox loads nothing of the
 * send path (MSAL, @azure/identity, Key Vault, nodemailer): the first delivery, secret read or health check does.
 */
import type { Config } from '../config';
import type { Logger } from '../logger';
import type { ConnectionSlots } from '../pacing/connectionSlots';
import type { Redactor } from '../redact';
import type { Telemetry } from '../telemetry';
import type { SecretSource } from './keyVaultSecrets';
import type { MailSender } from './mailSender';
import type { Mailer } from './senderServices';

/** A Mailer that exists once something needs it. */
export interface LazyMailer {
  /** The Mailer: built, and the send path loaded, on the first call. */
  readonly get: () => Promise<Mailer>;
  /** What the outbox worker sends through: builds the Mailer on its first message. */
  sender: Pick<MailSender, 'send' | 'connectionReady'>;
  /** The vault's secrets (the sender's and the unsubscribe key), read through one cached reader; none without a vault. */
  secrets: SecretSource | undefined;
  /** Closes the SMTP pool and flushes telemetry; a Mailer never built only has its telemetry shut down. */
  close(): Promise<void>;
}

export interface LazyMailerOptions {
  logger: Logger;
  redactor: Redactor;
  telemetry: Telemetry;
  /** The mailbox's cross-instance connection cap. */
  slots?: ConnectionSlots | undefined;
  /** A Mailer already built (tests share one sandbox mailer): used as it is. */
  mailer?: Mailer | undefined;
}

/** A Key Vault reader that loads @azure/identity and @azure/keyvault-secrets on its first read. */
function lazyKeyVault(vaultUrl: string, config: Config, redactor: Redactor): SecretSource {
  let reader: Promise<SecretSource> | undefined;
  const build = async (): Promise<SecretSource> => {
    const { KeyVaultSecrets, createAzureCredential } = await import('./keyVaultSecrets.js');
    return new KeyVaultSecrets(vaultUrl, createAzureCredential(config), { extraCaPem: config.extraCaPem, redactor });
  };
  return {
    get: async (name, options) => (await (reader ??= build())).get(name, options),
  };
}

/** Builds nothing yet: see {@link LazyMailer}. */
export function lazyMailer(config: Config, options: LazyMailerOptions): LazyMailer {
  const given = options.mailer;
  // The sender's vault when it reads its credential from one, else the app's (federated identity reads no secret, but
  // the unsubscribe key may live in a vault). One reader serves both, so a secret is read and cached once.
  const senderVault = 'keyVaultUrl' in config.auth ? config.auth.keyVaultUrl : undefined;
  const vaultUrl = given ? config.keyVaultUrl : (senderVault ?? config.keyVaultUrl);
  const secrets = given?.secrets ?? (vaultUrl ? lazyKeyVault(vaultUrl, config, options.redactor) : undefined);
  let built: Promise<Mailer> | undefined;
  const get = (): Promise<Mailer> =>
    (built ??= given
      ? Promise.resolve(given)
      : import('./senderServices.js').then(({ createMailer }) =>
          createMailer(config, {
            logger: options.logger,
            redactor: options.redactor,
            telemetry: options.telemetry,
            ...(options.slots ? { slots: options.slots } : {}),
            ...(senderVault && secrets ? { secrets } : {}),
          }),
        ));
  return {
    get,
    sender: {
      send: async (message, context) => (await get()).sender.send(message, context),
      connectionReady: async () => (await get()).sender.connectionReady(),
    },
    secrets,
    async close() {
      if (given || built) {
        await (await get()).close();
        return;
      }
      await options.telemetry.shutdown();
    },
  };
}
