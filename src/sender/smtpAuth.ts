/** SMTP credentials per connection: an XOAUTH2 access token from MSAL (secret, certificate or federated) or a legacy app password. */
import { X509Certificate } from 'node:crypto';
import { ConfidentialClientApplication, LogLevel, type Configuration } from '@azure/msal-node';
import { ManagedIdentityCredential, type TokenCredential } from '@azure/identity';
import type * as Forge from 'node-forge';
import { classifyTokenError } from './classify';
import { isCustomAuthority, type AuthConfig, type Config } from '../config';
import { MailError } from '../errors';
import type { Redactor } from '../redact';
import { KEY_VAULT_READ_TIMEOUT_MS, type SecretSource } from './keyVaultSecrets';
import {
  CREDENTIAL_TRY_TIMEOUT_MS,
  DeadlineExceededError,
  isUnreachableError,
  timeoutHttpClient,
  withDeadline,
} from '../timeouts';
import { azureClientPolicies, msalNetworkClient, TOKEN_REQUEST_TIMEOUT_MS } from './tlsTrust';

/** The audience of the managed identity token that stands in for a client secret (public cloud). */
export const TOKEN_EXCHANGE_SCOPE = 'api://AzureADTokenExchange/.default';

/**
 * Building the token client (reading its secret or certificate from Key Vault) must finish within this. Above
 * KEY_VAULT_READ_TIMEOUT_MS, so that Key Vault's own error normally tells what happened; this bound holds whatever
 * the SecretSource, and a build cut by it is dropped so the next call starts again with a fresh read.
 */
export const MSAL_CLIENT_BUILD_TIMEOUT_MS = KEY_VAULT_READ_TIMEOUT_MS + 5_000;
/**
 * The managed identity's assertion (federated-identity mode) must arrive within this, retries of the identity
 * endpoint included.
 */
export const MANAGED_IDENTITY_ASSERTION_TIMEOUT_MS = 30_000;

/** Time bounds of the token source; each defaults to the constant of the same name. Tests pass short ones. */
export interface SmtpAuthTimeouts {
  /** Each HTTP request to Entra ID ({@link TOKEN_REQUEST_TIMEOUT_MS}). */
  tokenRequestTimeoutMs?: number;
  /** Building the MSAL client, its Key Vault read included ({@link MSAL_CLIENT_BUILD_TIMEOUT_MS}). */
  clientBuildTimeoutMs?: number;
  /** The whole managed identity assertion ({@link MANAGED_IDENTITY_ASSERTION_TIMEOUT_MS}). */
  assertionTimeoutMs?: number;
  /** Each request of the managed identity credential ({@link CREDENTIAL_TRY_TIMEOUT_MS}). */
  credentialTryTimeoutMs?: number;
}

/** What one SMTP connection authenticates with. */
export type SmtpLogin =
  | { kind: 'xoauth2'; user: string; accessToken: string; expiresOn?: Date; fromCache: boolean }
  | { kind: 'password'; user: string; password: string };

/** Gives SMTP credentials; MSAL's cache renews tokens 5 minutes ahead of expiry. */
export interface SmtpAuthSource {
  readonly mode: AuthConfig['mode'];
  get(): Promise<SmtpLogin>;
  /** Drops the cached token (after 535 5.7.3): the next get() goes to Entra ID with skipCache. */
  invalidate(): void;
}

type OAuthConfig = Exclude<AuthConfig, { mode: 'basic' }>;

/**
 * node-forge, loaded on first use: only a PFX certificate needs it, and it is large (some 30 ms of start-up for
 * every cold start of an app that authenticates with a client secret, a PEM certificate or a federated identity).
 */
function loadForge(): typeof Forge {
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  return require('node-forge') as typeof Forge;
}

