/** The App Service managed identity endpoint (IDENTITY_ENDPOINT + IDENTITY_HEADER, api-version 2019-08-01) over plain HTTP on loopback. */
import { randomBytes, randomUUID } from 'node:crypto';
import http from 'node:http';
import type { IncomingMessage } from 'node:http';
import type { SandboxTenant } from './tenant';
import { TokenIssuer } from './tokens';
import {
  appOnlyAccessTokenClaims,
  DEFAULT_TOKEN_LIFETIME_SECONDS,
  KEY_VAULT_RESOURCE,
  MONITOR_RESOURCE,
  OUTLOOK_RESOURCE,
  STORAGE_RESOURCE,
  TOKEN_EXCHANGE_AUDIENCE,
} from './entra';
import { aadstsDescription } from './entraErrors';
import { closeServer, delay, listenOnLoopback, sendJson } from './httpServer';

/** The api-version MSAL Node's AppService source sends. */
export const APP_SERVICE_MSI_API_VERSION = '2019-08-01';
/** Header carrying IDENTITY_HEADER (MSAL: ManagedIdentityHeaders.APP_SERVICE_SECRET_HEADER_NAME). */
export const IDENTITY_HEADER_NAME = 'x-identity-header';
const TOKEN_PATH = '/msi/token';

/** A failure injected into the next managed identity request. */
export type ManagedIdentityFault = { kind: 'status'; status: 500 | 503 | 429 } | { kind: 'delay'; ms: number };

/** One token request to the endpoint. Never holds the token or the header value. */
export interface ManagedIdentityRequestRecord {
  time: Date;
  resource: string;
  /** The user-assigned identity asked for (`client_id`, `object_id` or `mi_res_id`), or undefined for system-assigned. */
  identity?: string | undefined;
  apiVersion: string;
  status: number;
  error?: string;
}

/** Options of {@link startManagedIdentityEndpoint}. */
export interface ManagedIdentityOptions {
  tenant: SandboxTenant;
  /** The main (Entra v1) issuer: resource tokens such as Key Vault's. */
  issuer: TokenIssuer;
  /** Issues `api://AzureADTokenExchange` assertions; see {@link createFederationIssuer}. Entra must trust it. */
  federationIssuer: TokenIssuer;
  tokenLifetimeSeconds?: number;
}

/** A running managed identity endpoint. */
export interface ManagedIdentityEndpoint {
  /** Value for IDENTITY_ENDPOINT, e.g. `http://127.0.0.1:PORT/msi/token`. */
  readonly endpoint: string;
  /** Value for IDENTITY_HEADER (the platform's per-process secret). */
  readonly header: string;
  /** IDENTITY_ENDPOINT and IDENTITY_HEADER, ready to merge into process.env. */
  readonly env: { IDENTITY_ENDPOINT: string; IDENTITY_HEADER: string };
  readonly requests: ManagedIdentityRequestRecord[];
  /** Push faults here; each request consumes the first one. */
  readonly faults: ManagedIdentityFault[];
  tokenLifetimeSeconds: number;
  close(): Promise<void>;
}

/** The issuer of managed identity tokens for token exchange: `https://login.microsoftonline.com/<tid>/v2.0`, as in a federated credential. */
export function createFederationIssuer(tenant: SandboxTenant): TokenIssuer {
  return new TokenIssuer(`https://login.microsoftonline.com/${tenant.tenantId}/v2.0`);
}

/** The platform's error shape: MSAL reads `message` as the error description. */
function platformError(statusCode: number, message: string): Record<string, unknown> {
  return { statusCode, message, correlationId: randomUUID() };
}

function headerValue(request: IncomingMessage, name: string): string | undefined {
  const value = request.headers[name];
  return Array.isArray(value) ? value[0] : value;
}

/**
 * Starts the App Service managed identity endpoint for the tenant's user-assigned identity.
 * `resource=https://vault.azure.net` (or Exchange, Storage or Azure Monitor) gives a v1 token from `issuer` with the identity's oid/appid;
 * `resource=api://AzureADTokenExchange` gives a federation assertion from `federationIssuer` with sub = oid = principal id.
 */
