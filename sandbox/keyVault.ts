/** The sandbox's Key Vault: the secrets REST API over HTTPS with its 401 Bearer challenge, RBAC (Secrets User/Officer) and versioning. */
import { randomBytes } from 'node:crypto';
import https from 'node:https';
import type { IncomingMessage } from 'node:http';
import type { CertificateAuthority } from './ca';
import type { SandboxTenant } from './tenant';
import type { AccessTokenClaims, TokenIssuer } from './tokens';
import { KEY_VAULT_RESOURCE } from './entra';
import { closeServer, delay, listenOnLoopback, readBody, sendJson } from './httpServer';

/** Key Vault's recovery level with soft delete (90 days) and purge allowed. */
const RECOVERY_LEVEL = 'Recoverable+Purgeable';
const RECOVERABLE_DAYS = 90;
/** Secret names: 1-127 letters, digits and dashes. */
const SECRET_NAME = /^[0-9a-zA-Z-]{1,127}$/;
const NOT_FOUND_HELP =
  'If you recently deleted this secret you may be able to recover it using the correct recovery command. For help resolving this issue, please see https://go.microsoft.com/fwlink/?linkid=2125182';

/** What a request did: `get` (Key Vault Secrets User) or `set` (Key Vault Secrets Officer). */
export type SecretOperation = 'get' | 'set';

/** One secrets request as the vault saw it. Never holds a value. */
export interface SecretAccessRecord {
  time: Date;
  operation: SecretOperation;
  name: string;
  /** The version asked for, or written. */
  version?: string;
  status: number;
  /** `oid` of the caller's token, once verified. */
  principal?: string;
  /** Key Vault's error code (`Unauthorized`, `Forbidden`, `SecretNotFound`, ...). */
  errorCode?: string;
}

/** A failure injected into the next authenticated request (the unauthenticated challenge round trip does not consume faults). */
export type KeyVaultFault =
  { kind: 'status'; status: 503 | 500 | 429 | 403 | 404; retryAfterSeconds?: number } | { kind: 'delay'; ms: number };

/** A stored version, as returned by {@link KeyVaultServer.setSecret}. */
export interface SecretVersionInfo {
  /** `<url>/secrets/<name>/<version>`. */
  id: string;
  version: string;
}

/** Options of {@link startKeyVault}. */
export interface KeyVaultOptions {
  ca: CertificateAuthority;
  tenant: SandboxTenant;
  /** The issuer whose tokens the vault accepts (aud https://vault.azure.net). */
  issuer: TokenIssuer;
  /** The sandbox Entra origin, for the challenge's `authorization` parameter. */
  entraUrl: string;
}

/** A running sandbox Key Vault. */
export interface KeyVaultServer {
  /** `https://127.0.0.1:PORT`: the vault URL for SecretClient. */
  readonly url: string;
  /** Every secrets request, oldest first. */
  readonly reads: SecretAccessRecord[];
  readonly faults: KeyVaultFault[];
  /** Principals (oid) with Key Vault Secrets User: may read. Defaults to the managed identity and the app's service principal. */
  readonly allowedPrincipals: Set<string>;
  /** Principals (oid) with Key Vault Secrets Officer: may also write. Empty by default. */
  readonly writerPrincipals: Set<string>;
  /** Stores a new version of `name` (a rotation when it exists) and returns its id. */
  setSecret(name: string, value: string, contentType?: string): SecretVersionInfo;
  /** Removes every version of `name`; true if there was one. */
  deleteSecret(name: string): boolean;
  /**
   * Every value stored, each version of each secret (old ones after a rotation too), for the secret scans: the app
   * may have read any of them. A deleted secret's versions are still listed (a value once read may still be logged).
   */
  secretVersions(): Array<{ name: string; version: string; value: string }>;
  close(): Promise<void>;
}

interface StoredVersion {
  version: string;
  value: string;
  contentType?: string | undefined;
  tags?: Record<string, string> | undefined;
  enabled: boolean;
  created: number;
  updated: number;
}

class VaultError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    readonly innerCode?: string,
    readonly headers: Record<string, string> = {},
  ) {
    super(message);
  }

  body(): Record<string, unknown> {
    return {
      error: {
        code: this.code,
        message: this.message,
        ...(this.innerCode ? { innererror: { code: this.innerCode } } : {}),
      },
    };
  }
}

function headerValue(request: IncomingMessage, name: string): string | undefined {
  const value = request.headers[name];
  return Array.isArray(value) ? value[0] : value;
}

/**
 * Starts the sandbox Key Vault on 127.0.0.1 (HTTPS, certificate from `ca`).
 * `GET /secrets/{name}[/{version}]` and `PUT /secrets/{name}` with `api-version`; a request without a token gets
 * `401` and `WWW-Authenticate: Bearer authorization="<entraUrl>/<tenantId>", resource="https://vault.azure.net"`.
 */
