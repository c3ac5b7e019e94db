/**
 * Property tests of POST /api/messages with hostile bodies: in process (JSON text → parseSendRequest → Outbox.render →
 * payload hash, as the handler does without storage), then through the handler itself against Azurite. Any body is
 * accepted or refused with a 4xx whose details name a field; never a 5xx, a RangeError or a stall.
 */
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startAzurite, type AzuriteInstance } from '../../dev/azurite';
import type { ApiRequest, ApiResponse } from '../../src/api/apiTypes';
import { postMessage } from '../../src/api/messagesPost';
import { runApi } from '../../src/api/runApi';
import { loadConfig } from '../../src/config';
import { canonicalJsonIterative } from '../../src/canonicalJson';
import { MAX_BODY_JSON_VALUES, parseBoundedJson } from '../../src/inputBounds';
import { Outbox, payloadHash, type OutboxDeps } from '../../src/outbox/outbox';
import { silentLogger } from '../../src/logger';
import { createAppServices, type AppServices } from '../../src/appServices';
import { parseSendRequest } from '../../src/outbox/sendRequest';
import { templateBundle } from '../../src/templates/templateBundle';
import { TemplateRenderer } from '../../src/templates/templateRenderer';
import { acceptedOrFieldError, messageBody } from '../support/hostile';

const SETTINGS = {
  MAIL_SENDER: 'alerts@contoso.test',
  MAIL_TENANT_ID: '11111111-2222-3333-4444-555555555555',
  MAIL_CLIENT_ID: '11111111-2222-3333-4444-555555555555',
  MAIL_KEY_VAULT_URL: 'https://fuzz.vault.azure.net',
  MAIL_PACING: 'off',
};
/** A slow machine validates any of these bodies in milliseconds; a backtracking regex took minutes. */
const MAX_VALIDATION_MS = 2_000;

describe('parseSendRequest + Outbox.render on hostile bodies (in process)', () => {
  const config = loadConfig(SETTINGS);
  const outbox = new Outbox({ config, renderer: new TemplateRenderer(templateBundle()) } as unknown as OutboxDeps);

  it('accepts or names the field, from the JSON text and from the object', { timeout: 60_000 }, () => {
    fc.assert(
      fc.property(messageBody, (body) => {
        const started = performance.now();
        // As readJsonBody reads it: the text scanned, then parsed.
        acceptedOrFieldError(() => {
          const parsed = parseBoundedJson(canonicalJsonIterative(body), { maxValues: MAX_BODY_JSON_VALUES });
          const request = parseSendRequest(parsed);
          outbox.render(request);
          expect(payloadHash(request)).toMatch(/^[0-9a-f]{64}$/);
        });
        // As a caller in code hands it over (notifications, digests): the object walked.
        acceptedOrFieldError(() => outbox.render(parseSendRequest(body)));
        expect(performance.now() - started).toBeLessThan(MAX_VALIDATION_MS);
      }),
      { numRuns: 250 },
    );
  });
});

describe('POST /api/messages through the handler, against Azurite', () => {
  let azurite: AzuriteInstance;
  let rt: AppServices;

  beforeAll(async () => {
    azurite = await startAzurite();
    rt = createAppServices({ ...SETTINGS, AzureWebJobsStorage: azurite.connectionString }, { logger: silentLogger });
    await rt.storage.ensureResources();
  }, 60_000);

  afterAll(async () => {
    await rt?.close();
    await azurite?.stop();
  });

  const post = (text: string): Promise<ApiResponse> => {
    const url = 'http://127.0.0.1:7071/api/messages';
    const request: ApiRequest = {
      method: 'POST',
      url,
      headers: new Headers({ 'content-type': 'application/json' }),
      query: new URL(url).searchParams,
      params: {},
      body: new Response(text).body,
    };
    return runApi(postMessage, request, () => rt);
  };

  interface ErrorJson {
    error: { code: string; message: string; details: Array<{ path: string; message: string }> };
  }

  it('answers 202 or a 4xx naming the field, never a 5xx', { timeout: 60_000 }, async () => {
    await fc.assert(
      fc.asyncProperty(messageBody, async (body) => {
        const response = await post(canonicalJsonIterative(body));
        expect([202, 400, 409, 413], JSON.stringify(response.jsonBody)).toContain(response.status);
        if (response.status !== 202) {
          const { error } = response.jsonBody as ErrorJson;
          expect(error.details.length).toBeGreaterThan(0);
          for (const detail of error.details) expect(detail.path.length).toBeGreaterThan(0);
        }
      }),
      { numRuns: 40 },
    );
  });

  it('answers 400 naming the field for a body nested 5,000 deep, for every nesting shape', async () => {
    // Bug: data nested 5,000 deep passed validation, then JSON.stringify threw a RangeError (a 500).
    for (const open of ['[', '{"a":']) {
      const close = open === '[' ? ']' : '}';
      const text = `{"to":"a@example.com","template":"notification","data":{"title":"t","paragraphs":[],"x":${open.repeat(5_000)}1${close.repeat(5_000)}}}`;
      const response = await post(text);
      expect(response.status).toBe(400);
      const paths = (response.jsonBody as ErrorJson).error.details.map((d) => d.path);
      expect(paths[0]).toMatch(/^data\.x(\[0\]|\.a)+$/);
    }
  });

  it('answers 400 naming the field for an array of 1,000,000 entries, without parsing it', async () => {
    const text = `{"to":"a@example.com","subject":"s","text":"t","attachments":[${'0,'.repeat(1_000_000)}0]}`;
    const started = performance.now();
    const response = await post(text);
    expect(response.status).toBe(400);
    expect((response.jsonBody as ErrorJson).error.details.map((d) => d.path)).toEqual(['attachments']);
    expect(performance.now() - started).toBeLessThan(MAX_VALIDATION_MS);
  });

  it('regression: one POST of 1,000 addresses of 575 spaces then a letter (1.7 MB) kept the event loop busy for minutes', async () => {
    // Bug: one POST of 1,000 addresses of 575 spaces then a letter (1.7 MB) held the event loop for minutes.
    // U+3000 IDEOGRAPHIC SPACE is 3 bytes in UTF-8: 1,000 × 576 characters make the 1.7 MB body of the report.
    const body = { to: Array.from({ length: 1_000 }, () => `${'\u3000'.repeat(575)}a`), subject: 's', text: 't' };
    const text = JSON.stringify(body);
    expect(Buffer.byteLength(text)).toBeGreaterThan(1_700_000);
    const started = performance.now();
    const response = await post(text);
    const elapsed = performance.now() - started;
    expect(response.status).toBe(400);
    const { error } = response.jsonBody as ErrorJson;
    expect(error.details[0]).toEqual({
      path: 'to[0]',
      message: expect.stringMatching(/is not a valid email address/) as unknown,
    });
    // 100 details at most: the first 99 entries and a count of the rest.
    expect(error.details).toHaveLength(100);
    expect(error.details.at(-1)?.message).toMatch(/and 901 more problems/);
    expect(elapsed).toBeLessThan(MAX_VALIDATION_MS);
  });
});