/** Splits a Key Vault certificate secret (PEM bundle or base64 PFX) into MSAL's certificate credential. */
export function parseCertificateSecret(
  value: string,
  contentType: string | undefined,
): { privateKey: string; certificate: string; thumbprintSha256: string } {
  let privateKey: string | undefined;
  let certificate: string | undefined;
  if (value.includes('-----BEGIN')) {
    privateKey = /-----BEGIN (?:RSA |EC )?PRIVATE KEY-----[\s\S]+?-----END (?:RSA |EC )?PRIVATE KEY-----/.exec(
      value,
    )?.[0];
    certificate = /-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/.exec(value)?.[0];
  } else if (!contentType || contentType === 'application/x-pkcs12') {
    // Key Vault returns a PFX certificate's secret as base64 with no password.
    const forge = loadForge();
    const der = forge.util.decode64(value);
    const p12 = forge.pkcs12.pkcs12FromAsn1(forge.asn1.fromDer(der), '');
    const bag = (type: string) => p12.getBags({ bagType: type })[type]?.[0];
    const oids = forge.pki.oids as Record<string, string>;
    const keyBag = bag(oids.pkcs8ShroudedKeyBag as string) ?? bag(oids.keyBag as string);
    const certBag = bag(oids.certBag as string);
    if (keyBag?.key) privateKey = forge.pki.privateKeyToPem(keyBag.key);
    if (certBag?.cert) certificate = forge.pki.certificateToPem(certBag.cert);
  }
  if (!privateKey || !certificate) {
    throw new MailError(
      'CONFIG_INVALID',
      'The Key Vault certificate secret (MAIL_CLIENT_CERT_NAME) must hold a private key and a certificate, as PEM or PFX',
    );
  }
  const thumbprintSha256 = new X509Certificate(certificate).fingerprint256.replace(/:/g, '');
  return { privateKey, certificate, thumbprintSha256 };
}

/**
 * The HTTP status the managed identity endpoint answered, when it answered: @azure/identity wraps MSAL's error,
 * which carries it as `status`.
 */
function answeredStatus(error: unknown, depth = 0): number | undefined {
  if (!error || typeof error !== 'object' || depth > 5) return undefined;
  const { status, statusCode, cause } = error as { status?: unknown; statusCode?: unknown; cause?: unknown };
  if (typeof status === 'number') return status;
  if (typeof statusCode === 'number') return statusCode;
  return answeredStatus(cause, depth + 1);
}

/** MSAL client credentials for the three OAuth modes; one ConfidentialClientApplication per process and config. */
class MsalAuthSource implements SmtpAuthSource {
  readonly mode: OAuthConfig['mode'];
  private app: Promise<ConfidentialClientApplication> | undefined;
  private skipCacheNext = false;
  /** Set when a build timed out: its secret read may still hang in the SecretSource's cache, so read afresh. */
  private rereadSecret = false;
  private readonly assertionCredential?: TokenCredential;

  constructor(
    private readonly auth: OAuthConfig,
    private readonly config: Config,
    private readonly secrets: SecretSource | undefined,
    private readonly redactor?: Redactor,
    private readonly timeouts: SmtpAuthTimeouts = {},
  ) {
    this.mode = auth.mode;
    if (auth.mode === 'federated-identity') {
      const policies = {
        additionalPolicies: azureClientPolicies(config.extraCaPem),
        // An HTTP client rather than a policy: ManagedIdentityCredential replaces `additionalPolicies` with its own.
        httpClient: timeoutHttpClient(timeouts.credentialTryTimeoutMs ?? CREDENTIAL_TRY_TIMEOUT_MS),
      };
      this.assertionCredential = auth.managedIdentityClientId
        ? new ManagedIdentityCredential({ clientId: auth.managedIdentityClientId, ...policies })
        : new ManagedIdentityCredential(policies);
    }
  }

  invalidate(): void {
    this.skipCacheNext = true;
  }

