/** The sandbox's directory: one Entra tenant, its app registration, a managed identity and Exchange Online's view of them. */
import { createHash, randomBytes, randomUUID, X509Certificate } from 'node:crypto';

/** Role that lets an app-only token submit over SMTP. */
export const SMTP_SEND_AS_APP_ROLE = 'SMTP.SendAsApp';

/** A mailbox as Exchange Online sees it. */
export interface SandboxMailbox {
  /** The mailbox UPN and primary SMTP address. */
  address: string;
  /** Set-CASMailbox -SmtpClientAuthenticationDisabled $true turns this off (535 5.7.139 ... for the Mailbox). */
  smtpAuthEnabled: boolean;
  /** Service principal object ids with FullAccess (Add-MailboxPermission). */
  fullAccess: Set<string>;
  /** Other addresses this mailbox may send as (Add-RecipientPermission -AccessRights SendAs), or '@domain'. */
  sendAs: Set<string>;
  /** App password for the legacy basic mode; undefined = basic auth not possible. */
  appPassword?: string;
}

/** The app registration and its enterprise application (service principal). */
export interface SandboxApp {
  clientId: string;
  /** Object id of the App Registration: NOT what Exchange wants (the common 535 5.7.3 cause). */
  applicationObjectId: string;
  /** Object id of the Enterprise Application (service principal): the token's `oid`. */
  servicePrincipalObjectId: string;
  /** Valid client secrets; rotation = push a new one and remove the old one. */
  secrets: string[];
  /** Certificates registered on the app, by base64url SHA-256 thumbprint. */
  certificates: Map<string, string>;
  /** Managed identity principal ids trusted as federated credentials (issuer = the sandbox MI issuer). */
  federatedSubjects: Set<string>;
  /** Application roles granted with admin consent. */
  roles: string[];
}

/** A user-assigned managed identity of the Function App. */
export interface SandboxManagedIdentity {
  clientId: string;
  principalId: string;
}

export interface SandboxTenant {
  tenantId: string;
  domain: string;
  app: SandboxApp;
  identity: SandboxManagedIdentity;
  exchange: {
    /** Tenant-wide switch (535 5.7.139 ... for the Tenant). */
    smtpAuthEnabled: boolean;
    /** New-ServicePrincipal -AppId <appId> -ObjectId <objectId>: what Exchange knows for each app id. */
    servicePrincipals: Map<string, string>;
    mailboxes: Map<string, SandboxMailbox>;
  };
}

/** base64url SHA-256 of the certificate DER, as used in `x5t#S256` and MSAL's `thumbprintSha256` (hex there). */
export function certificateThumbprints(certPem: string): { hex: string; base64url: string } {
  const der = new X509Certificate(certPem).raw;
  const digest = createHash('sha256').update(der).digest();
  return { hex: digest.toString('hex').toUpperCase(), base64url: digest.toString('base64url') };
}

/** A correctly configured tenant: the app is registered in Exchange with the enterprise app's object id and has FullAccess. */
export function createTenant(options: { domain?: string; sender?: string } = {}): SandboxTenant {
  const domain = options.domain ?? 'contoso.test';
  const sender = (options.sender ?? `alerts@${domain}`).toLowerCase();
  const app: SandboxApp = {
    clientId: randomUUID(),
    applicationObjectId: randomUUID(),
    servicePrincipalObjectId: randomUUID(),
    secrets: [`sbx~${randomBytes(24).toString('base64url')}`],
    certificates: new Map(),
    federatedSubjects: new Set(),
    roles: [SMTP_SEND_AS_APP_ROLE],
  };
  const identity: SandboxManagedIdentity = { clientId: randomUUID(), principalId: randomUUID() };
  app.federatedSubjects.add(identity.principalId);
  const mailbox: SandboxMailbox = {
    address: sender,
    smtpAuthEnabled: true,
    fullAccess: new Set([app.servicePrincipalObjectId]),
    sendAs: new Set(),
    appPassword: `app-${randomBytes(12).toString('hex')}`,
  };
  return {
    tenantId: randomUUID(),
    domain,
    app,
    identity,
    exchange: {
      smtpAuthEnabled: true,
      servicePrincipals: new Map([[app.clientId, app.servicePrincipalObjectId]]),
      mailboxes: new Map([[sender, mailbox]]),
    },
  };
}
