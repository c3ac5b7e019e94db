/** The local Microsoft 365 sandbox: Entra ID, Key Vault, managed identity, App Insights ingestion, Exchange SMTP and its inbox page, on loopback with one local CA. */
import { randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { createCertificateAuthority, type CertificateAuthority } from './ca';
import { startEntra, type EntraServer } from './entra';
import { startInbox, type InboxServer } from './inbox/inboxServer';
import { startIngestionCapture, type IngestionCapture } from './ingestion';
import { startKeyVault, type KeyVaultServer } from './keyVault';
import { createFederationIssuer, startManagedIdentityEndpoint, type ManagedIdentityEndpoint } from './managedIdentity';
import type { Clock, ExchangeSmtpLimits } from './smtp/mailboxLimits';
import { startExchangeSmtp, type ExchangeSmtpServer } from './smtp/server';
import { certificateThumbprints, createTenant, type SandboxTenant } from './tenant';
import { TokenIssuer } from './tokens';

/** Key Vault secret names the app reads by default. */
export const SECRET_NAMES = {
  clientSecret: 'mail-client-secret',
  clientCert: 'mail-client-cert',
  password: 'mail-password',
  unsubscribeKey: 'mail-unsubscribe-key',
} as const;

/** The dev host's default address (`npm run dev`): where the unsubscribe links of bulk mail point by default. */
export const DEV_HOST_BASE_URL = 'http://127.0.0.1:7071';

export type SandboxAuthMode = 'client-secret' | 'client-certificate' | 'federated-identity' | 'basic';

/** What a secret the sandbox knows of is. */
export type SandboxSecretKind =
  | 'client-secret'
  | 'client-certificate-key'
  | 'app-password'
  | 'identity-header'
  | 'key-vault-secret'
  | 'access-token'
  | 'federation-assertion'
  | 'client-assertion';

/** One secret value, named without repeating it: `label` says which one (a Key Vault name, a token's audience). */
export interface SandboxSecret {
  kind: SandboxSecretKind;
  label: string;
  value: string;
}

/** A token the sandbox issued: an access token (Entra or the managed identity endpoint) or a federation assertion. */
export interface SandboxIssuedToken {
  kind: 'access-token' | 'federation-assertion';
  /** Its `aud`: `https://outlook.office365.com`, `https://vault.azure.net`, `https://storage.azure.com`, `api://AzureADTokenExchange`. */
  audience: string;
  token: string;
  issuedAt: Date;
}

export interface SandboxOptions {
  /** The mailbox the app sends as; default alerts@contoso.test. */
  sender?: string;
  domain?: string;
  smtpLimits?: Partial<ExchangeSmtpLimits>;
  clock?: Clock;
  tokenLifetimeSeconds?: number;
  /** Where the CA file is written; default a fresh temp directory. */
  dir?: string;
}

/** A running sandbox and the handles tests use to inspect it and inject faults. */
export interface Sandbox {
  tenant: SandboxTenant;
  ca: CertificateAuthority;
  /** The CA certificate file, for MAIL_TLS_CA_FILE and NODE_EXTRA_CA_CERTS. */
  caFile: string;
  dir: string;
  issuer: TokenIssuer;
  entra: EntraServer;
  keyVault: KeyVaultServer;
  identity: ManagedIdentityEndpoint;
  ingestion: IngestionCapture;
  smtp: ExchangeSmtpServer;
  /** The inbox page (`inbox.url`): what Exchange accepted, live, with transcripts, telemetry and pacing. */
  inbox: InboxServer;
  /** The client certificate registered on the app (its PEM bundle is also in Key Vault). */
  clientCertificate: { keyPem: string; certPem: string; thumbprintSha256: string };
  /** App settings that point the app at this sandbox, for the given auth mode. */
  settings(mode?: SandboxAuthMode): Record<string, string>;
  /**
   * Every secret the app could hold, as of now: client secrets (expired ones too), the client certificate's private
   * key, app passwords, IDENTITY_HEADER, every version of every Key Vault secret, every token issued so far and every
   * client assertion presented to Entra. For the secret scans (test/support/secretScan.ts); the values stay in memory.
   */
  secrets(): SandboxSecret[];
  /** Every token issued so far by Entra ID and the managed identity endpoint, oldest first. */
  issuedTokens(): SandboxIssuedToken[];
  /** The values of {@link Sandbox.secrets}, for "never appears in output" checks. */
  secretValues(): string[];
  close(): Promise<void>;
}

/** Starts every sandbox service on free loopback ports. Close it when done. */
export async function startSandbox(options: SandboxOptions = {}): Promise<Sandbox> {
  const dir = options.dir ?? mkdtempSync(path.join(tmpdir(), 'm365-sandbox-'));
  mkdirSync(dir, { recursive: true });
  const tenant = createTenant({
    ...(options.domain ? { domain: options.domain } : {}),
    ...(options.sender ? { sender: options.sender } : {}),
  });
  const ca = createCertificateAuthority();
  const caFile = path.join(dir, 'sandbox-ca.pem');
  writeFileSync(caFile, ca.certPem);

  const issuer = new TokenIssuer(`https://sts.windows.net/${tenant.tenantId}/`);
  const federationIssuer = createFederationIssuer(tenant);
  const client = ca.issueClient(`m365-mailer ${tenant.app.clientId}`);
  const thumbprints = certificateThumbprints(client.certPem);
  tenant.app.certificates.set(thumbprints.base64url, client.certPem);

  const started: Array<{ close(): Promise<void> }> = [];
  try {
    const lifetime =
      options.tokenLifetimeSeconds !== undefined ? { tokenLifetimeSeconds: options.tokenLifetimeSeconds } : {};
    const entra = await startEntra({ ca, tenant, issuer, federationIssuer, ...lifetime });
    started.push(entra);
    const keyVault = await startKeyVault({ ca, tenant, issuer, entraUrl: entra.url });
    started.push(keyVault);
    const identity = await startManagedIdentityEndpoint({ tenant, issuer, federationIssuer, ...lifetime });
    started.push(identity);
    // Tokens from the managed identity endpoint are verified when sent; only the app's identity may publish.
    const ingestion = await startIngestionCapture({ ca, entra: { issuer, publishers: [tenant.identity.principalId] } });
    started.push(ingestion);
    const smtp = await startExchangeSmtp({
      ca,
      tenant,
      issuer,
      ...(options.smtpLimits ? { limits: options.smtpLimits } : {}),
      ...(options.clock ? { clock: options.clock } : {}),
    });
    started.push(smtp);
    const inbox = await startInbox({ smtp, ingestion });
    started.push(inbox);

    const sender = [...tenant.exchange.mailboxes.keys()][0] as string;
    const mailbox = tenant.exchange.mailboxes.get(sender);
    keyVault.setSecret(SECRET_NAMES.clientSecret, tenant.app.secrets[0] as string);
    keyVault.setSecret(SECRET_NAMES.clientCert, `${client.keyPem}\n${client.certPem}`, 'application/x-pem-file');
    if (mailbox?.appPassword) keyVault.setSecret(SECRET_NAMES.password, mailbox.appPassword);
    // The key that signs unsubscribe links: random per sandbox, like every other secret here.
    keyVault.setSecret(SECRET_NAMES.unsubscribeKey, randomBytes(48).toString('base64'));

    const sandbox: Sandbox = {
      tenant,
      ca,
      caFile,
      dir,
      issuer,
      entra,
      keyVault,
      identity,
      ingestion,
      smtp,
      inbox,
      clientCertificate: { ...client, thumbprintSha256: thumbprints.hex },
      settings(mode: SandboxAuthMode = 'client-secret') {
        return {
          MAIL_SENDER: sender,
          MAIL_AUTH_MODE: mode,
          MAIL_TENANT_ID: tenant.tenantId,
          MAIL_CLIENT_ID: tenant.app.clientId,
          ...(mode === 'federated-identity' ? {} : { MAIL_KEY_VAULT_URL: keyVault.url }),
          MAIL_AUTHORITY_HOST: entra.url,
          MAIL_SMTP_HOST: smtp.host,
          MAIL_SMTP_PORT: String(smtp.port),
          MAIL_TLS_CA_FILE: caFile,
          // Bulk mail needs a base for its unsubscribe links (and a vault for their key, which every mode but
          // federated-identity has): the dev host's default address.
          ...(mode === 'federated-identity' ? {} : { MAIL_UNSUBSCRIBE_BASE_URL: DEV_HOST_BASE_URL }),
          APPLICATIONINSIGHTS_CONNECTION_STRING: ingestion.connectionString,
          // The Function App's user-assigned managed identity, as App Service exposes it.
          AZURE_CLIENT_ID: tenant.identity.clientId,
          IDENTITY_ENDPOINT: identity.endpoint,
          IDENTITY_HEADER: identity.header,
        };
      },
      issuedTokens() {
        const tokens: SandboxIssuedToken[] = [
          ...issuer.issued.map((t) => ({
            kind: 'access-token' as const,
            audience: t.aud,
            token: t.token,
            issuedAt: t.issuedAt,
          })),
          ...federationIssuer.issued.map((t) => ({
            kind: 'federation-assertion' as const,
            audience: t.aud,
            token: t.token,
            issuedAt: t.issuedAt,
          })),
        ];
        return tokens.sort((a, b) => a.issuedAt.getTime() - b.issuedAt.getTime());
      },
      secrets() {
        const secrets: SandboxSecret[] = [
          ...[...tenant.app.secrets, ...entra.expiredSecrets].map((value, i) => ({
            kind: 'client-secret' as const,
            label: `client secret #${i + 1}`,
            value,
          })),
          { kind: 'client-certificate-key', label: 'client certificate private key', value: client.keyPem },
          ...[...tenant.exchange.mailboxes.values()].flatMap((m) =>
            m.appPassword
              ? [{ kind: 'app-password' as const, label: `app password of ${m.address}`, value: m.appPassword }]
              : [],
          ),
          { kind: 'identity-header', label: 'IDENTITY_HEADER', value: identity.header },
          ...keyVault.secretVersions().map((v) => ({
            kind: 'key-vault-secret' as const,
            label: `Key Vault ${v.name}/${v.version}`,
            value: v.value,
          })),
          ...sandbox.issuedTokens().map((t, i) => ({
            kind: t.kind,
            label: `${t.kind} #${i + 1} for ${t.audience}`,
            value: t.token,
          })),
          ...entra.clientAssertions.map((value, i) => ({
            kind: 'client-assertion' as const,
            label: `client assertion #${i + 1}`,
            value,
          })),
        ];
        return secrets;
      },
      secretValues() {
        return [...new Set(sandbox.secrets().map((s) => s.value))];
      },
      async close() {
        await Promise.allSettled(started.reverse().map((s) => s.close()));
        // A directory of our own making (CA files, keys) goes with us; one the caller chose stays.
        if (!options.dir) rmSync(dir, { recursive: true, force: true });
      },
    };
    return sandbox;
  } catch (error) {
    await Promise.allSettled(started.reverse().map((s) => s.close()));
    if (!options.dir) rmSync(dir, { recursive: true, force: true });
    throw error;
  }
}
