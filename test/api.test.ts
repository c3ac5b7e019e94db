/** The HTTP handlers in process, against Azurite and the sandbox: every malformed request is a 4xx naming its field; the happy paths. */
import { HttpRequest } from '@azure/functions';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { freePort, startAzurite, type AzuriteInstance } from '../dev/azurite';
import { httpHandler } from '../functions/http';
import type { ApiRequest, ApiResponse } from '../src/api/apiTypes';
import { getMessage } from '../src/api/messagesGet';
import { postMessage } from '../src/api/messagesPost';
import { maxBodyBytes } from '../src/api/readJsonBody';
import { runApi, type ApiHandler } from '../src/api/runApi';
import { previewTemplate } from '../src/api/templatePreview';
import { ConfigError } from '../src/config';
import { createRuntime, type Runtime } from '../src/runtime';
import { sandboxMailer, startSandbox, type Sandbox, type TestMailer } from './support';

const BASE = 'http://127.0.0.1:7071/api';
/** Small limits so that "too large" and "too many" cost little. */
const MAX_MESSAGE_BYTES = 300_000;
const MAX_RECIPIENTS = 10;

let sandbox: Sandbox;
let azurite: AzuriteInstance;
let mailer: TestMailer;
let rt: Runtime;
let billing: string;

beforeAll(async () => {
  [sandbox, azurite] = await Promise.all([startSandbox(), startAzurite()]);
  billing = `billing@${sandbox.tenant.domain}`;
  const overrides = {
    MAIL_ALLOWED_FROM: billing,
    MAIL_MAX_MESSAGE_BYTES: String(MAX_MESSAGE_BYTES),
    MAIL_MAX_RECIPIENTS: String(MAX_RECIPIENTS),
  };
  mailer = sandboxMailer(sandbox, 'client-secret', overrides);
  rt = createRuntime(
    { ...sandbox.settings(), ...overrides, AzureWebJobsStorage: azurite.connectionString },
    { mailer, logger: mailer.logger, delivery: { backoffSeconds: () => 2 } },
  );
  await rt.storage.ensureResources();
});

afterAll(async () => {
  await rt?.close();
  await Promise.all([sandbox?.close(), azurite?.stop()]);
});

beforeEach(() => {
  sandbox.smtp.reset();
});

interface RequestSpec {
  method?: string;
  /** Path under /api, with query. */
  path?: string;
  /** An object is sent as JSON; a string or Buffer as is. */
  body?: unknown;
  headers?: Record<string, string>;
  params?: Record<string, string>;
  stream?: ReadableStream<Uint8Array>;
}

function request(spec: RequestSpec): ApiRequest {
  const url = `${BASE}/${spec.path ?? 'messages'}`;
  const headers = new Headers(spec.headers ?? { 'content-type': 'application/json' });
  const bytes =
    spec.body === undefined
      ? undefined
      : Buffer.isBuffer(spec.body)
        ? spec.body
        : Buffer.from(typeof spec.body === 'string' ? spec.body : JSON.stringify(spec.body));
  return {
    method: spec.method ?? 'POST',
    url,
    headers,
    query: new URL(url).searchParams,
    params: spec.params ?? {},
    body: spec.stream ?? (bytes ? new Response(bytes).body : null),
  };
}

const call = (handler: ApiHandler, spec: RequestSpec) => runApi(handler, request(spec), () => rt);
const post = (body: unknown, spec: RequestSpec = {}) => call(postMessage, { body, ...spec });

interface ErrorJson {
  error: { code: string; message: string; details: Array<{ path: string; message: string }> };
}
const errorOf = (response: ApiResponse) => response.jsonBody as ErrorJson;

const valid = { to: 'a@example.com', subject: 'Hi', text: 'Hello' };
const b64 = (bytes: number) => Buffer.alloc(bytes, 1).toString('base64');
const inDays = (days: number) => new Date(Date.now() + days * 86_400_000).toISOString();

