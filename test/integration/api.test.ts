/** The HTTP handlers in process, against Azurite and the sandbox: every malformed request is a 4xx naming its field; the happy paths. */
import { HttpRequest, InvocationContext } from '@azure/functions';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { freePort } from '../../dev/azurite';
import { httpHandler } from '../../functions/http';
import type { ApiRequest, ApiResponse } from '../../src/api/apiTypes';
import { getMessage } from '../../src/api/messagesGet';
import { postMessage } from '../../src/api/messagesPost';
import { maxBodyBytes } from '../../src/api/readJsonBody';
import { runApi, type ApiHandler } from '../../src/api/runApi';
import { previewTemplate } from '../../src/api/templatePreview';
import { ConfigError } from '../../src/config';
import { createAppServices, type AppServices } from '../../src/appServices';
import {
  bodyBytes,
  headersOf,
  limitSettings,
  malformed,
  MAX_MESSAGE_BYTES,
  valid,
  type RequestSpec,
} from '../support/malformedRequests';
import type { Sandbox, TestMailer } from '../support/sandboxMailer';
import { startStack, type Stack } from '../support/stack';

const BASE = 'http://127.0.0.1:7071/api';
let stack: Stack;
let sandbox: Sandbox;
let mailer: TestMailer;
let rt: AppServices;
let billing: string;

beforeAll(async () => {
  stack = await startStack(
    ({ sandbox }) => {
      billing = `billing@${sandbox.tenant.domain}`;
      return limitSettings(billing);
    },
    { delivery: { backoffSeconds: () => 2 } },
  );
  ({ sandbox, mailer, app: rt } = stack);
});

afterAll(async () => {
  await stack?.close();
});

beforeEach(() => {
  sandbox.smtp.reset();
});

/** What the outbox has stored: records, idempotency claims, payload blobs and queue messages, counted. */
async function storedState(): Promise<Record<string, number>> {
  let records = 0;
  for await (const _ of rt.storage.statusTable.listEntities({ queryOptions: { select: ['PartitionKey'] } })) records++;
  let claims = 0;
  for await (const _ of rt.storage.idempotencyTable.listEntities({ queryOptions: { select: ['PartitionKey'] } })) {
    claims++;
  }
  let payloads = 0;
  for await (const _ of rt.storage.payloads.listBlobsFlat()) payloads++;
  const queued = (await rt.storage.outboxQueue.getProperties()).approximateMessagesCount ?? 0;
  return { records, claims, payloads, queued };
}

function request(spec: RequestSpec): ApiRequest {
  const url = `${BASE}/${spec.path ?? 'messages'}`;
  const headers = new Headers(headersOf(spec));
  const bytes = bodyBytes(spec);
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

  it('none of the malformed requests stored, enqueued or sent anything, with or without ?wait=true', async () => {
    const before = await storedState();
    const sentBefore = sandbox.smtp.messages.length;
    for (const [, spec] of malformed) {
      for (const wait of [false, true]) {
        const path = spec.path ?? 'messages';
        const waited = wait ? `${path}${path.includes('?') ? '&' : '?'}wait=true` : path;
        const response = await call(postMessage, { body: undefined, ...spec, path: waited });
        expect(response.status).toBeGreaterThanOrEqual(400);
        expect(response.status).toBeLessThan(500);
      }
    }
    expect(await storedState()).toEqual(before);
    expect(sandbox.smtp.messages.length).toBe(sentBefore);
  });
});

describe('POST /api/messages and GET /api/messages/{id}', () => {
  it('202 with id, status and statusUrl (= Location, without the function key); GET shows exactly the status fields', async () => {
    const response = await call(postMessage, { body: valid, path: 'messages?code=secret-function-key' });
    expect(response.status).toBe(202);
    const body = response.jsonBody as { id: string; status: string; statusUrl: string };
    expect(body).toEqual({
      id: expect.any(String) as unknown,
      status: 'queued',
      statusUrl: `${BASE}/messages/${body.id}`,
    });
    expect(response.headers?.Location).toBe(body.statusUrl);

    const got = await call(getMessage, { method: 'GET', path: `messages/${body.id}`, params: { id: body.id } });
    expect(got.status).toBe(200);
    expect(got.jsonBody).toEqual({
      id: body.id,
      status: 'queued',
      source: 'http',
      attempts: 0,
      createdAt: expect.any(String) as unknown,
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
      details: [{ path: 'idempotencyKey', message: expect.any(String) as unknown }],
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
      sentAt: expect.any(String) as unknown,
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
    const down = createAppServices(
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
    const context = () => new InvocationContext({ invocationId: 'adapter-test', functionName: 'messagesPost' });
    const ok = await handler(
      new HttpRequest({
        method: 'POST',
        url: `${BASE}/messages?code=k`,
        headers: { 'content-type': 'application/json' },
        body: { string: JSON.stringify(valid) },
      }),
      context(),
    );
    expect(ok).toMatchObject({ status: 202, jsonBody: { status: 'queued' } });
    const bad = await handler(
      new HttpRequest({
        method: 'POST',
        url: `${BASE}/messages`,
        headers: { 'content-type': 'text/plain' },
        body: { string: 'x' },
      }),
      context(),
    );
    expect(bad).toMatchObject({ status: 415, jsonBody: { error: { code: 'unsupported_media_type' } } });
  });

  it('through the Functions adapter, a handler’s log lines go to its invocation’s context, redacted', async () => {
    // A secret the app knows (as every Key Vault value is registered), thrown in an unexpected error.
    const secret = `kv-secret-${Date.now()}-do-not-log`;
    rt.redactor.add(secret);
    const lines: Array<{ level: string; text: string }> = [];
    const context = new InvocationContext({
      invocationId: 'adapter-log-test',
      functionName: 'boom',
      traceContext: { traceParent: '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01' },
      logHandler: (level, ...args) => lines.push({ level, text: args.map(String).join(' ') }),
    });
    const failing: ApiHandler = () => {
      throw new Error(`storage said: ${secret}`);
    };
    const response = await httpHandler(failing, () => rt)(
      new HttpRequest({ method: 'GET', url: `${BASE}/boom` }),
      context,
    );
    expect(response.status).toBe(500);
    const logged = lines.find((l) => l.text.includes('unexpected error in an HTTP handler'));
    expect(logged?.level).toBe('error');
    expect(logged?.text).toContain('[redacted]');
    expect(lines.map((l) => l.text).join('\n')).not.toContain(secret);
  });
});
