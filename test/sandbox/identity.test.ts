/** The sandbox Entra ID, managed identity endpoint and Key Vault, driven by the real MSAL Node, @azure/identity and SecretClient over verified TLS. */
import https from 'node:https';
import http from 'node:http';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { decodeJwt } from 'jose';
import { ConfidentialClientApplication, type Configuration } from '@azure/msal-node';
import { ClientSecretCredential, DefaultAzureCredential, ManagedIdentityCredential } from '@azure/identity';
import { SecretClient } from '@azure/keyvault-secrets';
import { RestError } from '@azure/core-rest-pipeline';
import { createCertificateAuthority, type CertificateAuthority, type IssuedCertificate } from '../../sandbox/ca';
import { certificateThumbprints, createTenant, SMTP_SEND_AS_APP_ROLE, type SandboxTenant } from '../../sandbox/tenant';
import { TokenIssuer } from '../../sandbox/tokens';
import { startEntra, type EntraServer } from '../../sandbox/entra';
import {
  createFederationIssuer,
  startManagedIdentityEndpoint,
  type ManagedIdentityEndpoint,
} from '../../sandbox/managedIdentity';
import { startKeyVault, type KeyVaultServer } from '../../sandbox/keyVault';
import { azureClientPolicies, httpsAgent, msalNetworkClient } from '../../src/sender/tlsTrust';
import { secretScanner, type Leak } from '../support/secretScan';

const OUTLOOK_SCOPE = 'https://outlook.office365.com/.default';
const VAULT_SCOPE = 'https://vault.azure.net/.default';
const TOKEN_EXCHANGE_SCOPE = 'api://AzureADTokenExchange/.default';
const SECRET_NAME = 'mail-client-secret';

// MSAL keeps the managed identity source (endpoint, header, HTTP client) in a static for the life of the
// process, so the endpoint is started once for this file and IDENTITY_* are set before any credential runs.
let ca: CertificateAuthority;
let tenant: SandboxTenant;
let issuer: TokenIssuer;
let federationIssuer: TokenIssuer;
let entra: EntraServer;
let mi: ManagedIdentityEndpoint;
let kv: KeyVaultServer;
let appCert: IssuedCertificate;
const savedEnv = { IDENTITY_ENDPOINT: process.env.IDENTITY_ENDPOINT, IDENTITY_HEADER: process.env.IDENTITY_HEADER };

beforeAll(async () => {
  ca = createCertificateAuthority();
  tenant = createTenant();
  issuer = new TokenIssuer(`https://sts.windows.net/${tenant.tenantId}/`);
  federationIssuer = createFederationIssuer(tenant);
  appCert = ca.issueClient('m365-mailer app credential');
  tenant.app.certificates.set(certificateThumbprints(appCert.certPem).base64url, appCert.certPem);
  entra = await startEntra({ ca, tenant, issuer, federationIssuer });
  mi = await startManagedIdentityEndpoint({ tenant, issuer, federationIssuer });
  kv = await startKeyVault({ ca, tenant, issuer, entraUrl: entra.url });
  process.env.IDENTITY_ENDPOINT = mi.endpoint;
  process.env.IDENTITY_HEADER = mi.header;
});

afterAll(async () => {
  await Promise.all([entra?.close(), mi?.close(), kv?.close()]);
  for (const [name, value] of Object.entries(savedEnv)) {
    if (value === undefined) delete process.env[name];
    else process.env[name] = value;
  }
});

beforeEach(() => {
  // One stack for the file (see above); each test starts from clean records, knobs and directory.
  entra.requests.length = 0;
  entra.discovery.length = 0;
  entra.faults.length = 0;
  entra.expiredSecrets.clear();
  mi.requests.length = 0;
  kv.reads.length = 0;
  kv.faults.length = 0;
  kv.allowedPrincipals.clear();
  kv.allowedPrincipals.add(tenant.identity.principalId).add(tenant.app.servicePrincipalObjectId);
  kv.writerPrincipals.clear();
  tenant.app.federatedSubjects.clear();
  tenant.app.federatedSubjects.add(tenant.identity.principalId);
});

/**
 * `values` found in what a sandbox service recorded, in any encoding, and so is every token the issuers signed and
 * every client assertion Entra was shown: the records must hold none of them.
 */
