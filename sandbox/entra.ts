/** The sandbox's Entra ID: OIDC discovery, JWKS and the v2.0 token endpoint (client credentials) over HTTPS, with Entra's error shapes. */
import { createHash, createPublicKey, randomUUID, X509Certificate } from 'node:crypto';
import https from 'node:https';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { compactVerify, decodeJwt, decodeProtectedHeader, type JWTPayload } from 'jose';
import type { CertificateAuthority } from './ca';
import type { SandboxTenant } from './tenant';
import type { AccessTokenClaims, TokenIssuer } from './tokens';
import { closeServer, delay, listenOnLoopback, readBody, sendJson } from './httpServer';
import { AadstsError, aadstsStatus, entraErrorBody, type AadstsCode, type ErrorContext } from './entraErrors';

/** Audience of a managed identity token used as a federated credential (workload identity federation). */
export const TOKEN_EXCHANGE_AUDIENCE = 'api://AzureADTokenExchange';
/** Exchange Online's resource; app-only tokens for it carry the app's roles (SMTP.SendAsApp). */
export const OUTLOOK_RESOURCE = 'https://outlook.office365.com';
/** Key Vault's resource, as in the 401 challenge. */
export const KEY_VAULT_RESOURCE = 'https://vault.azure.net';
/** Azure Storage's resource (blobs, queues, tables); the managed identity endpoint issues it for identity-based AzureWebJobsStorage. */
export const STORAGE_RESOURCE = 'https://storage.azure.com';
/** Azure Monitor's resource: Application Insights ingestion with Entra ID authentication (local auth off). */
export const MONITOR_RESOURCE = 'https://monitor.azure.com';
/** What Entra answers for client credentials: 3599 s (tokens live 60-90 min, the client is told just under an hour). */
export const DEFAULT_TOKEN_LIFETIME_SECONDS = 3599;

const JWT_BEARER_ASSERTION_TYPE = 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer';
const DEFAULT_SCOPE_SUFFIX = '/.default';
/** OIDC scopes some clients add to every request; Entra ignores them for client credentials. */
const OIDC_SCOPES = new Set(['openid', 'profile', 'offline_access', 'email']);
/** Resources this tenant can issue app-only tokens for. */
const KNOWN_RESOURCES = [OUTLOOK_RESOURCE, KEY_VAULT_RESOURCE] as const;
/** Clock skew Entra tolerates on client assertions. */
const ASSERTION_CLOCK_SKEW_SECONDS = 300;

/** How the client authenticated in a token request. */
export type TokenGrant = 'client_secret' | 'client_certificate' | 'federated' | 'none';

/** One token request as the sandbox saw it. Never holds the secret or the assertion. */
export interface TokenRequestRecord {
  time: Date;
  /** The tenant segment of the URL (GUID or domain). */
  tenant: string;
  clientId: string;
  grantType: string;
  grant: TokenGrant;
  scope: string;
  status: number;
  /** The AADSTS code of an error answer. */
  errorCode?: number;
  /** `x5t#S256`/`x5t` of a certificate assertion, or `sub` of a federated one (both public). */
  credentialId?: string;
}

/** A metadata request (OIDC configuration, JWKS, instance discovery). */
export interface DiscoveryRecord {
  time: Date;
  method: string;
  path: string;
  status: number;
}

/** A failure injected into the next token request (one fault per request, first in first out). */
export type EntraFault =
  /** A 5xx/429 answer in Entra's shape (AADSTS50000 / 90033); `retryAfterSeconds` adds Retry-After. */
  | { kind: 'status'; status: 500 | 503 | 429; retryAfterSeconds?: number }
  /** The given AADSTS error, as if Entra had decided it (e.g. 7000222 expired secret). */
  | { kind: 'aadsts'; code: AadstsCode }
  /** Holds the request for `ms` milliseconds, then serves it normally. */
  | { kind: 'delay'; ms: number };

