/**
 * Property tests of the unsubscribe and suppression endpoints with hostile input, against Azurite and the sandbox's
 * Key Vault: every answer is a success or a 4xx naming the field, never a 5xx; a token that is not one this app
 * signed records nothing.
 */
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { ApiRequest, ApiResponse } from '../../src/api/apiTypes';
import { runApi, type ApiHandler } from '../../src/api/runApi';
import { addSuppression, deleteSuppression, listSuppressions } from '../../src/api/suppressions';
import { unsubscribe } from '../../src/api/unsubscribe';
import type { AppServices } from '../../src/appServices';
import { canonicalJsonIterative } from '../../src/canonicalJson';
import { signUnsubscribeToken } from '../../src/suppression/unsubscribeToken';
import { hostileAddress, hostileString, hostileValue, validOr } from '../support/hostile';
import { startStack, type Stack } from '../support/stack';

const BASE = 'http://127.0.0.1:7071/api';
let stack: Stack;
let rt: AppServices;

beforeAll(async () => {
  stack = await startStack({ MAIL_PACING: 'off' });
  rt = stack.app;
}, 60_000);

afterAll(async () => {
  await stack?.close();
});

function request(
  method: string,
  path: string,
  options: { body?: string | Uint8Array; headers?: Record<string, string>; params?: Record<string, string> } = {},
): ApiRequest {
  const url = `${BASE}/${path}`;
  return {
    method,
    url,
    headers: new Headers(options.headers ?? {}),
    query: new URL(url).searchParams,
    params: options.params ?? {},
    body: options.body !== undefined ? new Response(options.body).body : null,
  };
}
const call = (handler: ApiHandler, r: ApiRequest): Promise<ApiResponse> => runApi(handler, r, () => rt);

/** A 4xx whose details each name a field, or one of `ok`. */
function expectOkOrFieldError(response: ApiResponse, ok: number[], fields?: string[]): void {
  if (ok.includes(response.status)) return;
  expect([400, 404, 413, 415], JSON.stringify(response.jsonBody ?? response.body).slice(0, 300)).toContain(
    response.status,
  );
  if (response.jsonBody === undefined) return; // the HTML page of a browser's refused link
  const { details } = (response.jsonBody as { error: { details: Array<{ path: string }> } }).error;
  expect(details.length).toBeGreaterThan(0);
  for (const d of details) {
    expect(d.path.length).toBeGreaterThan(0);
    if (fields) expect(fields).toContain(d.path.replace(/[.[].*$/, ''));
  }
}

const list = validOr(fc.constantFrom('news', 'weekly-digest', 'a'), 2);
/** Query values: hostile strings, percent-encoded so that they reach the handler as they are. */
const queryValue = fc.oneof(hostileString(5_000), fc.constantFrom('news', '', '%', 'a'.repeat(70)));

describe('/api/suppressions with hostile input', () => {
  it('POST: 201/200 or a 4xx naming address, list or the unknown field', { timeout: 60_000 }, async () => {
    const body = fc.oneof(
      { weight: 3, arbitrary: fc.record({ address: hostileAddress, list }, { requiredKeys: ['address'] }) },
      { weight: 1, arbitrary: fc.record({ address: hostileAddress, extra: hostileValue }) },
      { weight: 1, arbitrary: hostileValue },
    );
    await fc.assert(
      fc.asyncProperty(body, fc.boolean(), async (value, asJson) => {
        // Iterative: hostile values nest deeper than JSON.stringify can go.
        const text = value === undefined ? 'undefined' : canonicalJsonIterative(value);
        const r = await call(
          addSuppression,
          request('POST', 'suppressions', {
            body: text,
            headers: { 'content-type': asJson ? 'application/json' : 'text/plain' },
          }),
        );
        expectOkOrFieldError(r, [200, 201]);
      }),
      { numRuns: 60 },
    );
  });

  it(
    'GET and DELETE: hostile list, continuation and address are 200/204/404 or a 400 naming them',
    { timeout: 60_000 },
    async () => {
      await fc.assert(
        fc.asyncProperty(queryValue, queryValue, queryValue, async (l, continuation, address) => {
          const listed = await call(
            listSuppressions,
            request(
              'GET',
              `suppressions?list=${encodeURIComponent(l)}&continuation=${encodeURIComponent(continuation)}`,
            ),
          );
          expectOkOrFieldError(listed, [200], ['list', 'continuation']);
          const deleted = await call(
            deleteSuppression,
            request('DELETE', `suppressions/x?list=${encodeURIComponent(l)}`, { params: { address } }),
          );
          expectOkOrFieldError(deleted, [204], ['address', 'list']);
        }),
        { numRuns: 60 },
      );
    },
  );
});

describe('/api/unsubscribe with hostile input', () => {
  it(
    'GET and POST with any t and any body: 200 only for a token this app signed; nothing else is recorded',
    { timeout: 60_000 },
    async () => {
      const key = Buffer.from((await (await rt.mailer()).secrets!.get(rt.config.unsubscribe.keyName)).value, 'utf8');
      const signed = signUnsubscribeToken(
        { address: 'fuzz-signed@example.com', list: 'fuzz', expiresAt: Date.now() + 3_600_000 },
        key,
      );
      const token = fc.oneof(
        { weight: 4, arbitrary: hostileString(5_000) },
        { weight: 1, arbitrary: fc.constant(signed) },
        {
          weight: 2,
          arbitrary: fc
            .tuple(fc.integer({ min: 0, max: signed.length - 1 }), fc.constantFrom('A', '_', '.', '%', '\n'))
            .map(([i, c]) => `${signed.slice(0, i)}${c}${signed.slice(i + 1)}`),
        },
      );
      const body = fc.oneof(fc.constant(undefined), fc.constant('List-Unsubscribe=One-Click'), hostileString(3_000));
      await fc.assert(
        fc.asyncProperty(token, body, fc.constantFrom('GET', 'POST'), async (t, b, method) => {
          const r = await call(
            unsubscribe,
            request(method, `unsubscribe?t=${encodeURIComponent(t)}`, b !== undefined ? { body: b } : {}),
          );
          if (t === signed) expectOkOrFieldError(r, [200], ['List-Unsubscribe', '(body)']);
          else expectOkOrFieldError(r, [], ['t']);
        }),
        { numRuns: 150 },
      );
      // Only the signed token's address may have been recorded.
      const page = await rt.suppressions.page({ list: 'fuzz' });
      expect(page.items.map((s) => s.address).filter((a) => a !== 'fuzz-signed@example.com')).toEqual([]);
    },
  );
});