/** [name, request, expected status, the detail path that must be named (string: exact; RegExp: pattern)]. */
type Case = [string, RequestSpec, number, string | RegExp];

const bodyCase = (name: string, body: Record<string, unknown>, field: string | RegExp, status = 400): Case => [
  name,
  { body },
  status,
  field,
];
const withField = (field: string, value: unknown) => ({ ...valid, [field]: value });
const without = (field: keyof typeof valid) => {
  const copy: Record<string, unknown> = { ...valid };
  delete copy[field];
  return copy;
};

const CRLF = 'x\r\nBcc: victim@example.com';
const malformed: Case[] = [
  // Recipients
  bodyCase('to is a number', withField('to', 42), 'to'),
  bodyCase('to is a boolean', withField('to', true), 'to'),
  bodyCase('to is null', withField('to', null), 'to'),
  bodyCase('to is an empty object', withField('to', {}), 'to'),
  bodyCase('to is an empty string', withField('to', ''), 'to'),
  bodyCase('to is not an address', withField('to', 'not-an-email'), 'to'),
  bodyCase('to has no domain dot', withField('to', 'a@localhost'), 'to'),
  bodyCase('to[1] is not an address', withField('to', ['a@example.com', 'bad']), 'to[1]'),
  bodyCase('to[0] is a number', withField('to', [42]), 'to[0]'),
  bodyCase('to[0].address is a number', withField('to', [{ address: 5 }]), 'to[0]'),
  bodyCase('to[0].name is a number', withField('to', [{ address: 'a@example.com', name: 5 }]), 'to[0]'),
  bodyCase('to[0] has an unknown field', withField('to', [{ address: 'a@example.com', cc: 'x' }]), 'to[0]'),
  bodyCase('to with CR/LF', withField('to', `a@example.com${CRLF}`), 'to'),
  bodyCase('to[0].name with CR/LF', withField('to', [{ address: 'a@example.com', name: CRLF }]), 'to[0]'),
  bodyCase('to "Name <addr>" with LF in the name', withField('to', ['Evil\n <a@example.com>']), 'to[0]'),
  bodyCase('to[0].address with CR/LF', withField('to', [{ address: `a@example.com${CRLF}` }]), 'to[0]'),
  bodyCase('to has 1001 entries', withField('to', Array(1001).fill('a@example.com')), 'to'),
  bodyCase(
    'to over MAIL_MAX_RECIPIENTS',
    withField(
      'to',
      Array.from({ length: MAX_RECIPIENTS + 1 }, (_, i) => `r${i}@example.com`),
    ),
    'to',
  ),
  bodyCase('no recipients', without('to'), 'to'),
  bodyCase('empty recipient list', withField('to', []), 'to'),
  bodyCase('cc is a number', withField('cc', 5), 'cc'),
  bodyCase('cc[0] is not an address', withField('cc', ['x']), 'cc[0]'),
  bodyCase('cc[2] with CR/LF', withField('cc', ['a@example.com', 'b@example.com', CRLF]), 'cc[2]'),
  bodyCase('bcc is an object', withField('bcc', { address: 'bad' }), 'bcc'),
  bodyCase('bcc[1] is not an address', withField('bcc', ['a@example.com', 'bad']), 'bcc[1]'),
  bodyCase('bcc[0].name too long', withField('bcc', [{ address: 'a@example.com', name: 'n'.repeat(300) }]), 'bcc[0]'),
  // From and Reply-To
  bodyCase('from is a number', withField('from', 5), 'from'),
  bodyCase('from is not an address', withField('from', 'not-an-email'), 'from'),
  bodyCase('from is an array', withField('from', ['a@example.com']), 'from'),
  bodyCase('from with CR/LF', withField('from', `alerts@contoso.test${CRLF}`), 'from'),
  bodyCase('from name with CR/LF', withField('from', { address: 'alerts@contoso.test', name: CRLF }), 'from'),
  bodyCase('from not allowed to send as', withField('from', 'ceo@elsewhere.example'), 'from'),
  bodyCase('from another domain in a display name', withField('from', 'Billing <x@elsewhere.example>'), 'from'),
  bodyCase('replyTo is a number', withField('replyTo', 5), 'replyTo'),
  bodyCase('replyTo is not an address', withField('replyTo', 'bad'), 'replyTo'),
  bodyCase('replyTo with CR/LF', withField('replyTo', `help@example.com${CRLF}`), 'replyTo'),
  // Subject and bodies
  bodyCase('subject is a number', withField('subject', 5), 'subject'),
  bodyCase('subject is null', withField('subject', null), 'subject'),
  bodyCase('subject is an object', withField('subject', {}), 'subject'),
  bodyCase('subject with CR/LF', withField('subject', `Hi${CRLF}`), 'subject'),
  bodyCase('subject with LF', withField('subject', 'Hi\nthere'), 'subject'),
  bodyCase('subject with a NUL', withField('subject', 'Hi\u0000'), 'subject'),
  bodyCase('subject over 998 characters', withField('subject', 's'.repeat(999)), 'subject'),
  bodyCase('no subject', without('subject'), 'subject'),
  bodyCase('empty object', {}, 'subject'),
  bodyCase('text is a number', withField('text', 5), 'text'),
  bodyCase('text is an array', withField('text', ['a']), 'text'),
  bodyCase('html is a boolean', withField('html', true), 'html'),
  bodyCase('no text or html', without('text'), 'text'),
  // Templates
  bodyCase('template is a number', { to: 'a@example.com', template: 5 }, 'template'),
  bodyCase('template with spaces', { to: 'a@example.com', template: 'Order Shipped' }, 'template'),
  bodyCase('template path traversal', { to: 'a@example.com', template: '../etc/passwd' }, 'template'),
  bodyCase('unknown template', { to: 'a@example.com', template: 'no-such-template', data: {} }, 'template'),
  bodyCase('template and subject', { ...valid, template: 'notification', data: {} }, 'subject'),
  bodyCase('template and text', { to: 'a@example.com', template: 'notification', text: 'x' }, 'text'),
  bodyCase('template and html', { to: 'a@example.com', template: 'notification', html: '<p>' }, 'html'),
  bodyCase('data without template', { ...valid, data: { a: 1 } }, 'data'),
  bodyCase('data is a number', { to: 'a@example.com', template: 'notification', data: 5 }, 'data'),
  bodyCase('data is a string', { to: 'a@example.com', template: 'notification', data: 'x' }, 'data'),
  bodyCase('data is an array', { to: 'a@example.com', template: 'notification', data: [1] }, 'data'),
  bodyCase('missing template variable', { to: 'a@example.com', template: 'notification', data: {} }, 'data.title'),
  bodyCase(
    'missing nested template variable',
    { to: 'a@example.com', template: 'order-shipped', data: { order: { id: 'A' } } },
    /^data\./,
  ),
  bodyCase(
    'template variable null',
    { to: 'a@example.com', template: 'notification', data: { title: null, paragraphs: [] } },
    'data.title',
  ),
  // Attachments
  bodyCase('attachments is a string', withField('attachments', 'x'), 'attachments'),
  bodyCase('attachments is an object', withField('attachments', {}), 'attachments'),
  bodyCase('attachments[0] is a number', withField('attachments', [5]), 'attachments[0]'),
  bodyCase(
    'attachments[0] without filename',
    withField('attachments', [{ contentBase64: 'AA==' }]),
    'attachments[0].filename',
  ),
  bodyCase(
    'attachments[0] without content',
    withField('attachments', [{ filename: 'a.txt' }]),
    'attachments[0].contentBase64',
  ),
  bodyCase(
    'attachments[0].contentBase64 not base64',
    withField('attachments', [{ filename: 'a.txt', contentBase64: '!!not base64!!' }]),
    'attachments[0].contentBase64',
  ),
  bodyCase(
    'attachments[0].contentBase64 a number',
    withField('attachments', [{ filename: 'a.txt', contentBase64: 5 }]),
    'attachments[0].contentBase64',
  ),
  bodyCase(
    'attachments[1].filename with CR/LF',
    withField('attachments', [
      { filename: 'ok.txt', contentBase64: 'AA==' },
      { filename: `a.txt${CRLF}`, contentBase64: 'AA==' },
    ]),
    'attachments[1].filename',
  ),
  bodyCase(
    'attachments[0].filename empty',
    withField('attachments', [{ filename: '', contentBase64: 'AA==' }]),
    'attachments[0].filename',
  ),
  bodyCase(
    'attachments[0].filename too long',
    withField('attachments', [{ filename: `${'f'.repeat(300)}.txt`, contentBase64: 'AA==' }]),
    'attachments[0].filename',
  ),
  bodyCase(
    'attachments[0].contentType not a MIME type',
    withField('attachments', [{ filename: 'a.txt', contentType: 'text', contentBase64: 'AA==' }]),
    'attachments[0].contentType',
  ),
  bodyCase(
    'attachments[0].contentType with CR/LF',
    withField('attachments', [{ filename: 'a.txt', contentType: `text/plain${CRLF}`, contentBase64: 'AA==' }]),
    'attachments[0].contentType',
  ),
  bodyCase(
    'attachments[0] with an unknown field',
    withField('attachments', [{ filename: 'a.txt', contentBase64: 'AA==', path: '/etc/passwd' }]),
    'attachments[0].path',
  ),
  bodyCase(
    'over 100 attachments',
    withField(
      'attachments',
      Array.from({ length: 101 }, (_, i) => ({ filename: `${i}.txt`, contentBase64: 'AA==' })),
    ),
    'attachments',
  ),
  bodyCase(
    'attachment over MAIL_MAX_MESSAGE_BYTES',
    withField('attachments', [{ filename: 'big.bin', contentBase64: b64(MAX_MESSAGE_BYTES) }]),
    'attachments',
  ),
  // Headers
  bodyCase('headers is a string', withField('headers', 'X-A: b'), 'headers'),
  bodyCase('headers is an array', withField('headers', ['X-A']), 'headers'),
  bodyCase('header Subject (not X-)', withField('headers', { Subject: 'x' }), 'headers.Subject'),
  bodyCase('header Bcc (not X-)', withField('headers', { Bcc: 'victim@example.com' }), 'headers.Bcc'),
  bodyCase(
    'header Content-Type (not X-)',
    withField('headers', { 'Content-Type': 'text/html' }),
    'headers.Content-Type',
  ),
  bodyCase('header name with a space', withField('headers', { 'X-Bad Name': 'x' }), 'headers.X-Bad Name'),
  bodyCase('header name with a colon', withField('headers', { 'X-A:B': 'x' }), 'headers.X-A:B'),
  bodyCase('header name "X-" alone', withField('headers', { 'X-': 'x' }), 'headers.X-'),
  bodyCase('header value a number', withField('headers', { 'X-Order': 5 }), 'headers.X-Order'),
  bodyCase('header value with CR/LF', withField('headers', { 'X-Order': CRLF }), 'headers.X-Order'),
  bodyCase('header value over 998 characters', withField('headers', { 'X-Order': 'v'.repeat(999) }), 'headers.X-Order'),
  // Idempotency keys
  bodyCase('idempotencyKey empty', withField('idempotencyKey', ''), 'idempotencyKey'),
  bodyCase('idempotencyKey with a space', withField('idempotencyKey', 'has space'), 'idempotencyKey'),
  bodyCase('idempotencyKey with a slash', withField('idempotencyKey', 'a/b'), 'idempotencyKey'),
  bodyCase('idempotencyKey over 200 characters', withField('idempotencyKey', 'k'.repeat(201)), 'idempotencyKey'),
  bodyCase('idempotencyKey a number', withField('idempotencyKey', 5), 'idempotencyKey'),
  bodyCase('idempotencyKey not ASCII', withField('idempotencyKey', 'ключ'), 'idempotencyKey'),
  bodyCase('idempotencyKey with CR/LF', withField('idempotencyKey', 'a\r\nb'), 'idempotencyKey'),
  [
    'Idempotency-Key header with a space',
    { body: valid, headers: { 'content-type': 'application/json', 'idempotency-key': 'has space' } },
    400,
    'Idempotency-Key',
  ],
  [
    'Idempotency-Key header differs from the body key',
    {
      body: withField('idempotencyKey', 'one'),
      headers: { 'content-type': 'application/json', 'idempotency-key': 'two' },
    },
    400,
    'idempotencyKey',
  ],
  // sendAt
  bodyCase('sendAt not a date', withField('sendAt', 'tomorrow'), 'sendAt'),
  bodyCase('sendAt a number', withField('sendAt', Date.now()), 'sendAt'),
  bodyCase('sendAt in the past', withField('sendAt', '2020-01-01T00:00:00Z'), 'sendAt'),
  bodyCase('sendAt an hour ago', withField('sendAt', inDays(-1 / 24)), 'sendAt'),
  bodyCase('sendAt 8 days ahead', withField('sendAt', inDays(8)), 'sendAt'),
  bodyCase('sendAt without a time', withField('sendAt', '2030-11-23'), 'sendAt'),
  bodyCase('sendAt without a time zone', withField('sendAt', inDays(1).replace('Z', '')), 'sendAt'),
  bodyCase('sendAt impossible date', withField('sendAt', '2026-13-45T99:00:00Z'), 'sendAt'),
  bodyCase('sendAt null', withField('sendAt', null), 'sendAt'),
  // Unknown fields
  bodyCase('unknown field', withField('foo', 1), 'foo'),
  bodyCase('field in the wrong case', withField('To', 'a@example.com'), 'To'),
  bodyCase(
    '__proto__ field',
    JSON.parse('{"to":"a@example.com","subject":"Hi","text":"x","__proto__":{"x":1}}'),
    '__proto__',
  ),
  // The body itself
  ['not JSON', { body: 'hello' }, 400, '(body)'],
  ['truncated JSON', { body: '{"to":' }, 400, '(body)'],
  ['JSON with a trailing comma', { body: '{"to":"a@example.com",}' }, 400, '(body)'],
  ['a JSON array', { body: '[]' }, 400, '(body)'],
  ['a JSON string', { body: '"x"' }, 400, '(body)'],
  ['a JSON number', { body: '42' }, 400, '(body)'],
  ['JSON null', { body: 'null' }, 400, '(body)'],
  ['an empty body', { body: '' }, 400, '(body)'],
  ['no body at all', {}, 400, '(body)'],
  ['invalid UTF-8', { body: Buffer.from([0x7b, 0x22, 0xff, 0xfe, 0x22, 0x7d]) }, 400, '(body)'],
  ['Content-Type text/plain', { body: valid, headers: { 'content-type': 'text/plain' } }, 415, 'Content-Type'],
  ['no Content-Type', { body: valid, headers: {} }, 415, 'Content-Type'],
  [
    'Content-Type application/xml',
    { body: valid, headers: { 'content-type': 'application/xml' } },
    415,
    'Content-Type',
  ],
  [
    'Content-Type form',
    { body: valid, headers: { 'content-type': 'application/x-www-form-urlencoded' } },
    415,
    'Content-Type',
  ],
  [
    'Content-Type JSON in Latin-1',
    { body: valid, headers: { 'content-type': 'application/json; charset=iso-8859-1' } },
    415,
    'Content-Type',
  ],
  [
    'Content-Length over the limit',
    { body: valid, headers: { 'content-type': 'application/json', 'content-length': String(10 ** 9) } },
    413,
    '(body)',
  ],
  [
    'a body over the limit',
    { body: { ...valid, text: 't'.repeat(maxBodyBytes(MAX_MESSAGE_BYTES) + 1) } },
    413,
    '(body)',
  ],
  ['wait=maybe', { body: valid, path: 'messages?wait=maybe' }, 400, 'wait'],
];