function recordedLeaks(records: unknown, values: Record<string, string>): Leak[] {
  return secretScanner([
    ...Object.entries(values).map(([label, value]) => ({ kind: 'secret', label, value })),
    ...[...issuer.issued, ...federationIssuer.issued].map((t, i) => ({
      kind: 'access-token',
      label: `token #${i + 1} for ${t.aud}`,
      value: t.token,
    })),
    ...entra.clientAssertions.map((value, i) => ({ kind: 'client-assertion', label: `assertion #${i + 1}`, value })),
  ]).find(JSON.stringify(records), 'records');
}

function msalApp(
  auth: Omit<Configuration['auth'], 'clientId'>,
  authority = entra.authority,
): ConfidentialClientApplication {
  return new ConfidentialClientApplication({
    auth: { clientId: tenant.app.clientId, authority, knownAuthorities: [new URL(entra.url).host], ...auth },
    system: { networkClient: msalNetworkClient(ca.certPem) },
  });
}

function secretCredential(secret = tenant.app.secrets[0] ?? ''): ClientSecretCredential {
  return new ClientSecretCredential(tenant.tenantId, tenant.app.clientId, secret, {
    authorityHost: entra.url,
    disableInstanceDiscovery: true,
    additionalPolicies: azureClientPolicies(ca.certPem),
  });
}

function secretClient(credential: ConstructorParameters<typeof SecretClient>[1]): SecretClient {
  return new SecretClient(kv.url, credential, {
    disableChallengeResourceVerification: true,
    additionalPolicies: azureClientPolicies(ca.certPem),
    // Faults are single-shot; the SDK's retries would otherwise hide them.
    retryOptions: { maxRetries: 0 },
  });
}

async function rejection(promise: Promise<unknown>): Promise<Record<string, unknown> & Error> {
  try {
    await promise;
  } catch (error) {
    return error as Record<string, unknown> & Error;
  }
  throw new Error('expected a rejection');
}

/** A raw request, for what no SDK would send; TLS is verified against the sandbox CA. */
function rawRequest(
  url: string,
  headers: Record<string, string> = {},
): Promise<{ status: number; body: string; headers: http.IncomingHttpHeaders }> {
  return new Promise((resolve, reject) => {
    const options = url.startsWith('https:') ? { headers, agent: httpsAgent(ca.certPem) } : { headers };
    const request = (url.startsWith('https:') ? https : http).get(url, options, (response) => {
      const chunks: Buffer[] = [];
      response.on('data', (chunk: Buffer) => chunks.push(chunk));
      response.on('end', () =>
        resolve({
          status: response.statusCode ?? 0,
          body: Buffer.concat(chunks).toString('utf8'),
          headers: response.headers,
        }),
      );
    });
    request.on('error', reject);
  });
}

