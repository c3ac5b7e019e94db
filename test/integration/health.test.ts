/**
 * GET /api/health in process against the sandbox (Entra ID, Key Vault, Exchange SMTP over real TLS) and Azurite:
 * healthy, each dependency failing with its code, bad settings, the cache and single flight, the connection cap, and
 * no secret or setting value in any answer.
 */
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { ApiRequest, ApiResponse } from '../../src/api/apiTypes';
import { createHealthHandler, type HealthBody, type HealthHandlerOptions } from '../../src/api/health';
import { runApi, type ApiHandler } from '../../src/api/runApi';
import { createAppServices, type AppServices } from '../../src/appServices';
import { silentLogger } from '../../src/logger';
import { Redactor } from '../../src/redact';
import { SECRET_NAMES } from '../../sandbox';
import { secretScanner } from '../support/secretScan';
import { startStack, type Settings, type Stack } from '../support/stack';

let stack: Stack;
/** Every answer given, for the scan at the end. */
const answers: string[] = [];
/** AppServices built by the tests from other settings, closed after each test. */
const extra: AppServices[] = [];

beforeAll(async () => {
  stack = await startStack();
});

afterEach(async () => {
  const { sandbox } = stack;
  const { tenant } = sandbox;
  tenant.exchange.smtpAuthEnabled = true;
  tenant.exchange.servicePrincipals.set(tenant.app.clientId, tenant.app.servicePrincipalObjectId);
  sandbox.keyVault.faults.length = 0;
  sandbox.entra.faults.length = 0;
  await Promise.all(extra.splice(0).map((s) => s.close()));
});

afterAll(async () => {
  await stack?.close();
});

function request(): ApiRequest {
  const url = 'http://127.0.0.1:7071/api/health';
  return { method: 'GET', url, headers: new Headers(), query: new URL(url).searchParams, params: {}, body: null };
}

interface Answer {
  status: number;
  body: HealthBody;
  byName: Record<string, { status: string; detail: string }>;
}

async function call(handler: ApiHandler, services: () => AppServices = () => stack.app): Promise<Answer> {
  const response: ApiResponse = await runApi(handler, request(), services);
  answers.push(JSON.stringify(response));
  const body = response.jsonBody as HealthBody;
  return { status: response.status, body, byName: Object.fromEntries(body.checks.map((c) => [c.name, c])) };
}

/** A new handler: its own cache, so that each test starts with none. */
const handler = (options: HealthHandlerOptions = {}) => createHealthHandler({ timeoutMs: 5_000, ...options });

/** The app built from the stack's settings with `overrides` (closed after the test). */
function servicesWith(overrides: Settings): AppServices {
  const services = createAppServices(
    { ...stack.settings, ...overrides },
    { redactor: new Redactor(), logger: silentLogger },
  );
  extra.push(services);
  return services;
}

const counts = () => ({ tokens: stack.sandbox.entra.requests.length, sessions: stack.sandbox.smtp.sessions.length });

describe('a healthy app', () => {
  it('answers 200 with every check passing, one token request and one SMTP session, nothing sent', async () => {
    const before = counts();
    const messages = stack.sandbox.smtp.messages.length;
    const answer = await call(handler());
    expect(answer.status).toBe(200);
    expect(answer.body).toMatchObject({ status: 'healthy', cached: false });
    expect(Date.parse(answer.body.checkedAt)).toBeGreaterThan(Date.now() - 60_000);
    expect(answer.body.checks).toEqual([
      { name: 'settings', status: 'pass', detail: 'ok' },
      { name: 'key-vault', status: 'pass', detail: 'ok' },
      { name: 'token', status: 'pass', detail: 'ok' },
      { name: 'smtp', status: 'pass', detail: 'ok' },
    ]);
    expect(counts()).toEqual({ tokens: before.tokens + 1, sessions: before.sessions + 1 });
    const session = stack.sandbox.smtp.sessions.at(-1);
    expect(session).toMatchObject({ startedTls: true, authMethod: 'XOAUTH2' });
    expect(stack.sandbox.smtp.messages.length).toBe(messages);
  });

  it('passes in federated-identity mode with Key Vault skipped', async () => {
    const answer = await call(handler(), () => servicesWith(stack.sandbox.settings('federated-identity')));
    expect(answer.status).toBe(200);
    expect(answer.byName['key-vault']).toEqual({
      name: 'key-vault',
      status: 'skip',
      detail: 'skipped: this auth mode reads no secret from Key Vault',
    });
    expect(answer.byName.token?.status).toBe('pass');
    expect(answer.byName.smtp?.status).toBe('pass');
  });
});