describe(`POST /api/messages: ${malformed.length} malformed requests, each a 4xx naming the field`, () => {
  it('has at least 100 cases', () => {
    expect(malformed.length).toBeGreaterThanOrEqual(100);
  });

  it.each(malformed)('%s', async (_name, spec, status, field) => {
    const response = await call(postMessage, { body: undefined, ...spec });
    expect(response.status, JSON.stringify(response.jsonBody)).toBe(status);
    const { error } = errorOf(response);
    expect(error.code).toMatch(/^[a-z_]+$/);
    expect(typeof error.message).toBe('string');
    const paths = error.details.map((d) => d.path);
    if (typeof field === 'string') expect(paths).toContain(field);
    else
      expect(
        paths.some((p) => field.test(p)),
        paths.join(', '),
      ).toBe(true);
    for (const detail of error.details) expect(detail.message.length).toBeGreaterThan(0);
  });

  it('a body streamed without Content-Length is cut off at the cap (413), not read to its end', async () => {
    let pulled = 0;
    const endless = new ReadableStream<Uint8Array>({
      pull(controller) {
        pulled += 65_536;
        controller.enqueue(new Uint8Array(65_536).fill(0x20));
      },
    });
    const response = await call(postMessage, { stream: endless });
    expect(response.status).toBe(413);
    expect(errorOf(response).error.code).toBe('payload_too_large');
    expect(pulled).toBeLessThan(maxBodyBytes(MAX_MESSAGE_BYTES) + 5 * 65_536);
  });

  it('nothing malformed reached the queue or the SMTP server', async () => {
    const peeked = await rt.storage.outboxQueue.peekMessages({ numberOfMessages: 32 });
    expect(peeked.peekedMessageItems).toHaveLength(0);
    expect(sandbox.smtp.messages).toHaveLength(0);
  });
});