  async get(): Promise<SmtpLogin> {
    const skipCache = this.skipCacheNext;
    this.skipCacheNext = false;
    try {
      return await this.acquire(skipCache);
    } catch (error) {
      const classified = classifyTokenError(error);
      // A rotated client secret or a renewed certificate: read Key Vault again once, rebuild the client, retry.
      // Without this the process would keep the credential it read first for as long as it lives.
      const rotated =
        (classified.code === 'TOKEN_INVALID_CLIENT_SECRET' && this.auth.mode === 'client-secret') ||
        (classified.code === 'TOKEN_CERTIFICATE' && this.auth.mode === 'client-certificate');
      if (rotated) {
        this.app = undefined;
        try {
          return await this.acquire(true, true);
        } catch (retryError) {
          throw classifyTokenError(retryError);
        }
      }
      throw classified;
    }
  }

  private async acquire(skipCache: boolean, refreshSecret = false): Promise<SmtpLogin> {
    if (!this.app || refreshSecret) this.app = this.buildApp(refreshSecret);
    const building = this.app;
    const app = await building.catch((error: unknown) => {
      // A failed or timed-out build is not kept: the next call builds again (a newer build is left alone).
      if (this.app === building) this.app = undefined;
      throw error;
    });
    const result = await app.acquireTokenByClientCredential({ scopes: [this.auth.scope], skipCache });
    if (!result?.accessToken) throw new MailError('TOKEN_FAILED', 'Entra ID returned no access token');
    // Tokens are many and short-lived: the redactor keeps the most recent ones only.
    this.redactor?.addToken(result.accessToken);
    return {
      kind: 'xoauth2',
      user: this.config.sender,
      accessToken: result.accessToken,
      ...(result.expiresOn ? { expiresOn: result.expiresOn } : {}),
      fromCache: result.fromCache,
    };
  }

  /** {@link createApp} within the build bound; a build cut by it fails as KEY_VAULT_UNAVAILABLE (transient). */
  private buildApp(refreshSecret: boolean): Promise<ConfidentialClientApplication> {
    const reread = refreshSecret || this.rereadSecret;
    this.rereadSecret = false;
    const timeoutMs = this.timeouts.clientBuildTimeoutMs ?? MSAL_CLIENT_BUILD_TIMEOUT_MS;
    return withDeadline(() => this.createApp(reread), timeoutMs, 'building the token client').catch(
      (error: unknown) => {
        if (!(error instanceof DeadlineExceededError)) throw error;
        this.rereadSecret = true;
        const secretName =
          this.auth.mode === 'client-secret'
            ? this.auth.clientSecretName
            : this.auth.mode === 'client-certificate'
              ? this.auth.clientCertName
              : undefined;
        // Only the Key Vault read can take this long: the rest of the build is local.
        throw new MailError(
          'KEY_VAULT_UNAVAILABLE',
          `Key Vault secret '${secretName ?? 'unknown'}': not read within ${timeoutMs} ms while building the token client`,
          { cause: error },
        );
      },
    );
  }