describe('sandbox Entra ID with MSAL Node', () => {
  it('issues an app-only Exchange token for the client secret, after OIDC discovery only', async () => {
    const secret = tenant.app.secrets[0] ?? '';
    const app = msalApp({ clientSecret: secret });
    const result = await app.acquireTokenByClientCredential({ scopes: [OUTLOOK_SCOPE] });
    const claims = decodeJwt(result?.accessToken ?? '');
    expect(claims).toMatchObject({
      aud: 'https://outlook.office365.com',
      iss: `https://sts.windows.net/${tenant.tenantId}/`,
      tid: tenant.tenantId,
      appid: tenant.app.clientId,
      oid: tenant.app.servicePrincipalObjectId,
      sub: tenant.app.servicePrincipalObjectId,
      roles: [SMTP_SEND_AS_APP_ROLE],
      idtyp: 'app',
      ver: '1.0',
      appidacr: '1',
    });
    expect((claims.exp ?? 0) - (claims.iat ?? 0)).toBe(entra.tokenLifetimeSeconds);
    expect(await issuer.verify(result?.accessToken ?? '', ['https://outlook.office365.com'])).toMatchObject({
      ok: true,
    });

    // Cached: the second call never reaches the server.
    await app.acquireTokenByClientCredential({ scopes: [OUTLOOK_SCOPE] });
    expect(entra.discovery.map((d) => `${d.method} ${d.path} ${d.status}`)).toEqual([
      `GET /${tenant.tenantId}/v2.0/.well-known/openid-configuration 200`,
    ]);
    expect(entra.requests).toHaveLength(1);
    expect(entra.requests[0]).toMatchObject({
      clientId: tenant.app.clientId,
      grant: 'client_secret',
      grantType: 'client_credentials',
      scope: OUTLOOK_SCOPE,
      status: 200,
    });
    expect(recordedLeaks(entra.requests, { 'client secret': secret })).toEqual([]);
  });

  it('accepts the tenant domain as authority and honours a runtime token lifetime', async () => {
    entra.tokenLifetimeSeconds = 600;
    try {
      const app = msalApp({ clientSecret: tenant.app.secrets[0] ?? '' }, `${entra.url}/${tenant.domain}`);
      const result = await app.acquireTokenByClientCredential({ scopes: [VAULT_SCOPE] });
      const claims = decodeJwt(result?.accessToken ?? '');
      expect(claims.aud).toBe('https://vault.azure.net');
      expect(claims.roles).toBeUndefined();
      expect((claims.exp ?? 0) - (claims.iat ?? 0)).toBe(600);
      expect(entra.discovery[0]?.path).toBe(`/${tenant.domain}/v2.0/.well-known/openid-configuration`);
    } finally {
      entra.tokenLifetimeSeconds = 3599;
    }
  });

  it('issues a token for a certificate assertion (thumbprintSha256, PS256)', async () => {
    const { hex, base64url } = certificateThumbprints(appCert.certPem);
    const app = msalApp({ clientCertificate: { thumbprintSha256: hex, privateKey: appCert.keyPem } });
    const result = await app.acquireTokenByClientCredential({ scopes: [OUTLOOK_SCOPE] });
    expect(decodeJwt(result?.accessToken ?? '')).toMatchObject({
      appid: tenant.app.clientId,
      oid: tenant.app.servicePrincipalObjectId,
      appidacr: '2',
      roles: [SMTP_SEND_AS_APP_ROLE],
    });
    expect(entra.requests).toMatchObject([{ grant: 'client_certificate', credentialId: base64url, status: 200 }]);
  });

  it('refuses a certificate that is not registered on the app with AADSTS700027', async () => {
    const stranger = ca.issueClient('not registered');
    const app = msalApp({
      clientCertificate: {
        thumbprintSha256: certificateThumbprints(stranger.certPem).hex,
        privateKey: stranger.keyPem,
      },
    });
    const error = await rejection(app.acquireTokenByClientCredential({ scopes: [OUTLOOK_SCOPE] }));
    expect(error.message).toContain('AADSTS700027');
    expect(error.message).toContain('is not registered on application');
    expect(entra.requests).toMatchObject([{ grant: 'client_certificate', status: 401, errorCode: 700027 }]);
  });

  it('refuses a certificate assertion signed by another key with AADSTS700027 signature validation', async () => {
    const other = ca.issueClient('other key');
    const app = msalApp({
      clientCertificate: { thumbprintSha256: certificateThumbprints(appCert.certPem).hex, privateKey: other.keyPem },
    });
    const error = await rejection(app.acquireTokenByClientCredential({ scopes: [OUTLOOK_SCOPE] }));
    expect(error.message).toContain('AADSTS700027: Client assertion failed signature validation.');
  });

  it('refuses a registered certificate past its end date with AADSTS700027 "The key used is expired", naming its dates', async () => {
    const day = 24 * 60 * 60 * 1000;
    const expired = ca.issueClient('expired credential', {
      notBefore: new Date(Date.now() - 30 * day),
      notAfter: new Date(Date.now() - day),
    });
    const { hex, base64url } = certificateThumbprints(expired.certPem);
    tenant.app.certificates.set(base64url, expired.certPem);
    try {
      const app = msalApp({ clientCertificate: { thumbprintSha256: hex, privateKey: expired.keyPem } });
      const error = await rejection(app.acquireTokenByClientCredential({ scopes: [OUTLOOK_SCOPE] }));
      expect(error.message).toContain(
        'AADSTS700027: Client assertion contains an invalid signature. [Reason - The key used is expired.',
      );
      expect(error.message).toContain(`Thumbprint of key used by client: '${hex}'`);
      expect(error.message).toMatch(
        /Found key 'Start=\d\d\/\d\d\/\d{4} \d\d:\d\d:\d\d, End=\d\d\/\d\d\/\d{4} \d\d:\d\d:\d\d'/,
      );
      expect(entra.requests).toMatchObject([{ grant: 'client_certificate', status: 401, errorCode: 700027 }]);
    } finally {
      tenant.app.certificates.delete(base64url);
    }
  });

  it('issues a token for a federated managed identity assertion (no secret at all)', async () => {
    const identity = new ManagedIdentityCredential({ clientId: tenant.identity.clientId });
    let assertion = '';
    const app = msalApp({
      clientAssertion: async () => {
        const token = await identity.getToken(TOKEN_EXCHANGE_SCOPE);
        assertion = token.token;
        return token.token;
      },
    });
    const result = await app.acquireTokenByClientCredential({ scopes: [OUTLOOK_SCOPE] });
    expect(decodeJwt(assertion)).toMatchObject({
      iss: `https://login.microsoftonline.com/${tenant.tenantId}/v2.0`,
      aud: 'api://AzureADTokenExchange',
      sub: tenant.identity.principalId,
      oid: tenant.identity.principalId,
    });
    // The access token is the app's, not the identity's.
    expect(decodeJwt(result?.accessToken ?? '')).toMatchObject({
      appid: tenant.app.clientId,
      oid: tenant.app.servicePrincipalObjectId,
      roles: [SMTP_SEND_AS_APP_ROLE],
    });
    expect(mi.requests).toMatchObject([
      {
        resource: 'api://AzureADTokenExchange',
        identity: tenant.identity.clientId,
        apiVersion: '2019-08-01',
        status: 200,
      },
    ]);
    expect(entra.requests).toMatchObject([
      { grant: 'federated', credentialId: tenant.identity.principalId, status: 200 },
    ]);
    expect(recordedLeaks(entra.requests, { 'federated assertion': assertion })).toEqual([]);
  });

  it('refuses a federated assertion whose subject has no federated credential with AADSTS700213', async () => {
    tenant.app.federatedSubjects.clear();
    const identity = new ManagedIdentityCredential({ clientId: tenant.identity.clientId });
    const app = msalApp({ clientAssertion: async () => (await identity.getToken(TOKEN_EXCHANGE_SCOPE)).token });
    const error = await rejection(app.acquireTokenByClientCredential({ scopes: [OUTLOOK_SCOPE] }));
    expect(error.message).toContain(
      `AADSTS700213: No matching federated identity record found for presented assertion subject '${tenant.identity.principalId}'`,
    );
    expect(entra.requests).toMatchObject([{ grant: 'federated', status: 401, errorCode: 700213 }]);
  });

  it('answers a wrong client secret with AADSTS7000215 in Entra’s shape, and records no secret', async () => {
    const wrong = 'sbx~definitely-not-the-secret';
    const error = await rejection(
      msalApp({ clientSecret: wrong }).acquireTokenByClientCredential({ scopes: [OUTLOOK_SCOPE] }),
    );
    expect(error.message).toContain('AADSTS7000215: Invalid client secret provided.');
    expect(error.message).toContain(`for a secret added to app '${tenant.app.clientId}'`);
    expect(error.errorCode).toBe('invalid_client');
    expect(entra.requests).toMatchObject([{ grant: 'client_secret', status: 401, errorCode: 7000215 }]);
    expect(recordedLeaks(entra.requests, { 'wrong client secret': wrong })).toEqual([]);
  });

  it('answers an expired secret with AADSTS7000222 and an unknown app with AADSTS700016', async () => {
    const secret = tenant.app.secrets[0] ?? '';
    entra.expiredSecrets.add(secret);
    const expired = await rejection(
      msalApp({ clientSecret: secret }).acquireTokenByClientCredential({ scopes: [OUTLOOK_SCOPE] }),
    );
    expect(expired.message).toContain(
      `AADSTS7000222: The provided client secret keys for app '${tenant.app.clientId}' are expired.`,
    );

    const stranger = new ConfidentialClientApplication({
      auth: {
        clientId: '11111111-2222-3333-4444-555555555555',
        authority: entra.authority,
        knownAuthorities: [new URL(entra.url).host],
        clientSecret: secret,
      },
      system: { networkClient: msalNetworkClient(ca.certPem) },
    });
    const unknown = await rejection(stranger.acquireTokenByClientCredential({ scopes: [OUTLOOK_SCOPE] }));
    expect(unknown.message).toContain(
      "AADSTS700016: Application with identifier '11111111-2222-3333-4444-555555555555' was not found",
    );
    expect(entra.requests.map((r) => [r.status, r.errorCode])).toEqual([
      [401, 7000222],
      [400, 700016],
    ]);
  });

  it('refuses the delegated SMTP scope for client credentials with invalid_scope AADSTS1002012', async () => {
    const app = msalApp({ clientSecret: tenant.app.secrets[0] ?? '' });
    const error = await rejection(
      app.acquireTokenByClientCredential({ scopes: ['https://outlook.office.com/SMTP.SendAsApp'] }),
    );
    expect(error.errorCode).toBe('invalid_scope');
    expect(error.message).toContain(
      'AADSTS1002012: The provided value for scope https://outlook.office.com/SMTP.SendAsApp is not valid.',
    );
  });

  it('serves an injected AADSTS fault once, then recovers', async () => {
    entra.faults.push({ kind: 'aadsts', code: 7000222 });
    const app = msalApp({ clientSecret: tenant.app.secrets[0] ?? '' });
    const error = await rejection(app.acquireTokenByClientCredential({ scopes: [OUTLOOK_SCOPE] }));
    expect(error.message).toContain('AADSTS7000222');
    const result = await app.acquireTokenByClientCredential({ scopes: [OUTLOOK_SCOPE] });
    expect(result?.accessToken).toBeTruthy();
    expect(entra.requests.map((r) => r.status)).toEqual([401, 200]);
  });

  it('surfaces a 503 from the token endpoint; MSAL then throttles that request for 60 s without calling', async () => {
    entra.faults.push({ kind: 'status', status: 503 });
    const app = msalApp({ clientSecret: tenant.app.secrets[0] ?? '' });
    const first = await rejection(app.acquireTokenByClientCredential({ scopes: [OUTLOOK_SCOPE] }));
    expect(first.message).toContain('AADSTS90033');
    expect(entra.requests).toMatchObject([{ status: 503, errorCode: 90033 }]);

    // MSAL's client-side throttling (ThrottlingUtils): same app + same request = refused locally.
    const second = await rejection(app.acquireTokenByClientCredential({ scopes: [OUTLOOK_SCOPE] }));
    expect(second.message).toContain('AADSTS90033');
    expect(entra.requests).toHaveLength(1);

    // A new application instance has its own cache and goes to the network again.
    const fresh = await msalApp({ clientSecret: tenant.app.secrets[0] ?? '' }).acquireTokenByClientCredential({
      scopes: [OUTLOOK_SCOPE],
    });
    expect(fresh?.accessToken).toBeTruthy();
    expect(entra.requests.map((r) => r.status)).toEqual([503, 200]);
  });

  it('honours Retry-After on a 503 fault so the throttle is short', async () => {
    entra.faults.push({ kind: 'status', status: 503, retryAfterSeconds: 1 });
    const app = msalApp({ clientSecret: tenant.app.secrets[0] ?? '' });
    await rejection(app.acquireTokenByClientCredential({ scopes: [OUTLOOK_SCOPE] }));
    await new Promise((resolve) => setTimeout(resolve, 1_100));
    const result = await app.acquireTokenByClientCredential({ scopes: [OUTLOOK_SCOPE] });
    expect(result?.accessToken).toBeTruthy();
  });
});