describe('POST /api/messages and GET /api/messages/{id}', () => {
  it('202 with id, status and statusUrl (= Location, without the function key); GET shows exactly the status fields', async () => {
    const response = await call(postMessage, { body: valid, path: 'messages?code=secret-function-key' });
    expect(response.status).toBe(202);
    const body = response.jsonBody as { id: string; status: string; statusUrl: string };
    expect(body).toEqual({ id: expect.any(String), status: 'queued', statusUrl: `${BASE}/messages/${body.id}` });
    expect(response.headers?.Location).toBe(body.statusUrl);

    const got = await call(getMessage, { method: 'GET', path: `messages/${body.id}`, params: { id: body.id } });
    expect(got.status).toBe(200);
    expect(got.jsonBody).toEqual({
      id: body.id,
      status: 'queued',
      source: 'http',
      attempts: 0,
      createdAt: expect.any(String),
    });
  });

  it('the same Idempotency-Key replays the original id; a different payload is 409', async () => {
    const headers = { 'content-type': 'application/json', 'idempotency-key': 'api-replay-1' };
    const first = await post(valid, { headers });
    const second = await post(valid, { headers });
    expect(second.status).toBe(202);
    expect((second.jsonBody as { id: string }).id).toBe((first.jsonBody as { id: string }).id);
    expect(second.headers?.['Idempotent-Replayed']).toBe('true');
    const conflict = await post({ ...valid, text: 'other' }, { headers });
    expect(conflict.status).toBe(409);
    expect(errorOf(conflict).error).toMatchObject({
      code: 'idempotency_conflict',
      details: [{ path: 'idempotencyKey', message: expect.any(String) }],
    });
  });

  it('sendAt answers 202 scheduled, and GET shows scheduledFor', async () => {
    const sendAt = new Date(Date.now() + 3_600_000).toISOString();
    const response = await post({ ...valid, sendAt });
    expect(response.jsonBody).toMatchObject({ status: 'scheduled' });
    const id = (response.jsonBody as { id: string }).id;
    const got = await call(getMessage, { method: 'GET', params: { id } });
    expect(got.jsonBody).toMatchObject({ status: 'scheduled', scheduledFor: sendAt });
  });

  it('GET: a malformed id is 400 naming id; an unknown one is 404 naming id', async () => {
    for (const id of ['abc', '../etc', 'F3B1C1A2-0000-4000-8000-000000000000', '', "1' or '1'='1"]) {
      const response = await call(getMessage, { method: 'GET', params: { id } });
      expect(response.status).toBe(400);
      expect(errorOf(response).error.details[0]?.path).toBe('id');
    }
    const missing = await call(getMessage, { method: 'GET', params: { id: '00000000-0000-4000-8000-00000000dead' } });
    expect(missing.status).toBe(404);
    expect(errorOf(missing).error).toMatchObject({ code: 'not_found', details: [{ path: 'id' }] });
  });
});