export async function startManagedIdentityEndpoint(options: ManagedIdentityOptions): Promise<ManagedIdentityEndpoint> {
  const { tenant, issuer, federationIssuer } = options;
  const secretHeader = randomBytes(16).toString('hex');
  const requests: ManagedIdentityRequestRecord[] = [];
  const faults: ManagedIdentityFault[] = [];
  // Read at request time: tests change the lifetime on the returned object.
  const settings = { tokenLifetimeSeconds: options.tokenLifetimeSeconds ?? DEFAULT_TOKEN_LIFETIME_SECONDS };

  const server = http.createServer((request, response) => {
    const url = new URL(request.url ?? '/', 'http://sandbox.invalid');
    const resource = url.searchParams.get('resource') ?? '';
    const identity =
      url.searchParams.get('client_id') ??
      url.searchParams.get('object_id') ??
      url.searchParams.get('mi_res_id') ??
      undefined;
    const apiVersion = url.searchParams.get('api-version') ?? '';
    const record: ManagedIdentityRequestRecord = { time: new Date(), resource, identity, apiVersion, status: 0 };
    const answer = (status: number, body: Record<string, unknown>): void => {
      record.status = status;
      if (status !== 200) record.error = typeof body['message'] === 'string' ? body['message'] : String(status);
      sendJson(response, status, body);
    };

    const serve = async (): Promise<void> => {
      if (url.pathname.toLowerCase().replace(/\/$/, '') !== TOKEN_PATH || request.method !== 'GET') {
        return answer(404, platformError(404, `No managed identity endpoint at ${request.method} ${url.pathname}`));
      }
      requests.push(record);
      const fault = faults.shift();
      if (fault?.kind === 'delay') await delay(fault.ms);
      if (fault?.kind === 'status')
        return answer(fault.status, platformError(fault.status, 'An unexpected error occurred.'));
      if (headerValue(request, IDENTITY_HEADER_NAME) !== secretHeader) {
        return answer(
          401,
          platformError(401, 'The X-IDENTITY-HEADER header is missing or does not match IDENTITY_HEADER.'),
        );
      }
      if (apiVersion !== APP_SERVICE_MSI_API_VERSION) {
        return answer(
          400,
          platformError(400, `Unsupported api-version '${apiVersion}'. Use ${APP_SERVICE_MSI_API_VERSION}.`),
        );
      }
      const matches =
        identity !== undefined &&
        [tenant.identity.clientId, tenant.identity.principalId].some(
          (id) => id.toLowerCase() === identity.toLowerCase(),
        );
      if (!matches) {
        // The Function App has only the user-assigned identity: anything else (system-assigned included) is unknown.
        return answer(400, platformError(400, 'Unable to load the proper Managed Identity.'));
      }
      const lifetime = settings.tokenLifetimeSeconds;
      let token: string;
      if (resource === TOKEN_EXCHANGE_AUDIENCE) {
        token = await federationIssuer.sign(
          {
            aud: TOKEN_EXCHANGE_AUDIENCE,
            tid: tenant.tenantId,
            appid: tenant.identity.clientId,
            azp: tenant.identity.clientId,
            oid: tenant.identity.principalId,
            sub: tenant.identity.principalId,
            idtyp: 'app',
            ver: '2.0',
          },
          lifetime,
        );
      } else if (
        resource === KEY_VAULT_RESOURCE ||
        resource === OUTLOOK_RESOURCE ||
        resource === STORAGE_RESOURCE ||
        resource === MONITOR_RESOURCE
      ) {
        token = await issuer.sign(
          appOnlyAccessTokenClaims({
            tenantId: tenant.tenantId,
            issuerUrl: issuer.issuerUrl,
            audience: resource,
            appId: tenant.identity.clientId,
            objectId: tenant.identity.principalId,
            roles: [],
            appidacr: '2',
          }),
          lifetime,
        );
      } else {
        return answer(
          400,
          platformError(
            400,
            aadstsDescription(500011, {
              clientId: tenant.identity.clientId,
              tenant,
              tenantSegment: tenant.tenantId,
              scope: resource,
              grantType: '',
              detail: '',
            }),
          ),
        );
      }
      // 2019-08-01 answers expires_on as a string of epoch seconds.
      answer(200, {
        access_token: token,
        expires_on: String(Math.floor(Date.now() / 1000) + lifetime),
        resource,
        token_type: 'Bearer',
        client_id: tenant.identity.clientId,
      });
    };
    serve().catch((error: unknown) => {
      if (!response.headersSent)
        answer(500, platformError(500, error instanceof Error ? error.message : String(error)));
      else response.destroy();
    });
  });
  const port = await listenOnLoopback(server);
  const url = `http://127.0.0.1:${port}${TOKEN_PATH}`;
  return {
    endpoint: url,
    header: secretHeader,
    env: { IDENTITY_ENDPOINT: url, IDENTITY_HEADER: secretHeader },
    requests,
    faults,
    get tokenLifetimeSeconds() {
      return settings.tokenLifetimeSeconds;
    },
    set tokenLifetimeSeconds(seconds: number) {
      settings.tokenLifetimeSeconds = seconds;
    },
    close: () => closeServer(server),
  };
}