describe('basic mode', () => {
  it('passes with the token skipped and AUTH LOGIN', async () => {
    const before = stack.sandbox.smtp.sessions.length;
    const answer = await call(handler(), () => servicesWith(stack.sandbox.settings('basic')));
    expect(answer.status).toBe(200);
    expect(answer.byName.token).toEqual({
      name: 'token',
      status: 'skip',
      detail: 'skipped: this auth mode uses no token',
    });
    expect(answer.byName.smtp?.status).toBe('pass');
    expect(stack.sandbox.smtp.sessions.slice(before).map((s) => s.authMethod)).toEqual(['LOGIN']);
  });
});

describe('a failing dependency answers 503 with that check failed and its code', () => {
  it('Key Vault 403: KEY_VAULT_FORBIDDEN, token and SMTP skipped', async () => {
    stack.sandbox.keyVault.faults.push({ kind: 'status', status: 403 });
    const answer = await call(handler());
    expect(answer.status).toBe(503);
    expect(answer.body.status).toBe('unhealthy');
    expect(answer.body.checks).toEqual([
      { name: 'settings', status: 'pass', detail: 'ok' },
      { name: 'key-vault', status: 'fail', detail: 'KEY_VAULT_FORBIDDEN' },
      { name: 'token', status: 'skip', detail: 'skipped: key-vault failed' },
      { name: 'smtp', status: 'skip', detail: 'skipped: key-vault failed' },
    ]);
  });

  it('Key Vault 404: KEY_VAULT_SECRET_NOT_FOUND', async () => {
    const answer = await call(handler(), () => servicesWith({ MAIL_CLIENT_SECRET_NAME: 'no-such-secret' }));
    expect(answer.status).toBe(503);
    expect(answer.byName['key-vault']).toMatchObject({ status: 'fail', detail: 'KEY_VAULT_SECRET_NOT_FOUND' });
  });

  it('Entra ID refuses the client secret: TOKEN_INVALID_CLIENT_SECRET, SMTP skipped', async () => {
    stack.sandbox.entra.faults.push({ kind: 'aadsts', code: 7000215 }, { kind: 'aadsts', code: 7000215 });
    const answer = await call(handler());
    expect(answer.status).toBe(503);
    expect(answer.byName['key-vault']?.status).toBe('pass');
    expect(answer.byName.token).toMatchObject({ status: 'fail', detail: 'TOKEN_INVALID_CLIENT_SECRET' });
    expect(answer.byName.smtp).toMatchObject({ status: 'skip', detail: 'skipped: token failed' });
  });

  it('Exchange answers 535 5.7.3: AUTH_FAILED', async () => {
    const { tenant } = stack.sandbox;
    tenant.exchange.servicePrincipals.set(tenant.app.clientId, tenant.app.applicationObjectId);
    const answer = await call(handler());
    expect(answer.status).toBe(503);
    expect(answer.byName.token?.status).toBe('pass');
    expect(answer.byName.smtp).toMatchObject({ status: 'fail', detail: 'AUTH_FAILED' });
  });

  it('SMTP AUTH disabled (535 5.7.139): SMTP_AUTH_DISABLED', async () => {
    stack.sandbox.tenant.exchange.smtpAuthEnabled = false;
    const answer = await call(handler());
    expect(answer.status).toBe(503);
    expect(answer.byName.smtp).toMatchObject({ status: 'fail', detail: 'SMTP_AUTH_DISABLED' });
  });

  it('bad settings: 503 (not 500) naming the settings, not their values, with the rest skipped', async () => {
    const settings = { ...stack.settings, MAIL_SENDER: 'not-an-address', MAIL_CLIENT_ID: 'not-a-guid-value' };
    const answer = await call(handler(), () => createAppServices(settings, { redactor: new Redactor() }));
    expect(answer.status).toBe(503);
    expect(answer.body).toMatchObject({ status: 'unhealthy', cached: false });
    expect(answer.byName.settings).toEqual({
      name: 'settings',
      status: 'fail',
      detail: 'CONFIG_INVALID: MAIL_SENDER, MAIL_CLIENT_ID',
    });
    for (const name of ['key-vault', 'token', 'smtp'])
      expect(answer.byName[name]).toMatchObject({ status: 'skip', detail: 'skipped: settings failed' });
    expect(JSON.stringify(answer.body)).not.toContain('not-an-address');
    expect(JSON.stringify(answer.body)).not.toContain('not-a-guid-value');
  });
});

