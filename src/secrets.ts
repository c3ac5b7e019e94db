/** Key Vault secret reads through DefaultAzureCredential, cached in memory with a TTL, classified on failure. */
import { DefaultAzureCredential, type TokenCredential } from '@azure/identity';
import { SecretClient } from '@azure/keyvault-secrets';
import { classifyKeyVaultError } from './classify';
import { isCustomAuthority, type Config } from './config';
import type { Redactor } from './redact';
import { azureClientPolicies } from './trust';

/** How long a secret is served from memory before Key Vault is asked again. */
export const SECRET_CACHE_TTL_MS = 5 * 60 * 1000;

/** A secret value with the content type Key Vault stored it with (PEM vs PFX for certificates). */
export interface SecretValue {
  value: string;
  contentType?: string;
}

/** Reads named secrets from one vault. */
export interface SecretSource {
  get(name: string, options?: { refresh?: boolean }): Promise<SecretValue>;
}

/** The credential the app uses for Azure resources: managed identity in Azure, the sandbox or az login locally. */
export function createAzureCredential(config: Config): TokenCredential {
  const custom = isCustomAuthority(config);
  return new DefaultAzureCredential({
    ...(config.managedIdentityClientId ? { managedIdentityClientId: config.managedIdentityClientId } : {}),
    authorityHost: config.authorityHost,
    ...(custom ? { disableInstanceDiscovery: true } : {}),
    additionalPolicies: azureClientPolicies(config.extraCaPem),
  });
}

/** A Key Vault SecretSource with a per-name TTL cache; concurrent reads of one name share one request. */
export class KeyVaultSecrets implements SecretSource {
  private readonly client: SecretClient;
  private readonly cache = new Map<string, { value: Promise<SecretValue>; expiresAt: number }>();

  constructor(
    vaultUrl: string,
    credential: TokenCredential,
    private readonly options: {
      extraCaPem?: string;
      redactor?: Redactor;
      ttlMs?: number;
      now?: () => number;
      /** Non-Azure hosts (the sandbox) answer the challenge with their own resource. */
      customHost?: boolean;
    } = {},
  ) {
    this.client = new SecretClient(vaultUrl, credential, {
      additionalPolicies: azureClientPolicies(options.extraCaPem),
      disableChallengeResourceVerification:
        options.customHost ?? !/\.vault\.(azure\.net|usgovcloudapi\.net|azure\.cn)$/.test(new URL(vaultUrl).hostname),
      retryOptions: { maxRetries: 2, retryDelayInMs: 200, maxRetryDelayInMs: 2000 },
    });
  }

  async get(name: string, options: { refresh?: boolean } = {}): Promise<SecretValue> {
    const now = (this.options.now ?? Date.now)();
    const cached = this.cache.get(name);
    if (cached && !options.refresh && cached.expiresAt > now) return cached.value;
    const value = this.read(name);
    this.cache.set(name, { value, expiresAt: now + (this.options.ttlMs ?? SECRET_CACHE_TTL_MS) });
    // A failed read must not stay cached.
    value.catch(() => {
      if (this.cache.get(name)?.value === value) this.cache.delete(name);
    });
    return value;
  }

  private async read(name: string): Promise<SecretValue> {
    try {
      const secret = await this.client.getSecret(name);
      if (!secret.value) throw Object.assign(new Error('secret has no value'), { statusCode: 404 });
      this.options.redactor?.add(secret.value);
      return {
        value: secret.value,
        ...(secret.properties.contentType ? { contentType: secret.properties.contentType } : {}),
      };
    } catch (error) {
      throw classifyKeyVaultError(error, name);
    }
  }
}
