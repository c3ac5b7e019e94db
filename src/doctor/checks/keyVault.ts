/**
 * The Key Vault check: reads the secret of the configured mode (client secret, certificate or app password) with the
 * sender's own KeyVaultSecrets (src/sender/keyVaultSecrets.ts), so 403 (no Key Vault Secrets User role) and 404 (no
 * such secret) come out as the sender's KEY_VAULT_FORBIDDEN and KEY_VAULT_SECRET_NOT_FOUND. The value is never shown.
 */
import type { Config } from '../../config';
import { MailError, ensureError } from '../../errors';
import { createAzureCredential, KeyVaultSecrets } from '../../sender/keyVaultSecrets';
import type { CheckResult } from '../report';
import { failed, result, type DoctorInputs, type DoctorState } from './context';

/** The Key Vault secret the mode reads, or undefined for federated-identity (which reads none). */
export function secretNameOf(config: Config): { vault: string; name: string; setting: string } | undefined {
  const auth = config.auth;
  if (auth.mode === 'client-secret')
    return { vault: auth.keyVaultUrl, name: auth.clientSecretName, setting: 'MAIL_CLIENT_SECRET_NAME' };
  if (auth.mode === 'client-certificate')
    return { vault: auth.keyVaultUrl, name: auth.clientCertName, setting: 'MAIL_CLIENT_CERT_NAME' };
  if (auth.mode === 'basic')
    return { vault: auth.keyVaultUrl, name: auth.passwordSecretName, setting: 'MAIL_PASSWORD_SECRET_NAME' };
  return undefined;
}

export async function checkKeyVault(inputs: DoctorInputs, config: Config, state: DoctorState): Promise<CheckResult> {
  const target = secretNameOf(config);
  if (!target) {
    state.keyVaultOk = true;
    return result('key-vault', 'skip', 'skipped: MAIL_AUTH_MODE=federated-identity reads no secret from Key Vault');
  }
  const secrets = new KeyVaultSecrets(target.vault, createAzureCredential(config), {
    extraCaPem: config.extraCaPem,
    redactor: inputs.redactor,
  });
  try {
    await secrets.get(target.name);
  } catch (thrown) {
    const error = thrown instanceof MailError ? thrown : new MailError('UNKNOWN', ensureError(thrown).message);
    const what =
      error.code === 'KEY_VAULT_FORBIDDEN'
        ? `403: this identity may not read secret '${target.name}'`
        : error.code === 'KEY_VAULT_SECRET_NOT_FOUND'
          ? `404: no secret '${target.name}' (${target.setting}) in ${new URL(target.vault).host}`
          : `secret '${target.name}' could not be read`;
    return failed('key-vault', error.code, `${what}: ${error.code}`, error.hint);
  }
  state.secrets = secrets;
  state.keyVaultOk = true;
  return result(
    'key-vault',
    'pass',
    `read secret '${target.name}' (${target.setting}) from ${new URL(target.vault).host}`,
  );
}