  private async createApp(refreshSecret: boolean): Promise<ConfidentialClientApplication> {
    const auth = this.auth;
    const custom = isCustomAuthority(this.config);
    const base: Configuration = {
      auth: {
        clientId: auth.clientId,
        authority: `${auth.authorityHost}/${auth.tenantId}`,
        ...(custom ? { knownAuthorities: [new URL(auth.authorityHost).host] } : {}),
      },
      system: {
        // Always ours, extra CA or not: MSAL's own client bounds no token request.
        networkClient: msalNetworkClient(this.config.extraCaPem, {
          timeoutMs: this.timeouts.tokenRequestTimeoutMs ?? TOKEN_REQUEST_TIMEOUT_MS,
        }),
        loggerOptions: { logLevel: LogLevel.Error, piiLoggingEnabled: false, loggerCallback: () => {} },
      },
    };
    if (auth.mode === 'client-secret') {
      const secret = await this.requireSecrets().get(auth.clientSecretName, { refresh: refreshSecret });
      return new ConfidentialClientApplication({ ...base, auth: { ...base.auth, clientSecret: secret.value } });
    }
    if (auth.mode === 'client-certificate') {
      const secret = await this.requireSecrets().get(auth.clientCertName, { refresh: refreshSecret });
      const cert = parseCertificateSecret(secret.value, secret.contentType);
      this.redactor?.add(cert.privateKey);
      return new ConfidentialClientApplication({
        ...base,
        auth: {
          ...base.auth,
          clientCertificate: {
            thumbprintSha256: cert.thumbprintSha256,
            privateKey: cert.privateKey,
            x5c: cert.certificate,
          },
        },
      });
    }
    const credential = this.assertionCredential as TokenCredential;
    return new ConfidentialClientApplication({
      ...base,
      auth: {
        ...base.auth,
        clientAssertion: async () => {
          const timeoutMs = this.timeouts.assertionTimeoutMs ?? MANAGED_IDENTITY_ASSERTION_TIMEOUT_MS;
          try {
            // The credential ignores the abort signal (MSAL does not take one); the deadline holds regardless.
            const token = await withDeadline(
              (abortSignal) => credential.getToken(TOKEN_EXCHANGE_SCOPE, { abortSignal }),
              timeoutMs,
              'the managed identity token request',
            );
            if (!token) throw new Error('no token returned');
            this.redactor?.addToken(token.token);
            return token.token;
          } catch (error) {
            const unreachable = isUnreachableError(error);
            const status = answeredStatus(error);
            // The endpoint down (no answer, 5xx, 429) passes; any other answer (400: no such identity) is setup.
            const down = unreachable || (status !== undefined && (status >= 500 || status === 429));
            throw new MailError(
              'TOKEN_FEDERATION',
              unreachable
                ? `The managed identity endpoint did not give a token for ${TOKEN_EXCHANGE_SCOPE} in time (bound ${timeoutMs} ms) or could not be reached`
                : `The managed identity could not get a token for ${TOKEN_EXCHANGE_SCOPE}${status ? ` (the endpoint answered ${status})` : ''}: ${(error as Error).message.split('\n')[0]}`,
              {
                cause: error,
                transient: down,
                hint: down
                  ? "The Function App's managed identity endpoint (IDENTITY_ENDPOINT) failed or did not answer; the message is retried. If it persists, restart the Function App or check the platform's status."
                  : 'The managed identity endpoint refused: assign a user-assigned managed identity to the Function App and set AZURE_CLIENT_ID to its client id, and add it as a federated credential of the app registration.',
              },
            );
          }
        },
      },
    });
  }

  private requireSecrets(): SecretSource {
    if (!this.secrets) throw new MailError('CONFIG_INVALID', 'MAIL_KEY_VAULT_URL is required for this MAIL_AUTH_MODE');
    return this.secrets;
  }
}

/** Legacy basic auth: the app password from Key Vault, re-read when Exchange refuses it. */
class PasswordAuthSource implements SmtpAuthSource {
  readonly mode = 'basic' as const;
  private refresh = false;

  constructor(
    private readonly auth: Extract<AuthConfig, { mode: 'basic' }>,
    private readonly sender: string,
    private readonly secrets: SecretSource,
  ) {}

  invalidate(): void {
    this.refresh = true;
  }

  async get(): Promise<SmtpLogin> {
    const refresh = this.refresh;
    this.refresh = false;
    const secret = await this.secrets.get(this.auth.passwordSecretName, { refresh });
    return { kind: 'password', user: this.sender, password: secret.value };
  }
}

/**
 * Builds the SMTP credential source for `config.auth.mode`. Every call it makes is bounded (`timeouts`, defaults
 * above): a hung dependency surfaces as a classified transient MailError.
 */
export function createSmtpAuthSource(
  config: Config,
  secrets: SecretSource | undefined,
  redactor?: Redactor,
  timeouts: SmtpAuthTimeouts = {},
): SmtpAuthSource {
  if (config.auth.mode === 'basic') {
    if (!secrets) throw new MailError('CONFIG_INVALID', 'MAIL_KEY_VAULT_URL is required for MAIL_AUTH_MODE=basic');
    return new PasswordAuthSource(config.auth, config.sender, secrets);
  }
  return new MsalAuthSource(config.auth, config, secrets, redactor, timeouts);
}
