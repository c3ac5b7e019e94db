/**
 * Property tests of digest intake with hostile input: parseItemsBody, parseQueueItem and the digest name in process,
 * then the mail-digest-items handler, its poison handler and POST /api/digests/{digest}/items against Azurite. A bad
 * item is refused naming its field (a rejection of its own in a bulk body); nothing throws a RangeError, and the queue
 * handlers never reject on input (a rejection would retry it into the poison queue).
 */
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startAzurite, type AzuriteInstance } from '../../dev/azurite';
import type { ApiRequest } from '../../src/api/apiTypes';
import { postDigestItems } from '../../src/api/digests';
import { runApi } from '../../src/api/runApi';
import { createAppServices, type AppServices } from '../../src/appServices';
import { canonicalJsonIterative } from '../../src/canonicalJson';
import { isDigestName, parseItemsBody, parseQueueItem } from '../../src/digests/digestRequest';
import { silentLogger } from '../../src/logger';
import {
  acceptedOrFieldError,
  deepValue,
  hostileAddress,
  hostileString,
  hostileValue,
  nested,
  templateData,
  validOr,
} from '../support/hostile';

const SETTINGS = {
  MAIL_SENDER: 'alerts@contoso.test',
  MAIL_TENANT_ID: '11111111-2222-3333-4444-555555555555',
  MAIL_CLIENT_ID: '11111111-2222-3333-4444-555555555555',
  MAIL_KEY_VAULT_URL: 'https://fuzz.vault.azure.net',
  MAIL_PACING: 'off',
};

const item = fc.record(
  {
    recipient: validOr(fc.constantFrom('a@example.com', 'B@Example.com')),
    item: fc.oneof(templateData, deepValue, hostileValue),
    idempotencyKey: validOr(fc.constantFrom('k-1', 'k:2')),
    extra: hostileValue,
  },
  { requiredKeys: ['recipient', 'item'] },
);
const hostileItem = fc.oneof({ weight: 4, arbitrary: item }, { weight: 1, arbitrary: hostileValue });
const body = fc.oneof(
  hostileItem,
  fc.record({ items: fc.oneof(fc.array(hostileItem, { maxLength: 5 }), hostileValue) }),
  hostileValue,
);
const digestName = fc.oneof(fc.constantFrom('activity', 'nosuch'), hostileString(200));
const queueMessage = fc.oneof(
  fc.record({ digest: digestName, recipient: hostileAddress, item: fc.oneof(templateData, deepValue, hostileValue) }),
  hostileValue,
);

describe('digest item parsing (in process)', () => {
  it('a body is parsed or refused naming its field; bulk rejections name their item', { timeout: 60_000 }, () => {
    fc.assert(
      fc.property(body, (content) => {
        const parsed = acceptedOrFieldError(() => parseItemsBody(content));
        for (const r of parsed?.rejections ?? []) expect(r.field).toMatch(/^items\[\d+\]/);
      }),
      { numRuns: 300 },
    );
  });

  it('a queue item is parsed or refused naming its field', () => {
    fc.assert(
      fc.property(queueMessage, (content) => {
        acceptedOrFieldError(() => parseQueueItem(content));
      }),
      { numRuns: 300 },
    );
  });

  it('the digest name check takes linear time on long hostile names', () => {
    for (const name of ['a'.repeat(100_000), `a${'-'.repeat(100_000)}!`, '-'.repeat(100_000)]) {
      const started = performance.now();
      expect(isDigestName(name)).toBe(false);
      expect(performance.now() - started).toBeLessThan(50);
    }
  });
});

describe('the mail-digest-items handlers and POST /api/digests/{digest}/items, against Azurite', () => {
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

  it('the queue handler and its poison handler resolve for any message', { timeout: 60_000 }, async () => {
    await fc.assert(
      fc.asyncProperty(queueMessage, fc.integer({ min: 0, max: 2 }), async (content, form) => {
        const text = canonicalJsonIterative(content);
        const message = form === 0 ? content : form === 1 ? Buffer.from(text).toString('base64') : text;
        const outcome = await rt.digests.handleQueueMessage(message);
        expect(['stored', 'duplicate', 'rejected']).toContain(outcome.outcome);
        if (outcome.outcome === 'rejected') expect(['INVALID_MESSAGE', 'NOT_FOUND']).toContain(outcome.error.code);
        expect(['stored', 'duplicate', 'rejected']).toContain((await rt.digests.markPoisoned(message)).outcome);
      }),
      { numRuns: 40 },
    );
  });

  it('an item nested 5,000 deep is refused naming the field, not thrown as a RangeError', async () => {
    const content = { digest: 'activity', recipient: 'a@example.com', item: { x: nested(5_000, 'mixed') } };
    const outcome = await rt.digests.handleQueueMessage(content);
    expect(outcome).toMatchObject({ outcome: 'rejected', error: { code: 'INVALID_MESSAGE' } });
  });

  it('POST answers 202 or a 4xx naming the field', { timeout: 60_000 }, async () => {
    await fc.assert(
      fc.asyncProperty(body, digestName, async (content, digest) => {
        const url = 'http://127.0.0.1:7071/api/digests/x/items';
        const request: ApiRequest = {
          method: 'POST',
          url,
          headers: new Headers({ 'content-type': 'application/json' }),
          query: new URL(url).searchParams,
          params: { digest },
          body: new Response(canonicalJsonIterative(content)).body,
        };
        const response = await runApi(postDigestItems, request, () => rt);
        expect([202, 400, 404, 413], JSON.stringify(response.jsonBody)).toContain(response.status);
        if (response.status >= 400) {
          const { details } = (response.jsonBody as { error: { details: Array<{ path: string }> } }).error;
          expect(details.length).toBeGreaterThan(0);
          for (const detail of details) expect(detail.path.length).toBeGreaterThan(0);
        }
      }),
      { numRuns: 40 },
    );
  });
});