describe('the cache', () => {
  it('answers a second call within the window from the cache: one token request, one SMTP session', async () => {
    const h = handler({ passMs: 1_500 });
    const before = counts();
    const first = await call(h);
    const second = await call(h);
    expect([first.body.cached, second.body.cached]).toEqual([false, true]);
    expect(second.body.checkedAt).toBe(first.body.checkedAt);
    expect(second.status).toBe(200);
    expect(counts()).toEqual({ tokens: before.tokens + 1, sessions: before.sessions + 1 });

    await new Promise((resolve) => setTimeout(resolve, 1_600));
    const third = await call(h);
    expect(third.body.cached).toBe(false);
    expect(counts()).toEqual({ tokens: before.tokens + 2, sessions: before.sessions + 2 });
  });

  it('shares one check in flight between concurrent callers', async () => {
    const h = handler();
    const before = counts();
    const all = await Promise.all(Array.from({ length: 5 }, () => call(h)));
    expect(all.map((a) => a.status)).toEqual([200, 200, 200, 200, 200]);
    expect(all.filter((a) => !a.body.cached)).toHaveLength(1);
    expect(new Set(all.map((a) => a.body.checkedAt)).size).toBe(1);
    expect(counts()).toEqual({ tokens: before.tokens + 1, sessions: before.sessions + 1 });
  });

  it('keeps a failure for the shorter failure window, then checks again', async () => {
    const h = handler({ passMs: 60_000, failMs: 800 });
    stack.sandbox.keyVault.faults.push({ kind: 'status', status: 403 });
    const failed = await call(h);
    expect(failed.status).toBe(503);
    const again = await call(h);
    expect(again).toMatchObject({ status: 503, body: { cached: true } });
    await new Promise((resolve) => setTimeout(resolve, 900));
    const recovered = await call(h);
    expect(recovered).toMatchObject({ status: 200, body: { cached: false, status: 'healthy' } });
  });
});

describe('the connection cap', () => {
  it('skips SMTP (200) without opening a session when every connection slot is held, and gives its slot back', async () => {
    const services = servicesWith({ MAIL_MAX_CONNECTIONS: '1' });
    const slots = services.slots;
    if (!slots) throw new Error('pacing is on by default: the app has connection slots');
    const held = await slots.acquire(() => {});
    expect(held).toBeDefined();
    const before = counts();
    const busy = await call(handler(), () => services);
    expect(busy.status).toBe(200);
    expect(busy.byName.smtp).toEqual({ name: 'smtp', status: 'skip', detail: 'skipped: all connections busy' });
    expect(counts().sessions).toBe(before.sessions);
    await held?.release();

    const free = await call(handler(), () => services);
    expect(free.byName.smtp?.status).toBe('pass');
    expect(counts().sessions).toBe(before.sessions + 1);
    expect(await slots.leasedCount()).toBe(0);
  });
});

describe('the connection slot during the session', () => {
  it('is held while the SMTP session runs and only then', async () => {
    const services = servicesWith({ MAIL_MAX_CONNECTIONS: '1' });
    const slots = services.slots as NonNullable<AppServices['slots']>;
    stack.sandbox.smtp.faults.delayMs = 300;
    try {
      const sessionsBefore = stack.sandbox.smtp.sessions.length;
      const pending = call(handler(), () => services);
      // Wait until the session has started, then look at the slot.
      while (stack.sandbox.smtp.sessions.length === sessionsBefore) await new Promise((r) => setTimeout(r, 20));
      expect(await slots.leasedCount()).toBe(1);
      expect((await pending).byName.smtp?.status).toBe('pass');
      expect(await slots.leasedCount()).toBe(0);
    } finally {
      stack.sandbox.smtp.faults.delayMs = 0;
    }
  });
});

describe('no secret and no setting value', () => {
  it('appears in any answer given above (healthy and every failing case)', () => {
    expect(answers.length).toBeGreaterThanOrEqual(15);
    const { sandbox, settings } = stack;
    const scanner = secretScanner([
      ...sandbox.secrets(),
      { kind: 'setting', label: 'MAIL_SENDER', value: settings.MAIL_SENDER as string },
      { kind: 'setting', label: 'MAIL_TENANT_ID', value: settings.MAIL_TENANT_ID as string },
      { kind: 'setting', label: 'MAIL_CLIENT_ID', value: settings.MAIL_CLIENT_ID as string },
      { kind: 'setting', label: 'MAIL_KEY_VAULT_URL', value: settings.MAIL_KEY_VAULT_URL as string },
      { kind: 'setting', label: 'MAIL_AUTHORITY_HOST', value: settings.MAIL_AUTHORITY_HOST as string },
      { kind: 'setting', label: 'MAIL_SMTP_HOST', value: settings.MAIL_SMTP_HOST as string },
      { kind: 'setting', label: 'MAIL_CLIENT_SECRET_NAME', value: SECRET_NAMES.clientSecret },
      { kind: 'setting', label: 'mailbox domain', value: sandbox.tenant.domain },
      { kind: 'claim', label: 'service principal oid', value: sandbox.tenant.app.servicePrincipalObjectId },
    ]);
    expect(scanner.findAll({ answers })).toEqual([]);
    // The unhealthy results were logged (codes only): no secret there either.
    expect(stack.logs.some((line) => line.includes('health check unhealthy'))).toBe(true);
    expect(secretScanner(sandbox.secrets()).findAll({ logs: stack.logs })).toEqual([]);
    for (const text of answers) {
      expect(text).not.toContain(String(settings.MAIL_SMTP_PORT));
      expect(text).not.toMatch(/SMTP\.SendAsApp|roles=|aud=|tid=/);
    }
  });
});