/** Options of {@link startEntra}. */
export interface EntraOptions {
  ca: CertificateAuthority;
  tenant: SandboxTenant;
  /** Signs access tokens; create it with `https://sts.windows.net/<tenantId>/` as issuer (v1 app-only tokens). */
  issuer: TokenIssuer;
  /** Issuer of managed identity tokens for `api://AzureADTokenExchange` (federated credentials). Without it, federated assertions fail with AADSTS700211. */
  federationIssuer?: TokenIssuer;
  tokenLifetimeSeconds?: number;
}

/** A running sandbox Entra ID. */
export interface EntraServer {
  /** `https://127.0.0.1:PORT`: the authority host (MSAL `knownAuthorities: [new URL(url).host]`). */
  readonly url: string;
  /** `https://127.0.0.1:PORT/<tenantId>`: the authority for MSAL. */
  readonly authority: string;
  /** `https://127.0.0.1:PORT/<tenantId>/oauth2/v2.0/token`. */
  readonly tokenEndpoint: string;
  /** Every token request, oldest first. */
  readonly requests: TokenRequestRecord[];
  /** Every discovery request (OIDC configuration, JWKS), oldest first. */
  readonly discovery: DiscoveryRecord[];
  /** Push faults here; each token request consumes the first one. */
  readonly faults: EntraFault[];
  /** Secrets that are still registered but past their end date: presenting one gives AADSTS7000222. */
  readonly expiredSecrets: Set<string>;
  /** Lifetime of the next tokens issued, in seconds. */
  tokenLifetimeSeconds: number;
  /**
   * Every client assertion presented (certificate-signed or federated), oldest first, kept apart from `requests`:
   * each is a credential that buys tokens for minutes, so the secret scans look for it in everything the app wrote.
   */
  readonly clientAssertions: string[];
  close(): Promise<void>;
}

/** Claims of an app-only v1 access token as Entra issues them (client credentials or managed identity). */
export function appOnlyAccessTokenClaims(options: {
  tenantId: string;
  issuerUrl: string;
  audience: string;
  appId: string;
  objectId: string;
  roles: string[];
  /** '1' for a client secret, '2' for a certificate or federated assertion (and managed identities). */
  appidacr: '0' | '1' | '2';
}): Omit<AccessTokenClaims, 'iss' | 'iat' | 'exp' | 'nbf'> {
  return {
    aud: options.audience,
    tid: options.tenantId,
    appid: options.appId,
    appidacr: options.appidacr,
    idp: options.issuerUrl,
    oid: options.objectId,
    sub: options.objectId,
    ...(options.roles.length > 0 ? { roles: options.roles } : {}),
    idtyp: 'app',
    uti: randomUUID().replace(/-/g, '').slice(0, 22),
    ver: '1.0',
  };
}

function headerValue(request: IncomingMessage, name: string): string | undefined {
  const value = request.headers[name];
  return Array.isArray(value) ? value[0] : value;
}

/** Finds the registered certificate a client assertion names, by `x5t#S256` or (legacy) `x5t`. */
function findCertificate(
  tenant: SandboxTenant,
  header: Record<string, unknown>,
): { certPem: string; id: string } | undefined {
  const sha256 = header['x5t#S256'];
  if (typeof sha256 === 'string') {
    const certPem = tenant.app.certificates.get(sha256);
    return certPem ? { certPem, id: sha256 } : undefined;
  }
  const sha1 = header['x5t'];
  if (typeof sha1 === 'string') {
    for (const certPem of tenant.app.certificates.values()) {
      const digest = createHash('sha1').update(new X509Certificate(certPem).raw).digest('base64url');
      if (digest === sha1) return { certPem, id: sha1 };
    }
  }
  return undefined;
}

/** A key credential's date as Entra writes it in AADSTS700027: `MM/DD/YYYY HH:MM:SS` (UTC). */
function keyDate(value: string): string {
  const d = new Date(value);
  const two = (n: number) => String(n).padStart(2, '0');
  return `${two(d.getUTCMonth() + 1)}/${two(d.getUTCDate())}/${d.getUTCFullYear()} ${two(d.getUTCHours())}:${two(d.getUTCMinutes())}:${two(d.getUTCSeconds())}`;
}

