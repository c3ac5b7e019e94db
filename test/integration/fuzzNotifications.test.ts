/**
 * Property tests of batch notifications with hostile input: parseNotificationBatch and parseNotificationMessage in
 * process, then Notifications.handleMessage (the mail-notifications trigger) and POST /api/notifications against
 * Azurite. A bad batch is refused naming its field (or recorded as a failed batch with that reason); nothing
 * throws a RangeError, and handleMessage never rejects on input (a rejection would retry it into the poison queue).
 */
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startAzurite, type AzuriteInstance } from '../../dev/azurite';
import type { ApiRequest } from '../../src/api/apiTypes';
import { postNotifications } from '../../src/api/notificationsPost';
import { runApi } from '../../src/api/runApi';
import { canonicalJsonIterative } from '../../src/canonicalJson';
import { parseNotificationMessage } from '../../src/notifications/batchQueue';
import { deriveBatchId, parseNotificationBatch, type BatchRules } from '../../src/notifications/batchRequest';
import { silentLogger } from '../../src/logger';
import { createAppServices, type AppServices } from '../../src/appServices';
import {
  acceptedOrFieldError,
  deepValue,
  expectFieldError,
  hostileAddress,
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

const recipient = fc.oneof(
  { weight: 4, arbitrary: fc.record({ to: hostileAddress, data: validOr(templateData, 3) }, { requiredKeys: ['to'] }) },
  { weight: 1, arbitrary: fc.record({ to: hostileAddress, idempotencyKey: validOr(fc.constantFrom('k-1', 'k:2')) }) },
  { weight: 1, arbitrary: hostileValue },
);

/** A batch: every field valid or hostile; recipients few, or over the 50,000 bound. */
const batch: fc.Arbitrary<Record<string, unknown>> = fc.record(
  {
    batchId: validOr(fc.uuid().map((id) => `fuzz-${id}`)),
    template: validOr(fc.constantFrom('notification', 'order-shipped')),
    from: validOr(fc.constant('alerts@contoso.test')),
    subject: validOr(fc.constantFrom('Maintenance tonight', 'Hello')),
    data: validOr(templateData, 3),
    category: validOr(fc.constantFrom('transactional', 'bulk')),
    list: validOr(fc.constantFrom('news', 'weekly-digest', 'a')),
    recipients: fc.oneof(
      { weight: 6, arbitrary: fc.array(recipient, { minLength: 1, maxLength: 4 }) },
      { weight: 1, arbitrary: fc.constant(Array.from({ length: 50_001 }, () => ({ to: 'a@b.co' }))) },
      { weight: 1, arbitrary: hostileValue },
    ),
    nestedDeep: deepValue,
  },
  { requiredKeys: ['template', 'recipients'] },
);

const rules: BatchRules = {
  now: Date.now(),
  hasTemplate: (name) => name === 'notification' || name === 'order-shipped',
  allowedFrom: ['alerts@contoso.test'],
  allowPastSendAt: true,
};

/** The forms a mail-notifications message reaches the handler in: parsed by the host, base64 text, plain text, bytes. */
const asQueueMessage = (content: unknown, form: number): unknown => {
  const text = canonicalJsonIterative(content);
  switch (form) {
    case 0:
      return content;
    case 1:
      return Buffer.from(text).toString('base64');
    case 2:
      return text;
    default:
      return Buffer.from(text);
  }
};

describe('parseNotificationBatch and parseNotificationMessage (in process)', () => {
  it('a batch is parsed or refused naming its field; its derived id never throws', { timeout: 60_000 }, () => {
    fc.assert(
      fc.property(batch, (content) => {
        // The top-level extra key is unknown to the schema: without it, the batch may be valid.
        const { nestedDeep: _deep, ...withoutDeep } = content;
        acceptedOrFieldError(() => parseNotificationBatch(withoutDeep, rules));
        acceptedOrFieldError(() => parseNotificationBatch(content, rules));
        expect(deriveBatchId(content)).toMatch(/^q-[0-9a-f]{32}$/);
      }),
      { numRuns: 200 },
    );
  });

  it('any queue message is read as a batch, a reference or unreadable, without throwing', () => {
    fc.assert(
      fc.property(fc.oneof(batch, hostileValue), fc.integer({ min: 0, max: 3 }), (content, form) => {
        const parsed = parseNotificationMessage(asQueueMessage(content, form));
        expect(['batch', 'reference', 'unreadable']).toContain(parsed.kind);
        if (parsed.kind === 'batch') acceptedOrFieldError(() => parseNotificationBatch(parsed.content, rules));
        if (parsed.kind === 'unreadable') expect(deriveBatchId(parsed.text)).toMatch(/^q-/);
      }),
      { numRuns: 200 },
    );
  });
});

describe('the mail-notifications handler and POST /api/notifications, against Azurite', () => {
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

  it('handleMessage resolves for any message; a failed batch names its field', { timeout: 60_000 }, async () => {
    await fc.assert(
      fc.asyncProperty(fc.oneof(batch, hostileValue), fc.integer({ min: 0, max: 3 }), async (content, form) => {
        const outcome = await rt.notifications.handleMessage(asQueueMessage(content, form), { dequeueCount: 1 });
        expect(['fanned-out', 'skipped', 'failed', 'resumed']).toContain(outcome.outcome);
        if (outcome.outcome === 'failed') {
          // This app has no MAIL_UNSUBSCRIBE_BASE_URL: a valid bulk batch is refused, naming category.
          expect(['INVALID_MESSAGE', 'UNSUBSCRIBE_NOT_CONFIGURED']).toContain(outcome.error.code);
          expect(outcome.error.details?.length ?? 0).toBeGreaterThan(0);
          for (const detail of outcome.error.details ?? []) expect(detail.path.length).toBeGreaterThan(0);
        }
      }),
      { numRuns: 30 },
    );
  });

  it('a batch nested 5,000 deep is recorded as failed naming the field, not thrown as a RangeError', async () => {
    // Bug: a too-deep batch made the content hash throw a RangeError, retried into the poison queue.
    const content = {
      template: 'notification',
      recipients: [{ to: 'a@example.com', data: { title: 't', paragraphs: [], x: nested(5_000, 'mixed') } }],
    };
    for (const form of [0, 1]) {
      const outcome = await rt.notifications.handleMessage(asQueueMessage(content, form));
      expect(outcome).toMatchObject({ outcome: 'failed', error: { code: 'INVALID_MESSAGE' } });
      const path = outcome.outcome === 'failed' ? outcome.error.details?.[0]?.path : undefined;
      expect(path).toMatch(/^recipients\[0\]\.data\.x(\[0\]|\.a)+$/);
      const view = await rt.notifications.view(outcome.batchId);
      expect(view?.status).toBe('failed');
    }
    // The poison path reads the same message without recursing into it either.
    await expect(rt.notifications.markPoisoned(content)).resolves.toMatchObject({ status: 'failed' });
  });

  it('POST /api/notifications answers 202 or a 4xx naming the field', { timeout: 60_000 }, async () => {
    await fc.assert(
      fc.asyncProperty(fc.oneof(batch, hostileValue), async (content) => {
        const url = 'http://127.0.0.1:7071/api/notifications';
        const request: ApiRequest = {
          method: 'POST',
          url,
          headers: new Headers({ 'content-type': 'application/json' }),
          query: new URL(url).searchParams,
          params: {},
          body: new Response(canonicalJsonIterative(content)).body,
        };
        const response = await runApi(postNotifications, request, () => rt);
        expect([202, 400, 409, 413], JSON.stringify(response.jsonBody)).toContain(response.status);
        if (response.status >= 400) {
          const { details } = (response.jsonBody as { error: { details: Array<{ path: string }> } }).error;
          expect(details.length).toBeGreaterThan(0);
          for (const detail of details) expect(detail.path.length).toBeGreaterThan(0);
        }
      }),
      { numRuns: 30 },
    );
  });

  it('hostile recipient strings are rejected one by one at fan-out, the batch goes on', async () => {
    const recipients = [
      { to: `${' '.repeat(575)}a`, data: { title: 't', paragraphs: [] } },
      { to: { address: `a@${'.'.repeat(100_000)}` }, data: { title: 't', paragraphs: [] } },
      {
        to: 'ok@example.com',
        data: { title: 't', paragraphs: [], action: { label: 'x', url: 'javascript:alert(1)' } },
      },
      { to: 'fine@example.com', data: { title: hostileTitle(), paragraphs: [] } },
    ];
    const outcome = await rt.notifications.handleMessage({ template: 'notification', recipients });
    expect(outcome).toMatchObject({ outcome: 'fanned-out', status: 'complete' });
    const view = await rt.notifications.view(outcome.batchId);
    expect(view?.rejections.map((r) => r.field)).toEqual([
      'recipients[0].to',
      'recipients[1].to',
      'recipients[2].data.action.url',
    ]);
    expect(view?.accepted).toBe(1);
    expectFieldError(
      (() => {
        try {
          parseNotificationBatch({ template: 'notification', recipients, data: { big: 'x'.repeat(70_000) } }, rules);
        } catch (error) {
          return error;
        }
        throw new Error('expected the shared data to be refused');
      })(),
    );
  });
});

/** A title of whitespace runs and line breaks that folds into a subject well under 998 characters. */
function hostileTitle(): string {
  return `${' '.repeat(200)}\n${'\t'.repeat(200)}Hello${'\u2028'.repeat(100)}`;
}