describe('sandbox managed identity endpoint', () => {
  it('issues a Key Vault token for the user-assigned identity', async () => {
    const identity = new ManagedIdentityCredential({ clientId: tenant.identity.clientId });
    const token = await identity.getToken(VAULT_SCOPE);
    expect(decodeJwt(token.token)).toMatchObject({
      aud: 'https://vault.azure.net',
      iss: `https://sts.windows.net/${tenant.tenantId}/`,
      appid: tenant.identity.clientId,
      oid: tenant.identity.principalId,
      idtyp: 'app',
    });
    expect(token.expiresOnTimestamp).toBeGreaterThan(Date.now() + 3_000_000);
  });

  it('refuses a wrong IDENTITY_HEADER with 401 and an unknown client_id with 400', async () => {
    const base = `${mi.endpoint}?api-version=2019-08-01&resource=https://vault.azure.net&client_id=${tenant.identity.clientId}`;
    const wrongHeader = await rawRequest(base, { 'X-IDENTITY-HEADER': 'nope' });
    expect(wrongHeader.status).toBe(401);
    const unknown = await rawRequest(
      `${mi.endpoint}?api-version=2019-08-01&resource=https://vault.azure.net&client_id=00000000-0000-0000-0000-000000000001`,
      {
        'X-IDENTITY-HEADER': mi.header,
      },
    );
    expect(unknown.status).toBe(400);
    expect(JSON.parse(unknown.body)).toMatchObject({
      statusCode: 400,
      message: 'Unable to load the proper Managed Identity.',
    });
    expect(mi.requests.map((r) => r.status)).toEqual([401, 400]);
    expect(recordedLeaks(mi.requests, { IDENTITY_HEADER: mi.header })).toEqual([]);
  });
});