function thumbprintHex(header: Record<string, unknown>): string {
  const value = header['x5t#S256'] ?? header['x5t'];
  return typeof value === 'string' ? Buffer.from(value, 'base64url').toString('hex').toUpperCase() : '';
}

/**
 * Starts the sandbox Entra ID on 127.0.0.1 (HTTPS, certificate from `ca`).
 * Serves what MSAL Node and @azure/identity request for a custom authority: `GET /{tenant}/v2.0/.well-known/openid-configuration`
 * (tenant = id or domain), the JWKS, and `POST /{tenant}/oauth2/v2.0/token` with client credentials
 * (client secret, certificate assertion, or a federated managed identity assertion).
 */
export async function startEntra(options: EntraOptions): Promise<EntraServer> {
  const { ca, tenant, issuer, federationIssuer } = options;
  const certificate = ca.issueServer();
  const requests: TokenRequestRecord[] = [];
  const discovery: DiscoveryRecord[] = [];
  const faults: EntraFault[] = [];
  const expiredSecrets = new Set<string>();
  const clientAssertions: string[] = [];
  let origin = '';
  // Read at request time: tests change the lifetime on the returned object.
  const settings = { tokenLifetimeSeconds: options.tokenLifetimeSeconds ?? DEFAULT_TOKEN_LIFETIME_SECONDS };

  const knowsTenant = (segment: string): boolean =>
    segment.toLowerCase() === tenant.tenantId.toLowerCase() || segment.toLowerCase() === tenant.domain.toLowerCase();

  /** Entra's v2.0 OIDC document; endpoints always use the tenant id, as Entra does even when asked by domain. */
  function openIdConfiguration(): Record<string, unknown> {
    const base = `${origin}/${tenant.tenantId}`;
    return {
      token_endpoint: `${base}/oauth2/v2.0/token`,
      token_endpoint_auth_methods_supported: ['client_secret_post', 'private_key_jwt', 'client_secret_basic'],
      jwks_uri: `${base}/discovery/v2.0/keys`,
      response_modes_supported: ['query', 'fragment', 'form_post'],
      subject_types_supported: ['pairwise'],
      id_token_signing_alg_values_supported: ['RS256'],
      response_types_supported: ['code', 'id_token', 'code id_token', 'id_token token'],
      scopes_supported: ['openid', 'profile', 'email', 'offline_access'],
      // Same origin as the authority: MSAL 7 validates the issuer host against the authority host.
      issuer: `${base}/v2.0`,
      request_uri_parameter_supported: false,
      authorization_endpoint: `${base}/oauth2/v2.0/authorize`,
      device_authorization_endpoint: `${base}/oauth2/v2.0/devicecode`,
      http_logout_supported: true,
      frontchannel_logout_supported: true,
      end_session_endpoint: `${base}/oauth2/v2.0/logout`,
      claims_supported: ['sub', 'iss', 'aud', 'exp', 'iat', 'auth_time', 'acr', 'nonce', 'tid', 'ver', 'oid'],
      tenant_region_scope: 'EU',
      cloud_instance_name: 'microsoftonline.com',
      cloud_graph_host_name: 'graph.windows.net',
      msgraph_host: 'graph.microsoft.com',
    };
  }

  async function handleDiscovery(request: IncomingMessage, response: ServerResponse, path: string): Promise<boolean> {
    const record = (status: number): void => {
      discovery.push({ time: new Date(), method: request.method ?? 'GET', path, status });
    };
    const oidc = /^\/([^/]+)(?:\/v2\.0)?\/\.well-known\/openid-configuration$/.exec(path);
    const keys = /^\/([^/]+)\/discovery(?:\/v2\.0)?\/keys$/.exec(path);
    if (path === '/common/discovery/instance') {
      const host = new URL(origin).host;
      record(200);
      sendJson(response, 200, {
        tenant_discovery_endpoint: `${origin}/${tenant.tenantId}/v2.0/.well-known/openid-configuration`,
        'api-version': '1.1',
        metadata: [{ preferred_network: host, preferred_cache: host, aliases: [host] }],
      });
      return true;
    }
    const segment = oidc?.[1] ?? keys?.[1];
    if (segment === undefined) return false;
    if (!knowsTenant(segment) && !(keys && segment === 'common')) {
      record(400);
      const context = errorContext('', segment, '', '');
      sendJson(
        response,
        400,
        entraErrorBody(90002, context, headerValue(request, 'client-request-id') ?? randomUUID(), origin),
      );
      return true;
    }
    record(200);
    sendJson(response, 200, oidc ? openIdConfiguration() : await issuer.jwks());
    return true;
  }

  function errorContext(
    clientId: string,
    tenantSegment: string,
    scope: string,
    grantType: string,
    detail = '',
  ): ErrorContext {
    return { clientId, tenant, tenantSegment, scope, grantType, detail };
  }

  /** Checks a certificate-signed client assertion (private_key_jwt). */
  async function checkCertificateAssertion(
    assertion: string,
    clientId: string,
    tenantSegment: string,
  ): Promise<string> {
    let header: Record<string, unknown>;
    let claims: JWTPayload;
    try {
      header = decodeProtectedHeader(assertion);
      claims = decodeJwt(assertion);
    } catch {
      throw new AadstsError(50027);
    }
    const found = findCertificate(tenant, header);
    if (!found) {
      throw new AadstsError(
        700027,
        `The certificate with identifier used to sign the client assertion is not registered on application. [Reason - The key was not found., Thumbprint of key used by client: '${thumbprintHex(header)}', Please visit the Azure Portal, Graph Explorer or directly use MS Graph to see configured keys for app Id '${clientId}'.]`,
      );
    }
    // A key credential ends when its certificate does (Entra takes the dates from the certificate at upload).
    const registered = new X509Certificate(found.certPem);
    if (Date.parse(registered.validTo) < Date.now()) {
      throw new AadstsError(
        700027,
        `Client assertion contains an invalid signature. [Reason - The key used is expired., Thumbprint of key used by client: '${thumbprintHex(header)}', Found key 'Start=${keyDate(registered.validFrom)}, End=${keyDate(registered.validTo)}', Please visit the Azure Portal, Graph Explorer or directly use MS Graph to see configured keys for app Id '${clientId}'.]`,
      );
    }
    try {
      await compactVerify(assertion, createPublicKey(found.certPem), { algorithms: ['RS256', 'PS256'] });
    } catch {
      throw new AadstsError(700027, 'Client assertion failed signature validation.');
    }
    if (claims.iss !== clientId || claims.sub !== clientId) throw new AadstsError(700021);
    const audiences = new Set([
      `${origin}/${tenant.tenantId}/oauth2/v2.0/token`,
      `${origin}/${tenantSegment}/oauth2/v2.0/token`,
      `${origin}/${tenant.tenantId}/v2.0`,
    ]);
    const audClaim = Array.isArray(claims.aud) ? claims.aud : [claims.aud];
    if (!audClaim.some((aud) => aud !== undefined && audiences.has(aud))) throw new AadstsError(700023);
    checkTimeRange(claims);
    return found.id;
  }

  function checkTimeRange(claims: JWTPayload): void {
    const now = Math.floor(Date.now() / 1000);
    const exp = claims.exp ?? 0;
    const nbf = claims.nbf ?? 0;
    if (exp + ASSERTION_CLOCK_SKEW_SECONDS < now || nbf - ASSERTION_CLOCK_SKEW_SECONDS > now) {
      throw new AadstsError(
        700024,
        `Current time: ${new Date(now * 1000).toISOString()}, assertion valid from ${new Date(nbf * 1000).toISOString()}, expiry time of assertion ${new Date(exp * 1000).toISOString()}.`,
      );
    }
  }

  /** Checks a federated assertion (a managed identity token for api://AzureADTokenExchange). */
  async function checkFederatedAssertion(assertion: string): Promise<string> {
    let claims: JWTPayload;
    try {
      claims = decodeJwt(assertion);
    } catch {
      throw new AadstsError(50027);
    }
    const subject = claims.sub ?? '';
    if (!federationIssuer || claims.iss !== federationIssuer.issuerUrl) throw new AadstsError(700211, claims.iss ?? '');
    const audClaim = Array.isArray(claims.aud) ? claims.aud : [claims.aud ?? ''];
    if (!audClaim.includes(TOKEN_EXCHANGE_AUDIENCE)) throw new AadstsError(700212, audClaim.join(','));
    const check = await federationIssuer.verify(assertion, [TOKEN_EXCHANGE_AUDIENCE]);
    if (!check.ok) {
      if (check.problem === 'expired') checkTimeRange(claims);
      throw new AadstsError(
        70021,
        `Assertion Issuer: '${claims.iss ?? ''}'. Assertion Subject: '${subject}'. Assertion Audience: '${audClaim.join(',')}'.`,
      );
    }
    if (!tenant.app.federatedSubjects.has(subject)) throw new AadstsError(700213, subject);
    return subject;
  }

  /** Maps the requested scope to a known resource, or throws the scope error Entra gives. */
  function resourceFor(scope: string): (typeof KNOWN_RESOURCES)[number] {
    const scopes = scope.split(' ').filter((s) => s && !OIDC_SCOPES.has(s));
    if (scopes.length !== 1) throw new AadstsError(70011);
    const only = scopes[0] ?? '';
    if (!only.endsWith(DEFAULT_SCOPE_SUFFIX)) throw new AadstsError(1002012);
    const resource = only.slice(0, -DEFAULT_SCOPE_SUFFIX.length);
    const known = KNOWN_RESOURCES.find((r) => r === resource);
    if (!known) throw new AadstsError(500011);
    return known;
  }

  async function handleToken(request: IncomingMessage, response: ServerResponse, tenantSegment: string): Promise<void> {
    const correlationId = headerValue(request, 'client-request-id') ?? randomUUID();
    const form = request.method === 'POST' ? new URLSearchParams(await readBody(request)) : new URLSearchParams();
    const clientId = form.get('client_id') ?? '';
    const grantType = form.get('grant_type') ?? '';
    const scope = form.get('scope') ?? '';
    const secret = form.get('client_secret');
    const assertion = form.get('client_assertion');
    if (assertion) clientAssertions.push(assertion);
    let grant: TokenGrant = 'none';
    if (secret !== null) grant = 'client_secret';
    else if (assertion !== null) {
      let isCertificate = false;
      try {
        const header = decodeProtectedHeader(assertion);
        isCertificate = 'x5t' in header || 'x5t#S256' in header;
      } catch {
        // Malformed: reported as AADSTS50027 by the certificate check.
        isCertificate = true;
      }
      grant = isCertificate ? 'client_certificate' : 'federated';
    }
    const record: TokenRequestRecord = {
      time: new Date(),
      tenant: tenantSegment,
      clientId,
      grantType,
      grant,
      scope,
      status: 0,
    };
    requests.push(record);

    const fail = (code: AadstsCode, detail = '', headers: Record<string, string> = {}): void => {
      const body = entraErrorBody(
        code,
        errorContext(clientId, tenantSegment, scope, grantType, detail),
        correlationId,
        origin,
      );
      const status = aadstsStatus(code);
      record.status = status;
      record.errorCode = code;
      sendJson(response, status, body, {
        'client-request-id': correlationId,
        'x-ms-request-id': body.trace_id,
        ...headers,
      });
    };

    const fault = faults.shift();
    if (fault?.kind === 'delay') await delay(fault.ms);
    if (fault?.kind === 'status') {
      const code: AadstsCode = fault.status === 500 ? 50000 : 90033;
      const retryAfter: Record<string, string> =
        fault.retryAfterSeconds !== undefined ? { 'retry-after': String(fault.retryAfterSeconds) } : {};
      const body = entraErrorBody(code, errorContext(clientId, tenantSegment, scope, grantType), correlationId, origin);
      if (fault.status === 429) body.error = 'temporarily_unavailable';
      record.status = fault.status;
      record.errorCode = code;
      sendJson(response, fault.status, body, { 'client-request-id': correlationId, ...retryAfter });
      return;
    }
    if (fault?.kind === 'aadsts') return fail(fault.code);

    try {
      if (request.method !== 'POST') throw new AadstsError(900561);
      if (!knowsTenant(tenantSegment)) throw new AadstsError(90002);
      if (grantType !== 'client_credentials') throw new AadstsError(70003);
      if (clientId.toLowerCase() !== tenant.app.clientId.toLowerCase()) throw new AadstsError(700016);
      let appidacr: '1' | '2' = '2';
      if (secret !== null) {
        if (expiredSecrets.has(secret)) throw new AadstsError(7000222);
        if (!tenant.app.secrets.includes(secret)) throw new AadstsError(7000215);
        appidacr = '1';
      } else if (assertion !== null && form.get('client_assertion_type') === JWT_BEARER_ASSERTION_TYPE) {
        record.credentialId =
          grant === 'federated'
            ? await checkFederatedAssertion(assertion)
            : await checkCertificateAssertion(assertion, clientId, tenantSegment);
      } else {
        throw new AadstsError(7000218);
      }
      const resource = resourceFor(scope);
      const lifetime = settings.tokenLifetimeSeconds;
      const accessToken = await issuer.sign(
        appOnlyAccessTokenClaims({
          tenantId: tenant.tenantId,
          issuerUrl: issuer.issuerUrl,
          audience: resource,
          appId: tenant.app.clientId,
          objectId: tenant.app.servicePrincipalObjectId,
          roles: resource === OUTLOOK_RESOURCE ? [...tenant.app.roles] : [],
          appidacr,
        }),
        lifetime,
      );
      record.status = 200;
      sendJson(
        response,
        200,
        { token_type: 'Bearer', expires_in: lifetime, ext_expires_in: lifetime, access_token: accessToken },
        { 'client-request-id': correlationId },
      );
    } catch (error) {
      if (error instanceof AadstsError) return fail(error.code, error.detail);
      throw error;
    }
  }

  const server = https.createServer({ key: certificate.keyPem, cert: certificate.certPem }, (request, response) => {
    const path = new URL(request.url ?? '/', 'https://sandbox.invalid').pathname;
    const route = async (): Promise<void> => {
      const token = /^\/([^/]+)\/oauth2\/v2\.0\/token$/.exec(path);
      if (token) return handleToken(request, response, token[1] ?? '');
      if (request.method === 'GET' && (await handleDiscovery(request, response, path))) return;
      discovery.push({ time: new Date(), method: request.method ?? '', path, status: 404 });
      sendJson(response, 404, { error: 'not_found', error_description: `No sandbox Entra endpoint at ${path}` });
    };
    route().catch((error: unknown) => {
      if (!response.headersSent) {
        sendJson(response, 500, {
          error: 'server_error',
          error_description: error instanceof Error ? error.message : String(error),
        });
      } else {
        response.destroy();
      }
    });
  });
  const port = await listenOnLoopback(server);
  origin = `https://127.0.0.1:${port}`;

  return {
    url: origin,
    authority: `${origin}/${tenant.tenantId}`,
    tokenEndpoint: `${origin}/${tenant.tenantId}/oauth2/v2.0/token`,
    requests,
    discovery,
    faults,
    expiredSecrets,
    get tokenLifetimeSeconds() {
      return settings.tokenLifetimeSeconds;
    },
    set tokenLifetimeSeconds(seconds: number) {
      settings.tokenLifetimeSeconds = seconds;
    },
    clientAssertions,
    close: () => closeServer(server),
  };
}
