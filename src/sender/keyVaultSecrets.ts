/** Key Vault secret reads through DefaultAzureCredential, cached in memory with a TTL, classified on failure. */
import { DefaultAzureCredential, type TokenCredential } from '@azure/identity';
import { SecretClient } from '@azure/keyvault-secrets';
import { classifyKeyVaultError } from './classify';
import { isCustomAuthority, type Config } from '../config';
import type { Redactor } from '../redact';
import {
  CREDENTIAL_TRY_TIMEOUT_MS,
  SECRET_CACHE_TTL_MS,
  timeoutHttpClient,
  tryTimeoutPolicy,
  withDeadline,
} from '../timeouts';
import { azureClientPolicies } from './tlsTrust';

export { SECRET_CACHE_TTL_MS };
/** Each Key Vault request (one try) must be answered within this, or it is cut and retried (Key Vault answers in well under a second). */
export const KEY_VAULT_TRY_TIMEOUT_MS = 10_000;
/**
 * One secret read, from the credential's token to the last retry, must finish within this, or it fails as
 * KEY_VAULT_UNAVAILABLE (transient). The outer bound: the credential chain and its retries are not bounded per try.
 */
export const KEY_VAULT_READ_TIMEOUT_MS = 30_000;

/** A secret value with the content type Key Vault stored it with (PEM vs PFX for certificates). */
export interface SecretValue {
  value: string;
  contentType?: string;
}

/** Reads named secrets from one vault. */
export interface SecretSource {
  get(name: string, options?: { refresh?: boolean }): Promise<SecretValue>;
}

/**
 * The credential the app uses for Azure resources: managed identity in Azure, the sandbox or az login locally.
 * Each of its token requests is bounded by `options.tryTimeoutMs` (default {@link CREDENTIAL_TRY_TIMEOUT_MS}).
 */
export function createAzureCredential(config: Config, options: { tryTimeoutMs?: number } = {}): TokenCredential {
  const custom = isCustomAuthority(config);
  return new DefaultAzureCredential({
    ...(config.managedIdentityClientId ? { managedIdentityClientId: config.managedIdentityClientId } : {}),
    authorityHost: config.authorityHost,
    ...(custom ? { disableInstanceDiscovery: true } : {}),
    additionalPolicies: azureClientPolicies(config.extraCaPem),
    // An HTTP client rather than a policy: ManagedIdentityCredential replaces `additionalPolicies` with its own.
    httpClient: timeoutHttpClient(options.tryTimeoutMs ?? CREDENTIAL_TRY_TIMEOUT_MS),
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
      extraCaPem?: string | undefined;
      redactor?: Redactor;
      ttlMs?: number;
      now?: () => number;
      /** Non-Azure hosts (the sandbox) answer the challenge with their own resource. */
      customHost?: boolean;
      /** Per-try bound of each vault request; default {@link KEY_VAULT_TRY_TIMEOUT_MS}. */
      tryTimeoutMs?: number;
      /** Bound of one whole read (token, tries, back-off); default {@link KEY_VAULT_READ_TIMEOUT_MS}. */
      readTimeoutMs?: number;
    } = {},
  ) {
    this.client = new SecretClient(vaultUrl, credential, {
      additionalPolicies: [
        ...azureClientPolicies(options.extraCaPem),
        { policy: tryTimeoutPolicy(options.tryTimeoutMs ?? KEY_VAULT_TRY_TIMEOUT_MS), position: 'perRetry' },
      ],
      disableChallengeResourceVerification:
        options.customHost ?? !/\.vault\.(azure\.net|usgovcloudapi\.net|azure\.cn)$/.test(new URL(vaultUrl).hostname),
      retryOptions: { maxRetries: 2, retryDelayInMs: 200, maxRetryDelayInMs: 2000 },
    });
  }

  /**
   * Reads `name`, from the cache unless `refresh`. A read that fails (a hung vault or credential included, after
   * `readTimeoutMs`) is dropped from the cache, so the next call asks the vault again.
   */
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
      // The abort signal lets the SDK drop the request when the deadline passes.
      const secret = await withDeadline(
        (abortSignal) => this.client.getSecret(name, { abortSignal }),
        this.options.readTimeoutMs ?? KEY_VAULT_READ_TIMEOUT_MS,
        'the read',
      );
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