describe('POST /api/messages?wait=true', () => {
  it('200 with the message id and the SMTP reply; the message reached Exchange; GET says sent', async () => {
    const response = await post({ ...valid, to: ['a@example.com', 'b@example.com'] }, { path: 'messages?wait=true' });
    expect(response.status).toBe(200);
    const body = response.jsonBody as {
      id: string;
      status: string;
      messageId: string;
      smtp: { code: number; response: string };
    };
    expect(body).toMatchObject({ status: 'sent', smtp: { code: 250 } });
    expect(body.smtp.response).toMatch(/^250 /);
    expect(sandbox.smtp.messages).toHaveLength(1);
    expect(sandbox.smtp.messages[0]?.parsed.messageId).toBe(body.messageId);
    const got = await call(getMessage, { method: 'GET', params: { id: body.id } });
    expect(got.jsonBody).toMatchObject({
      status: 'sent',
      attempts: 1,
      messageId: body.messageId,
      sentAt: expect.any(String),
    });
  });

  it('422 with the classified error on a permanent rejection (SendAs denied)', async () => {
    const response = await post({ ...valid, from: billing }, { path: 'messages?wait=true' });
    expect(response.status).toBe(422);
    expect(response.jsonBody).toMatchObject({
      status: 'failed',
      error: { code: 'SEND_AS_DENIED', transient: false, smtp: { code: 554, enhanced: '5.2.252' } },
    });
    expect((response.jsonBody as { error: { hint: string } }).error.hint).toContain('Add-RecipientPermission');
  });

  it('202 queued, with the error, when the failure is transient; the message stays in the outbox', async () => {
    sandbox.smtp.faults.force432 = 1;
    const response = await post(valid, { path: 'messages?wait=true' });
    expect(response.status).toBe(202);
    expect(response.jsonBody).toMatchObject({
      status: 'queued',
      error: { code: 'CONCURRENCY_LIMIT', transient: true },
    });
    const id = (response.jsonBody as { id: string }).id;
    expect((await rt.status.get(id))?.status).toBe('queued');
  });
});