export async function startKeyVault(options: KeyVaultOptions): Promise<KeyVaultServer> {
  const { ca, tenant, issuer, entraUrl } = options;
  const certificate = ca.issueServer();
  const secrets = new Map<string, StoredVersion[]>();
  /** Never pruned by deleteSecret: see KeyVaultServer.secretVersions. */
  const everStored: Array<{ name: string; version: string; value: string }> = [];
  const reads: SecretAccessRecord[] = [];
  const faults: KeyVaultFault[] = [];
  const allowedPrincipals = new Set([tenant.identity.principalId, tenant.app.servicePrincipalObjectId]);
  const writerPrincipals = new Set<string>();
  let origin = '';
  const vaultName = 'sandbox-vault';
  const challenge = `Bearer authorization="${entraUrl.replace(/\/$/, '')}/${tenant.tenantId}", resource="${KEY_VAULT_RESOURCE}"`;

  const secretId = (name: string, version: string): string => `${origin}/secrets/${name}/${version}`;

  function store(name: string, value: string, contentType?: string, tags?: Record<string, string>): StoredVersion {
    const now = Math.floor(Date.now() / 1000);
    const version: StoredVersion = {
      version: randomBytes(16).toString('hex'),
      value,
      contentType,
      tags,
      enabled: true,
      created: now,
      updated: now,
    };
    const versions = secrets.get(name) ?? [];
    versions.push(version);
    secrets.set(name, versions);
    everStored.push({ name, version: version.version, value });
    return version;
  }

  function secretBundle(name: string, stored: StoredVersion): Record<string, unknown> {
    return {
      value: stored.value,
      ...(stored.contentType !== undefined ? { contentType: stored.contentType } : {}),
      id: secretId(name, stored.version),
      attributes: {
        enabled: stored.enabled,
        created: stored.created,
        updated: stored.updated,
        recoveryLevel: RECOVERY_LEVEL,
        recoverableDays: RECOVERABLE_DAYS,
      },
      ...(stored.tags ? { tags: stored.tags } : {}),
    };
  }

  function forbidden(claims: AccessTokenClaims, operation: SecretOperation, name: string): VaultError {
    const action = operation === 'get' ? 'getSecret/action' : 'setSecret/action';
    return new VaultError(
      403,
      'Forbidden',
      [
        'Caller is not authorized to perform action on resource.',
        'If role assignments, deny assignments or role definitions were changed recently, please observe propagation time.',
        `Caller: appid=${claims.appid};oid=${claims.oid};iss=${claims.iss ?? ''}`,
        `Action: 'Microsoft.KeyVault/vaults/secrets/${action}'`,
        `Resource: '/subscriptions/00000000-0000-0000-0000-000000000000/resourcegroups/sandbox/providers/microsoft.keyvault/vaults/${vaultName}/secrets/${name.toLowerCase()}'`,
        'Assignment: (not found)',
        'DenyAssignmentId: null',
        'DecisionReason: null ',
        `Vault: ${vaultName};location=local`,
        '',
      ].join('\r\n'),
      'ForbiddenByRbac',
    );
  }

  function notFound(name: string): VaultError {
    return new VaultError(
      404,
      'SecretNotFound',
      `A secret with (name/id) ${name} was not found in this key vault. ${NOT_FOUND_HELP}`,
    );
  }

  function faultError(
    fault: Extract<KeyVaultFault, { kind: 'status' }>,
    claims: AccessTokenClaims,
    operation: SecretOperation,
    name: string,
  ): VaultError {
    const retryAfter: Record<string, string> =
      fault.retryAfterSeconds !== undefined ? { 'retry-after': String(fault.retryAfterSeconds) } : {};
    switch (fault.status) {
      case 403:
        return forbidden(claims, operation, name);
      case 404:
        return notFound(name);
      case 429:
        return new VaultError(
          429,
          'Throttled',
          'Request was not processed because too many requests were received. Reason: VaultRequestTypeLimitReached',
          undefined,
          { 'retry-after': String(fault.retryAfterSeconds ?? 1) },
        );
      case 500:
        return new VaultError(500, 'InternalServerError', 'An unexpected error occurred.', undefined, retryAfter);
      case 503:
        return new VaultError(
          503,
          'ServiceUnavailable',
          'The service is temporarily unavailable. Please retry.',
          undefined,
          retryAfter,
        );
    }
  }

  /** Verifies the Bearer token; undefined when there is none (the challenge round trip). */
  async function authenticate(request: IncomingMessage): Promise<AccessTokenClaims | undefined> {
    const authorization = headerValue(request, 'authorization');
    if (!authorization) return undefined;
    const match = /^Bearer\s+(\S+)$/i.exec(authorization);
    if (!match?.[1])
      throw new VaultError(401, 'Unauthorized', 'AKV10000: Request is missing a Bearer or PoP token.', undefined, {
        'www-authenticate': challenge,
      });
    const check = await issuer.verify(match[1], [KEY_VAULT_RESOURCE]);
    if (!check.ok) {
      const message: Record<typeof check.problem, string> = {
        malformed: 'AKV10000: Request is missing a Bearer or PoP token.',
        signature: 'AKV10032: Invalid issuer or signature.',
        expired: 'AKV10022: Token expired.',
        audience: `AKV10022: Invalid audience. Expected ${KEY_VAULT_RESOURCE}.`,
        issuer: `AKV10032: Invalid issuer. Expected one of ${issuer.issuerUrl}.`,
      };
      throw new VaultError(401, 'Unauthorized', message[check.problem], undefined, {
        'www-authenticate': `${challenge}, error="invalid_token"`,
      });
    }
    return check.claims;
  }

  const server = https.createServer({ key: certificate.keyPem, cert: certificate.certPem }, (request, response) => {
    const url = new URL(request.url ?? '/', 'https://sandbox.invalid');
    const segments = url.pathname.split('/').filter(Boolean);
    const operation: SecretOperation = request.method === 'PUT' ? 'set' : 'get';
    const record: SecretAccessRecord = { time: new Date(), operation, name: segments[1] ?? '', status: 0 };
    if (segments[2]) record.version = segments[2];

    const serve = async (): Promise<void> => {
      const body = request.method === 'PUT' ? await readBody(request) : '';
      if (
        segments[0] !== 'secrets' ||
        !segments[1] ||
        segments.length > 3 ||
        !['GET', 'PUT'].includes(request.method ?? '')
      ) {
        throw new VaultError(
          400,
          'BadParameter',
          `The request URI '${url.pathname}' is not supported by the sandbox vault.`,
        );
      }
      if (!url.searchParams.get('api-version')) {
        throw new VaultError(400, 'BadParameter', 'The api-version query parameter is missing.');
      }
      reads.push(record);
      const claims = await authenticate(request);
      if (!claims) {
        throw new VaultError(401, 'Unauthorized', 'AKV10000: Request is missing a Bearer or PoP token.', undefined, {
          'www-authenticate': challenge,
        });
      }
      record.principal = claims.oid;
      const name = segments[1];
      const fault = faults.shift();
      if (fault?.kind === 'delay') await delay(fault.ms);
      if (fault?.kind === 'status') throw faultError(fault, claims, operation, name);
      const permitted =
        operation === 'get'
          ? allowedPrincipals.has(claims.oid) || writerPrincipals.has(claims.oid)
          : writerPrincipals.has(claims.oid);
      if (!permitted) throw forbidden(claims, operation, name);
      if (!SECRET_NAME.test(name)) {
        throw new VaultError(400, 'BadParameter', `The request URI contains an invalid name: ${name}`);
      }

      if (operation === 'set') {
        if (segments.length !== 2)
          throw new VaultError(400, 'BadParameter', 'A version cannot be given when setting a secret.');
        let parsed: { value?: unknown; contentType?: unknown; tags?: unknown };
        try {
          parsed = JSON.parse(body) as typeof parsed;
        } catch {
          throw new VaultError(400, 'BadParameter', 'The request body is not valid JSON.');
        }
        if (typeof parsed.value !== 'string')
          throw new VaultError(400, 'BadParameter', "Property 'value' is required.");
        const stored = store(
          name,
          parsed.value,
          typeof parsed.contentType === 'string' ? parsed.contentType : undefined,
          parsed.tags && typeof parsed.tags === 'object' ? (parsed.tags as Record<string, string>) : undefined,
        );
        record.version = stored.version;
        record.status = 200;
        return sendJson(response, 200, secretBundle(name, stored));
      }

      const versions = secrets.get(name);
      const stored = segments[2] ? versions?.find((v) => v.version === segments[2]) : versions?.at(-1);
      if (!stored) throw notFound(segments[2] ? `${name}/${segments[2]}` : name);
      if (!stored.enabled) {
        throw new VaultError(403, 'Forbidden', 'Operation get is not allowed on a disabled secret.', 'SecretDisabled');
      }
      record.version = stored.version;
      record.status = 200;
      sendJson(response, 200, secretBundle(name, stored));
    };

    serve().catch((error: unknown) => {
      const vaultError =
        error instanceof VaultError
          ? error
          : new VaultError(500, 'InternalServerError', error instanceof Error ? error.message : String(error));
      record.status = vaultError.status;
      record.errorCode = vaultError.code;
      if (response.headersSent) return void response.destroy();
      sendJson(response, vaultError.status, vaultError.body(), vaultError.headers);
    });
  });
  const port = await listenOnLoopback(server);
  origin = `https://127.0.0.1:${port}`;

  return {
    url: origin,
    reads,
    faults,
    allowedPrincipals,
    writerPrincipals,
    setSecret(name, value, contentType) {
      if (!SECRET_NAME.test(name))
        throw new Error(`Key Vault secret names are 1-127 letters, digits and dashes: '${name}'`);
      const stored = store(name, value, contentType);
      return { id: secretId(name, stored.version), version: stored.version };
    },
    deleteSecret: (name) => secrets.delete(name),
    secretVersions: () => everStored.map((entry) => ({ ...entry })),
    close: () => closeServer(server),
  };
}