describe('sandbox Key Vault with SecretClient', () => {
  it('reads a secret with ClientSecretCredential through the 401 challenge', async () => {
    kv.setSecret(SECRET_NAME, 'the-smtp-client-secret');
    const client = secretClient(secretCredential());
    const secret = await client.getSecret(SECRET_NAME);
    expect(secret.value).toBe('the-smtp-client-secret');
    expect(secret.properties.id).toMatch(new RegExp(`^${kv.url}/secrets/${SECRET_NAME}/[0-9a-f]{32}$`));
    expect(secret.properties.enabled).toBe(true);
    expect(secret.properties.recoveryLevel).toBe('Recoverable+Purgeable');
    expect(kv.reads.map((r) => [r.status, r.principal])).toEqual([
      [401, undefined],
      [200, tenant.app.servicePrincipalObjectId],
    ]);
    expect(entra.requests).toMatchObject([{ scope: VAULT_SCOPE, grant: 'client_secret', status: 200 }]);
    // @azure/identity with disableInstanceDiscovery asks for the same single OIDC document as MSAL.
    expect(entra.discovery.map((d) => d.path)).toEqual([`/${tenant.tenantId}/v2.0/.well-known/openid-configuration`]);
    expect(recordedLeaks(kv.reads, { 'the secret value': 'the-smtp-client-secret' })).toEqual([]);
  });

  it('sends the challenge exactly as the SDK parses it', async () => {
    const response = await rawRequest(`${kv.url}/secrets/${SECRET_NAME}?api-version=7.6`);
    expect(response.status).toBe(401);
    expect(response.headers['www-authenticate']).toBe(
      `Bearer authorization="${entra.url}/${tenant.tenantId}", resource="https://vault.azure.net"`,
    );
  });

  it('reads a secret with ManagedIdentityCredential and with DefaultAzureCredential (AZURE_CLIENT_ID style)', async () => {
    kv.setSecret(SECRET_NAME, 'read-by-the-identity');
    const viaMi = await secretClient(new ManagedIdentityCredential({ clientId: tenant.identity.clientId })).getSecret(
      SECRET_NAME,
    );
    expect(viaMi.value).toBe('read-by-the-identity');
    const viaDefault = await secretClient(
      new DefaultAzureCredential({ managedIdentityClientId: tenant.identity.clientId }),
    ).getSecret(SECRET_NAME);
    expect(viaDefault.value).toBe('read-by-the-identity');
    expect(kv.reads.filter((r) => r.status === 200).map((r) => r.principal)).toEqual([
      tenant.identity.principalId,
      tenant.identity.principalId,
    ]);
    expect(mi.requests.every((r) => r.resource === 'https://vault.azure.net')).toBe(true);
  });

  it('answers 403 ForbiddenByRbac when the principal has no role', async () => {
    kv.setSecret(SECRET_NAME, 'x');
    kv.allowedPrincipals.delete(tenant.app.servicePrincipalObjectId);
    const error = await rejection(secretClient(secretCredential()).getSecret(SECRET_NAME));
    expect(error).toBeInstanceOf(RestError);
    expect(error.statusCode).toBe(403);
    expect(error.code).toBe('Forbidden');
    expect(error.message).toContain('Caller is not authorized to perform action on resource.');
    expect(error.message).toContain(`oid=${tenant.app.servicePrincipalObjectId}`);
    // The wire field is `innererror`; the SDK deserialises it as `innerError`.
    const details = (error as unknown as RestError).details as
      { error?: { innerError?: { code?: string } } } | undefined;
    expect(details?.error?.innerError?.code).toBe('ForbiddenByRbac');
    expect(kv.reads.at(-1)).toMatchObject({
      status: 403,
      errorCode: 'Forbidden',
      principal: tenant.app.servicePrincipalObjectId,
    });
  });

  it('answers 404 SecretNotFound for an unknown secret', async () => {
    const error = await rejection(secretClient(secretCredential()).getSecret('no-such-secret'));
    expect(error.statusCode).toBe(404);
    expect(error.code).toBe('SecretNotFound');
    expect(error.message).toContain('A secret with (name/id) no-such-secret was not found in this key vault.');
  });

  it('serves injected 503, 403 and 404 faults once each', async () => {
    kv.setSecret(SECRET_NAME, 'after-the-faults');
    const client = secretClient(secretCredential());
    kv.faults.push({ kind: 'status', status: 503 }, { kind: 'status', status: 403 }, { kind: 'status', status: 404 });
    const statuses: unknown[] = [];
    for (let i = 0; i < 3; i++) {
      const error = await rejection(client.getSecret(SECRET_NAME));
      statuses.push([error.statusCode, error.code]);
    }
    expect(statuses).toEqual([
      [503, 'ServiceUnavailable'],
      [403, 'Forbidden'],
      [404, 'SecretNotFound'],
    ]);
    expect((await client.getSecret(SECRET_NAME)).value).toBe('after-the-faults');
  });

  it('returns the new value after a rotation, and old versions by id', async () => {
    const client = secretClient(secretCredential());
    const first = kv.setSecret(SECRET_NAME, 'before-rotation');
    expect((await client.getSecret(SECRET_NAME)).value).toBe('before-rotation');
    const second = kv.setSecret(SECRET_NAME, 'after-rotation', 'text/plain');
    const latest = await client.getSecret(SECRET_NAME);
    expect(latest.value).toBe('after-rotation');
    expect(latest.properties.version).toBe(second.version);
    expect(latest.properties.contentType).toBe('text/plain');
    expect((await client.getSecret(SECRET_NAME, { version: first.version })).value).toBe('before-rotation');
  });

  it('lets only Secrets Officer principals write', async () => {
    const client = secretClient(secretCredential());
    const refused = await rejection(client.setSecret('written-by-sdk', 'v1'));
    expect(refused.statusCode).toBe(403);
    kv.writerPrincipals.add(tenant.app.servicePrincipalObjectId);
    const written = await client.setSecret('written-by-sdk', 'v1', { contentType: 'text/plain' });
    expect(written.properties.version).toMatch(/^[0-9a-f]{32}$/);
    expect((await client.getSecret('written-by-sdk')).value).toBe('v1');
    expect(kv.reads.filter((r) => r.operation === 'set').map((r) => r.status)).toEqual([401, 403, 200]);
  });

  it('refuses a token for another audience with 401', async () => {
    const outlookToken = await msalApp({ clientSecret: tenant.app.secrets[0] ?? '' }).acquireTokenByClientCredential({
      scopes: [OUTLOOK_SCOPE],
    });
    const response = await rawRequest(`${kv.url}/secrets/${SECRET_NAME}?api-version=7.6`, {
      authorization: `Bearer ${outlookToken?.accessToken ?? ''}`,
    });
    expect(response.status).toBe(401);
    expect(JSON.parse(response.body)).toMatchObject({ error: { code: 'Unauthorized' } });
    expect(response.headers['www-authenticate']).toContain('error="invalid_token"');
  });
});