describe('GET /api/templates/{name}/preview', () => {
  const preview = (name: string, query = '') =>
    call(previewTemplate, { method: 'GET', path: `templates/${name}/preview${query}`, params: { name } });

  it('renders sample.json as { subject, html, text }', async () => {
    const response = await preview('order-shipped');
    expect(response.status).toBe(200);
    expect(response.jsonBody).toMatchObject({ subject: 'Your order A-10492 has shipped' });
    expect((response.jsonBody as { html: string }).html).toContain('HP-4420-BK');
    expect((response.jsonBody as { text: string }).text).toContain('A-10492');
  });

  it('renders ?data= and serves the HTML itself with ?format=html, scripts forbidden', async () => {
    const data = encodeURIComponent(
      JSON.stringify({ title: 'Hello <b>', paragraphs: ['One'], action: { label: 'Go', url: 'https://example.com' } }),
    );
    const response = await preview('notification', `?data=${data}&format=html`);
    expect(response.status).toBe(200);
    expect(response.headers?.['Content-Type']).toBe('text/html; charset=utf-8');
    expect(response.headers?.['Content-Security-Policy']).toMatch(/^sandbox/);
    expect(response.body).toContain('Hello &lt;b&gt;');
  });

  it.each([
    ['unknown template', 'no-such-template', '', 404, 'template'],
    ['template name with dots', '..', '', 404, 'template'],
    ['data not JSON', 'notification', '?data=%7Bnope', 400, 'data'],
    ['data an array', 'notification', `?data=${encodeURIComponent('[1]')}`, 400, 'data'],
    ['data missing a variable', 'notification', `?data=${encodeURIComponent('{}')}`, 400, 'data.title'],
    ['format pdf', 'notification', '?format=pdf', 400, 'format'],
  ])('%s → %i naming the field', async (_name, name, query, status, field) => {
    const response = await preview(name, query);
    expect(response.status).toBe(status);
    expect(errorOf(response).error.details.map((d) => d.path)).toContain(field);
  });
});

