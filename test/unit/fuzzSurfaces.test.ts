/**
 * Property tests of the other input surfaces with hostile input: the mail-outbox queue message, the template preview
 * handler (`?data=`), TemplateRenderer.render and subject folding, the CLI's `send` arguments, and settings. Each
 * accepts, or refuses naming a field (an option, a setting); none throws anything else.
 */
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import fc from 'fast-check';
import { afterAll, describe, expect, it } from 'vitest';
import type { ApiRequest } from '../../src/api/apiTypes';
import { runApi } from '../../src/api/runApi';
import { previewTemplate } from '../../src/api/templatePreview';
import { CliUsageError, parseSendCommand } from '../../src/cli';
import { ConfigError, loadConfig } from '../../src/config';
import { canonicalJsonIterative } from '../../src/canonicalJson';
import { silentLogger } from '../../src/logger';
import { isMessageId } from '../../src/outbox/messageIds';
import { Redactor } from '../../src/redact';
import { encodeOutboxMessage, parseOutboxMessage } from '../../src/outbox/outboxQueue';
import type { AppServices } from '../../src/appServices';
import { templateBundle } from '../../src/templates/templateBundle';
import { MAX_SUBJECT_CHARS } from '../../src/message';
import { foldSubject, TemplateRenderer } from '../../src/templates/templateRenderer';
import {
  acceptedOrFieldError,
  deepValue,
  expectFieldError,
  hostileAddress,
  hostileRun,
  hostileString,
  hostileValue,
  hugeArray,
  templateData,
  validOr,
} from '../support/hostile';

/**
 * One-sided bound for the linear-time regressions: the backtracking they guard against took minutes; a loaded two-core
 * machine must not make a linear run fail.
 */
const LINEAR_BOUND_MS = 5_000;

const renderer = new TemplateRenderer(templateBundle());
const GUID = '11111111-2222-3333-4444-555555555555';

describe('mail-outbox queue messages', () => {
  it('any message is { id } with a message id, or undefined; nothing throws', () => {
    const id = '0b6f2a52-3c1e-4c4e-9b9a-3f0c2d1e4a5b';
    const batchMessage = `batch-1~${'a'.repeat(32)}`;
    const message = fc.oneof(
      fc.constant(encodeOutboxMessage({ id })),
      fc.constant({ id }),
      fc.constant(encodeOutboxMessage({ id: batchMessage })),
      hostileValue,
      hostileValue.map((v) => ({ id: v })),
      hostileValue.map((v) => Buffer.from(canonicalJsonIterative(v)).toString('base64')),
      hostileValue.map((v) => Buffer.from(canonicalJsonIterative(v))),
    );
    fc.assert(
      fc.property(message, (value) => {
        const parsed = parseOutboxMessage(value);
        expect(parsed === undefined || (Object.keys(parsed).join() === 'id' && isMessageId(parsed.id))).toBe(true);
      }),
      { numRuns: 300 },
    );
    expect(parseOutboxMessage(encodeOutboxMessage({ id }))).toEqual({ id });
    expect(parseOutboxMessage(encodeOutboxMessage({ id: batchMessage }))).toEqual({ id: batchMessage });
  });
});

describe('TemplateRenderer.render and subject folding', () => {
  const data = fc.oneof(
    templateData,
    deepValue,
    hugeArray,
    hostileValue,
    fc.constant(renderer.sample('order-shipped')),
  );

  it('renders or names the data field; a rendered subject is one line; every href is https: or mailto:', () => {
    fc.assert(
      fc.property(fc.constantFrom('notification', 'order-shipped', 'nope', '../x'), data, (name, value) => {
        const out = acceptedOrFieldError(() => renderer.render(name, value));
        if (!out) return;
        expect(out.subject).not.toMatch(/[\r\n\u2028\u2029]/);
        expect(out.subject.length).toBeLessThanOrEqual(MAX_SUBJECT_CHARS);
        for (const [, href] of out.html.matchAll(/href="([^"]*)"/g)) {
          expect(href?.replace(/&amp;/g, '&')).toMatch(/^(https:|mailto:)/i);
        }
      }),
      { numRuns: 300 },
    );
  });

  it('folding is linear, idempotent and leaves no line break or control character', () => {
    fc.assert(
      fc.property(hostileString(), (subject) => {
        const started = performance.now();
        const folded = foldSubject(subject);
        expect(performance.now() - started).toBeLessThan(LINEAR_BOUND_MS);
        expect(folded).not.toMatch(/[\u0000-\u001f\u007f\u0085\u2028\u2029]/);
        expect(foldSubject(folded)).toBe(folded);
      }),
      { numRuns: 300 },
    );
  });
});

describe('GET /api/templates/{name}/preview?data=', () => {
  const rt = { renderer, logger: silentLogger, redactor: new Redactor() } as unknown as AppServices;
  const preview = (name: string, query: string) => {
    const url = `http://127.0.0.1:7071/api/templates/${encodeURIComponent(name)}/preview${query}`;
    const request: ApiRequest = {
      method: 'GET',
      url,
      headers: new Headers(),
      query: new URL(url).searchParams,
      params: { name },
      body: null,
    };
    return runApi(previewTemplate, request, () => rt);
  };

  it('answers 200, 400 naming the field or 404 naming the template; never a 5xx', { timeout: 60_000 }, async () => {
    const dataText = fc.oneof(
      fc.oneof(templateData, deepValue, hugeArray, hostileValue).map((v) => canonicalJsonIterative(v)),
      hostileString(),
      fc.integer({ min: 1, max: 100_000 }).map((n) => `${'['.repeat(n)}${']'.repeat(n)}`),
    );
    await fc.assert(
      fc.asyncProperty(
        fc.oneof(fc.constantFrom('notification', 'order-shipped'), hostileString(300)),
        fc.option(dataText, { nil: undefined }),
        fc.constantFrom('', 'json', 'html', 'pdf'),
        async (name, data, format) => {
          const params = new URLSearchParams();
          if (data !== undefined) params.set('data', data);
          if (format) params.set('format', format);
          const query = params.size ? `?${params.toString()}` : '';
          const response = await preview(name, query);
          expect([200, 400, 404], JSON.stringify(response.jsonBody)).toContain(response.status);
          if (response.status !== 200) {
            const { details } = (response.jsonBody as { error: { details: Array<{ path: string }> } }).error;
            expect(details.length).toBeGreaterThan(0);
            for (const detail of details) expect(detail.path.length).toBeGreaterThan(0);
          }
        },
      ),
      { numRuns: 200 },
    );
  });
});

