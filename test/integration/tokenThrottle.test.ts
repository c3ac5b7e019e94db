/**
 * Bug: after one 5xx from Entra ID, MSAL refuses the same token request locally for 60 s, and that replay was classified TOKEN_FAILED (permanent), failing every message the instance sent meanwhile.
 *
 * Found by the fault suite (test/e2e/faultSuite.test.ts): one 500 in an Entra ID burst failed 171 of 400 messages. MSAL's
 * throttle (after a 429 or 5xx, for Retry-After or 60 s) throws a ServerError carrying the AADSTS number as its code
 * and no HTTP status, so neither the status nor `server_error` in the text said "transient". Real MSAL against the
 * sandbox's Entra ID, through the real sender and SMTP server.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { classifyTokenError } from '../../src/sender/classify';
import { MailError } from '../../src/errors';
import { message, sandboxMailer, startSandbox, type Sandbox, type TestMailer } from '../support/sandboxMailer';

let sandbox: Sandbox;
let mailer: TestMailer;

beforeAll(async () => {
  // Tokens MSAL will not serve from its cache (it renews 5 minutes ahead): every new connection asks Entra ID.
  sandbox = await startSandbox({ tokenLifetimeSeconds: 290 });
  mailer = sandboxMailer(sandbox);
});

afterAll(async () => {
  await mailer?.close();
  await sandbox?.close();
});

async function sendError(subject: string): Promise<MailError> {
  try {
    await mailer.sender.send(message(mailer, { subject }), { source: 'http' });
  } catch (error) {
    if (error instanceof MailError) return error;
    throw error;
  }
  throw new Error(`"${subject}" was sent; a failure was expected`);
}

describe('a 5xx from Entra ID, then MSAL throttling the same request', () => {
  it.each([500, 503] as const)(
    '%i: the answer and its local replays are TOKEN_ENDPOINT_UNAVAILABLE, transient',
    async (status) => {
      await mailer.sender.close(); // no authenticated connection left over: the next send needs a token
      sandbox.entra.faults.push({ kind: 'status', status, retryAfterSeconds: 2 });
      const requestsBefore = sandbox.entra.requests.length;
      const first = await sendError(`Entra ${status}, first`);
      expect(first).toMatchObject({ code: 'TOKEN_ENDPOINT_UNAVAILABLE', transient: true });

      // MSAL answers this one from its throttle, without asking Entra ID: the same failure, replayed.
      const replay = await sendError(`Entra ${status}, replayed`);
      expect(sandbox.entra.requests.length - requestsBefore).toBe(1);
      const cause = replay.cause as { name?: string; status?: number; errorCode?: string };
      expect(cause).toMatchObject({ name: 'ServerError' });
      expect(cause.status).toBeUndefined();
      expect(replay).toMatchObject({ code: 'TOKEN_ENDPOINT_UNAVAILABLE', transient: true });

      // Once the throttle ends the sender gets a token and sends.
      await new Promise((resolve) => setTimeout(resolve, 2_100));
      const sent = await mailer.sender.send(message(mailer, { subject: `Entra ${status}, after` }), { source: 'http' });
      expect(sent.smtp.code).toBe(250);
    },
  );

  it('an AADSTS code that means a setup error is still permanent, replayed or not', () => {
    const replayed = Object.assign(new Error('AADSTS7000215: Invalid client secret provided.'), {
      name: 'ServerError',
      errorCode: '7000215',
      errorMessage: 'AADSTS7000215: Invalid client secret provided.',
    });
    expect(classifyTokenError(replayed)).toMatchObject({ code: 'TOKEN_INVALID_CLIENT_SECRET', transient: false });
  });
});
