/** Entra ID's AADSTS errors as the sandbox gives them: each code's status, OAuth error and message, and the JSON error body. */
import { randomUUID } from 'node:crypto';
import type { SandboxTenant } from './tenant';

/** What an AADSTS message embeds: the request as the client sent it, and the tenant it reached. */
export interface ErrorContext {
  clientId: string;
  tenant: SandboxTenant;
  tenantSegment: string;
  scope: string;
  grantType: string;
  /** What the check that failed found (an issuer, a subject, a time range …); empty when the message has none. */
  detail: string;
}

/** One AADSTS error: the HTTP status and OAuth `error` Entra answers it with, and its message. */
interface AadstsEntry {
  status: number;
  error: string;
  message(context: ErrorContext): string;
}

const CERT_DOCS =
  'Review the documentation at https://docs.microsoft.com/en-us/azure/active-directory/develop/active-directory-certificate-credentials .';
const FIC_HELP =
  'Please check your federated identity credential Subject, Audience and Issuer against the presented assertion. https://learn.microsoft.com/entra/workload-id/workload-identity-federation';

/** The AADSTS errors the sandbox can produce, keyed by code; texts follow Entra's. */
const AADSTS = {
  50000: {
    status: 500,
    error: 'server_error',
    message: () => 'There was an error issuing a token or an issue with our sign-in service.',
  },
  50027: { status: 400, error: 'invalid_request', message: () => 'JWT token is invalid or malformed.' },
  70003: {
    status: 400,
    error: 'unsupported_grant_type',
    message: (c) => `The app requested an unsupported grant type '${c.grantType}'.`,
  },
  70011: {
    status: 400,
    error: 'invalid_scope',
    message: (c) =>
      `The provided value for the input parameter 'scope' is not valid. The scope ${c.scope} is not valid.`,
  },
  70021: {
    status: 401,
    error: 'invalid_client',
    message: (c) => `No matching federated identity record found for presented assertion. ${c.detail} ${FIC_HELP}`,
  },
  90002: {
    status: 400,
    error: 'invalid_request',
    message: (c) =>
      `Tenant '${c.tenantSegment}' not found. Check to make sure you have the correct tenant ID and are signing into the correct cloud. Check with your subscription administrator, this may happen if there are no active subscriptions for the tenant.`,
  },
  90033: {
    status: 503,
    error: 'temporarily_unavailable',
    message: () => 'A transient error has occurred. Please try again.',
  },
  500011: {
    status: 400,
    error: 'invalid_resource',
    message: (c) =>
      `The resource principal named ${c.scope} was not found in the tenant named ${c.tenant.domain}. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant. You might have sent your authentication request to the wrong tenant.`,
  },
  700016: {
    status: 400,
    error: 'unauthorized_client',
    message: (c) =>
      `Application with identifier '${c.clientId}' was not found in the directory '${c.tenant.domain}'. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant. You may have sent your authentication request to the wrong tenant.`,
  },
  700021: {
    status: 401,
    error: 'invalid_client',
    message: () => `Client assertion application identifier doesn't match 'client_id' parameter. ${CERT_DOCS}`,
  },
  700023: {
    status: 401,
    error: 'invalid_client',
    message: () => `Client assertion audience claim does not match Realm issuer. ${CERT_DOCS}`,
  },
  700024: {
    status: 401,
    error: 'invalid_client',
    message: (c) => `Client assertion is not within its valid time range. ${c.detail}`,
  },
  700027: {
    status: 401,
    error: 'invalid_client',
    message: (c) => c.detail || 'Client assertion failed signature validation.',
  },
  700211: {
    status: 401,
    error: 'invalid_client',
    message: (c) =>
      `No matching federated identity record found for presented assertion issuer '${c.detail}'. ${FIC_HELP}`,
  },
  700212: {
    status: 401,
    error: 'invalid_client',
    message: (c) =>
      `No matching federated identity record found for presented assertion audience '${c.detail}'. ${FIC_HELP}`,
  },
  700213: {
    status: 401,
    error: 'invalid_client',
    message: (c) =>
      `No matching federated identity record found for presented assertion subject '${c.detail}'. ${FIC_HELP}`,
  },
  900561: {
    status: 400,
    error: 'invalid_request',
    message: () => 'The endpoint only accepts POST requests. Received a GET request.',
  },
  1002012: {
    status: 400,
    error: 'invalid_scope',
    message: (c) =>
      `The provided value for scope ${c.scope} is not valid. Client credential flows must have a scope value with /.default suffixed to the resource identifier (application ID URI).`,
  },
  7000215: {
    status: 401,
    error: 'invalid_client',
    message: (c) =>
      `Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app '${c.clientId}'.`,
  },
  7000218: {
    status: 401,
    error: 'invalid_client',
    message: () => "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.",
  },
  7000222: {
    status: 401,
    error: 'invalid_client',
    message: (c) =>
      `The provided client secret keys for app '${c.clientId}' are expired. Visit the Azure portal to create new keys for your app: https://aka.ms/NewClientSecret, or consider using certificate credentials for added security: https://aka.ms/certCreds.`,
  },
} satisfies Record<number, AadstsEntry>;

/** An AADSTS code the sandbox knows how to answer with. */
export type AadstsCode = keyof typeof AADSTS;

/** The HTTP status Entra answers `code` with. */
export function aadstsStatus(code: AadstsCode): number {
  return AADSTS[code].status;
}

/** `AADSTS<code>: <message>`: how Entra's error_description starts, and what the managed identity endpoint relays. */
export function aadstsDescription(code: AadstsCode, context: ErrorContext): string {
  const entry: AadstsEntry = AADSTS[code];
  return `AADSTS${code}: ${entry.message(context)}`;
}

/** Entra's timestamp format in error answers: `2024-05-01 12:34:56Z`. */
function entraTimestamp(now: Date): string {
  return `${now.toISOString().slice(0, 19).replace('T', ' ')}Z`;
}

/** Entra's JSON error answer. */
export interface EntraErrorBody {
  error: string;
  error_description: string;
  error_codes: number[];
  timestamp: string;
  trace_id: string;
  correlation_id: string;
  error_uri: string;
}

/** Builds Entra's JSON error body for `code`; the correlation id echoes the client's `client-request-id`. */
export function entraErrorBody(
  code: AadstsCode,
  context: ErrorContext,
  correlationId: string,
  origin: string,
): EntraErrorBody {
  const now = new Date();
  const traceId = randomUUID();
  const timestamp = entraTimestamp(now);
  return {
    error: AADSTS[code].error,
    error_description: `${aadstsDescription(code, context)} Trace ID: ${traceId} Correlation ID: ${correlationId} Timestamp: ${timestamp}`,
    error_codes: [code],
    timestamp,
    trace_id: traceId,
    correlation_id: correlationId,
    error_uri: `${origin}/error?code=${code}`,
  };
}

/** Thrown inside request handling to answer with an AADSTS error. */
export class AadstsError extends Error {
  constructor(
    readonly code: AadstsCode,
    readonly detail = '',
  ) {
    super(`AADSTS${code}`);
  }
}