describe('m365-mailer send: argument parsing', () => {
  const cwd = mkdtempSync(path.join(tmpdir(), 'fuzz-cli-'));
  writeFileSync(path.join(cwd, 'a.txt'), 'attached');
  mkdirSync(path.join(cwd, 'dir'));
  afterAll(() => rmSync(cwd, { recursive: true, force: true }));
  const limits = { defaultFrom: 'alerts@contoso.test', maxRecipients: 500, maxMessageBytes: 36_700_160 };

  const asText = (value: unknown) => (typeof value === 'string' ? value : canonicalJsonIterative(value));
  const option = fc.oneof(
    hostileAddress.map((v) => ['--to', asText(v)]),
    hostileAddress.map((v) => ['--cc', asText(v)]),
    hostileAddress.map((v) => ['--from', asText(v)]),
    hostileAddress.map((v) => ['--reply-to', asText(v)]),
    validOr(fc.constant('Hello')).map((v) => ['--subject', asText(v)]),
    validOr(fc.constant('Body')).map((v) => ['--text', asText(v)]),
    validOr(fc.constant('<p>Body</p>')).map((v) => ['--html', asText(v)]),
    fc.constantFrom('a.txt', 'missing.bin', 'dir', '../../etc/passwd').map((f) => ['--attach', f]),
    fc.constantFrom('a.txt', 'dir', 'missing.txt').map((f) => ['--text-file', f]),
    fc
      .tuple(
        fc.oneof(
          fc.constantFrom('X-Order', 'x-order', 'X-ORDER', 'X-MS-Exchange-Organization-AuthAs', 'Subject', '__proto__'),
          hostileRun(2_000),
        ),
        hostileString(2_000),
      )
      .map(([name, value]) => ['--header', `${name}: ${value}`]),
    hostileString(2_000).map((v) => ['--header', v]),
    fc.constantFrom(['--json'], ['--bogus'], ['positional'], ['--to']),
  );
  const args = fc
    .tuple(fc.array(option, { maxLength: 12 }), fc.boolean())
    .map(([options, base]) => [
      ...(base ? ['--to', 'a@example.com', '--subject', 'Hi', '--text', 'x'] : []),
      ...options.flat(),
    ]);

  it('parses into a validated message, or names the option or field to fix', { timeout: 60_000 }, () => {
    fc.assert(
      fc.property(args, (argv) => {
        try {
          const { message } = parseSendCommand(argv, { cwd, limits });
          expect(message.to.length + message.cc.length + message.bcc.length).toBeGreaterThan(0);
        } catch (error) {
          if (error instanceof CliUsageError) expect(error.option.length).toBeGreaterThan(0);
          else expectFieldError(error);
        }
      }),
      { numRuns: 300 },
    );
  });
});

describe('settings', () => {
  const NAMES = [
    'MAIL_SENDER',
    'MAIL_ALLOWED_FROM',
    'MAIL_AUTH_MODE',
    'MAIL_TENANT_ID',
    'MAIL_CLIENT_ID',
    'MAIL_KEY_VAULT_URL',
    'MAIL_AUTHORITY_HOST',
    'MAIL_SMTP_HOST',
    'MAIL_SMTP_PORT',
    'MAIL_SMTP_SCOPE',
    'MAIL_TLS_CA_FILE',
    'MAIL_RATE_PER_MINUTE',
    'MAIL_MAX_RECIPIENTS',
    'MAIL_MAX_MESSAGE_BYTES',
    'MAIL_PACING',
    'MAIL_SEND_LEASE_SECONDS',
  ] as const;
  const base = {
    MAIL_SENDER: 'alerts@contoso.com',
    MAIL_TENANT_ID: GUID,
    MAIL_CLIENT_ID: GUID,
    MAIL_KEY_VAULT_URL: 'https://vault1.vault.azure.net',
  };
  const value = fc.oneof(
    hostileString(),
    fc.constantFrom('.', '/', '', ' ', 'https://x', `https://${'/'.repeat(100_000)}x`, `a@${'.'.repeat(100_000)}`, '0'),
    fc.integer({ min: 0, max: 100_000 }).map((n) => `@${'a.'.repeat(n)}a`),
    fc.integer({ min: 0, max: 100_000 }).map((n) => `${'a.'.repeat(n)}1`),
  );

  it('loadConfig returns a Config or throws a ConfigError, nothing else', { timeout: 60_000 }, () => {
    fc.assert(
      fc.property(fc.dictionary(fc.constantFrom(...NAMES), value, { maxKeys: 5 }), (overrides) => {
        const started = performance.now();
        try {
          loadConfig({ ...base, ...overrides });
        } catch (error) {
          expect(error).toBeInstanceOf(ConfigError);
          expect((error as ConfigError).problems.length).toBeGreaterThan(0);
        }
        expect(performance.now() - started).toBeLessThan(LINEAR_BOUND_MS);
      }),
      { numRuns: 300 },
    );
  });
});
