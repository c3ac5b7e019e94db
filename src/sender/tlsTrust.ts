/** Extra CA trust for every outbound TLS connection (MSAL, Azure SDK, SMTP), with verification always on. */
import https from 'node:https';
import tls from 'node:tls';
import { AuthError, type INetworkModule, type NetworkRequestOptions, type NetworkResponse } from '@azure/msal-node';
import type { AdditionalPolicyConfig } from '@azure/core-client';
import { tlsPolicy } from '@azure/core-rest-pipeline';

/**
 * The CA list to verify servers against: Node's bundled roots plus `extraCaPem`.
 * Returns undefined when there is no extra CA, so callers keep Node's defaults
 * (which also honour NODE_EXTRA_CA_CERTS).
 */
export function trustedCas(extraCaPem: string | undefined): string[] | undefined {
  return extraCaPem ? [...tls.rootCertificates, extraCaPem] : undefined;
}

/** The lowest TLS version of every outbound connection. */
export const MIN_TLS_VERSION = 'TLSv1.2';

let sharedContext: { pem: string; context: tls.SecureContext } | undefined;

/**
 * One TLS context for every connection that trusts `extraCaPem`: Node's bundled roots plus that CA, TLS 1.2 or
 * later. Given a `ca` list, Node parses all of it (about 150 certificates) for each new connection, which was the
 * largest CPU cost of connecting to the sandbox; a context built once is parsed once. Undefined without an extra
 * CA: Node's default context is shared already. Verification stays on: the caller keeps `rejectUnauthorized`, and
 * the host name is checked against the certificate as for any connection.
 */
export function trustedSecureContext(extraCaPem: string | undefined): tls.SecureContext | undefined {
  if (!extraCaPem) return undefined;
  if (sharedContext?.pem !== extraCaPem) {
    sharedContext = {
      pem: extraCaPem,
      context: tls.createSecureContext({ ca: trustedCas(extraCaPem), minVersion: MIN_TLS_VERSION }),
    };
  }
  return sharedContext.context;
}

/** An HTTPS agent that verifies certificates against the default roots plus `extraCaPem`. */
export function httpsAgent(extraCaPem: string | undefined): https.Agent {
  const secureContext = trustedSecureContext(extraCaPem);
  return new https.Agent({ keepAlive: true, rejectUnauthorized: true, ...(secureContext ? { secureContext } : {}) });
}

/** Pipeline policies for Azure SDK clients and credentials so they trust `extraCaPem` as well. */
export function azureClientPolicies(extraCaPem: string | undefined): AdditionalPolicyConfig[] {
  const ca = trustedCas(extraCaPem);
  return ca ? [{ policy: tlsPolicy({ ca: ca.join('\n') }), position: 'perCall' }] : [];
}

/**
 * Each HTTP request MSAL makes to Entra ID (OIDC discovery, the token request) must be answered, body included,
 * within this. Entra answers in well under a second; a request cut short fails the token as transient.
 */
export const TOKEN_REQUEST_TIMEOUT_MS = 15_000;

/**
 * An MSAL network module built on `https.request` with our agent. MSAL's default client uses `fetch`, which cannot
 * be given a CA at run time on Node 20, and bounds no POST: here every request, the token POST included, ends within
 * `options.timeoutMs` (default {@link TOKEN_REQUEST_TIMEOUT_MS}) with an MSAL `network_error` naming only the host.
 */
export function msalNetworkClient(
  extraCaPem: string | undefined,
  options: { timeoutMs?: number } = {},
): INetworkModule {
  const agent = httpsAgent(extraCaPem);
  const limit = options.timeoutMs ?? TOKEN_REQUEST_TIMEOUT_MS;
  const send = <T>(method: 'GET' | 'POST', url: string, request?: NetworkRequestOptions, timeoutMs?: number) =>
    new Promise<NetworkResponse<T>>((resolve, reject) => {
      // MSAL passes its own, shorter bounds for some GETs (region discovery); never a longer one than ours.
      const bound = Math.min(timeoutMs ?? limit, limit);
      const body = method === 'POST' ? (request?.body ?? '') : undefined;
      const headers: Record<string, string> = { ...request?.headers };
      // A fixed length rather than chunked encoding, which some proxies in front of Entra refuse.
      if (body !== undefined && !Object.keys(headers).some((name) => name.toLowerCase() === 'content-length')) {
        headers['Content-Length'] = String(Buffer.byteLength(body));
      }
      // Called from the request's events only, which come after `timer` below is set.
      const settle = (outcome: () => void) => {
        clearTimeout(timer);
        outcome();
      };
      const req = https.request(url, { method, agent, headers }, (response) => {
        const chunks: Buffer[] = [];
        response.on('data', (chunk: Buffer) => chunks.push(chunk));
        response.on('error', (error) => settle(() => reject(error)));
        response.on('end', () => {
          const text = Buffer.concat(chunks).toString('utf8');
          const responseHeaders: Record<string, string> = {};
          for (const [name, value] of Object.entries(response.headers)) {
            if (value !== undefined) responseHeaders[name] = Array.isArray(value) ? value.join(', ') : value;
          }
          let parsed: unknown;
          try {
            parsed = text ? JSON.parse(text) : {};
          } catch {
            // MSAL inspects the status and error fields; a non-JSON body (an HTML error page) is kept as text.
            parsed = { error: 'invalid_response', error_description: text.slice(0, 200) };
          }
          settle(() => resolve({ headers: responseHeaders, body: parsed as T, status: response.statusCode ?? 0 }));
        });
      });
      // The whole exchange, not the socket's idle time: a server that trickles bytes is cut as well.
      const timer = setTimeout(() => {
        // An MSAL error, so that MSAL passes it on as it is instead of a bare network_error.
        reject(new AuthError('network_error', '', `${new URL(url).host} did not answer within ${bound} ms`));
        req.destroy();
      }, bound);
      req.on('error', (error) => settle(() => reject(error)));
      if (body) req.write(body);
      req.end();
    });
  return {
    sendGetRequestAsync: (url, request, timeout) => send('GET', url, request, timeout),
    sendPostRequestAsync: (url, request) => send('POST', url, request),
  };
}
