/** Extra CA trust for every outbound TLS connection (MSAL, Azure SDK, SMTP), with verification always on. */
import https from 'node:https';
import tls from 'node:tls';
import type { INetworkModule, NetworkRequestOptions, NetworkResponse } from '@azure/msal-node';
import type { AdditionalPolicyConfig } from '@azure/core-client';
import { tlsPolicy } from '@azure/core-rest-pipeline';

const HTTP_TIMEOUT_MS = 30_000;

/**
 * The CA list to verify servers against: Node's bundled roots plus `extraCaPem`.
 * Returns undefined when there is no extra CA, so callers keep Node's defaults
 * (which also honour NODE_EXTRA_CA_CERTS).
 */
export function trustedCas(extraCaPem: string | undefined): string[] | undefined {
  return extraCaPem ? [...tls.rootCertificates, extraCaPem] : undefined;
}

/** An HTTPS agent that verifies certificates against the default roots plus `extraCaPem`. */
export function httpsAgent(extraCaPem: string | undefined): https.Agent {
  return new https.Agent({ keepAlive: true, ca: trustedCas(extraCaPem), rejectUnauthorized: true });
}

/** Pipeline policies for Azure SDK clients and credentials so they trust `extraCaPem` as well. */
export function azureClientPolicies(extraCaPem: string | undefined): AdditionalPolicyConfig[] {
  const ca = trustedCas(extraCaPem);
  return ca ? [{ policy: tlsPolicy({ ca: ca.join('\n') }), position: 'perCall' }] : [];
}

/**
 * An MSAL network module built on `https.request` with our agent. MSAL's default client uses
 * `fetch`, which cannot be given a CA at run time on Node 20.
 */
export function msalNetworkClient(extraCaPem: string | undefined): INetworkModule {
  const agent = httpsAgent(extraCaPem);
  const send = <T>(method: 'GET' | 'POST', url: string, options?: NetworkRequestOptions, timeoutMs?: number) =>
    new Promise<NetworkResponse<T>>((resolve, reject) => {
      const request = https.request(
        url,
        { method, agent, headers: options?.headers, timeout: timeoutMs ?? HTTP_TIMEOUT_MS },
        (response) => {
          const chunks: Buffer[] = [];
          response.on('data', (chunk: Buffer) => chunks.push(chunk));
          response.on('error', reject);
          response.on('end', () => {
            const text = Buffer.concat(chunks).toString('utf8');
            const headers: Record<string, string> = {};
            for (const [name, value] of Object.entries(response.headers)) {
              if (value !== undefined) headers[name] = Array.isArray(value) ? value.join(', ') : value;
            }
            let body: unknown;
            try {
              body = text ? JSON.parse(text) : {};
            } catch {
              // MSAL inspects the status and error fields; a non-JSON body (an HTML error page) is kept as text.
              body = { error: 'invalid_response', error_description: text.slice(0, 200) };
            }
            resolve({ headers, body: body as T, status: response.statusCode ?? 0 });
          });
        },
      );
      request.on('timeout', () => request.destroy(new Error(`Request to ${new URL(url).host} timed out`)));
      request.on('error', reject);
      if (options?.body) request.write(options.body);
      request.end();
    });
  return {
    sendGetRequestAsync: (url, options, timeout) => send('GET', url, options, timeout),
    sendPostRequestAsync: (url, options) => send('POST', url, options),
  };
}