describe('no input produces a 5xx; outages and settings errors answer cleanly', () => {
  it('storage down: 503 storage_unavailable with Retry-After', async () => {
    const port = await freePort();
    const down = createRuntime(
      {
        ...sandbox.settings(),
        AzureWebJobsStorage: `DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=${Buffer.from('k').toString('base64')};BlobEndpoint=http://127.0.0.1:${port}/devstoreaccount1;QueueEndpoint=http://127.0.0.1:${port}/devstoreaccount1;TableEndpoint=http://127.0.0.1:${port}/devstoreaccount1;`,
      },
      { mailer, logger: mailer.logger },
    );
    const response = await runApi(postMessage, request({ body: valid }), () => down);
    expect(response.status).toBe(503);
    expect(response.headers?.['Retry-After']).toBe('30');
    expect(errorOf(response).error.code).toBe('storage_unavailable');
    const got = await runApi(
      getMessage,
      request({ method: 'GET', params: { id: '00000000-0000-4000-8000-000000000000' } }),
      () => down,
    );
    expect(got.status).toBe(503);
  });

  it('invalid settings: 500 configuration_error that does not repeat setting values', async () => {
    const response = await runApi(postMessage, request({ body: valid }), () => {
      throw new ConfigError(['MAIL_SENDER is invalid ("secret-looking-value")']);
    });
    expect(response.status).toBe(500);
    expect(errorOf(response).error.code).toBe('configuration_error');
    expect(JSON.stringify(response.jsonBody)).not.toContain('secret-looking-value');
  });

  it('through the Functions adapter: a real HttpRequest in, an HttpResponseInit out', async () => {
    const handler = httpHandler(postMessage, () => rt);
    const ok = await handler(
      new HttpRequest({
        method: 'POST',
        url: `${BASE}/messages?code=k`,
        headers: { 'content-type': 'application/json' },
        body: { string: JSON.stringify(valid) },
      }),
      undefined as never,
    );
    expect(ok).toMatchObject({ status: 202, jsonBody: { status: 'queued' } });
    const bad = await handler(
      new HttpRequest({
        method: 'POST',
        url: `${BASE}/messages`,
        headers: { 'content-type': 'text/plain' },
        body: { string: 'x' },
      }),
      undefined as never,
    );
    expect(bad).toMatchObject({ status: 415, jsonBody: { error: { code: 'unsupported_media_type' } } });
  });
});
