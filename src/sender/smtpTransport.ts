/** nodemailer transports to Exchange: STARTTLS required, TLS 1.2+, certificates verified, the credential supplied per connection. */
import nodemailer from 'nodemailer';
import type { Config } from '../config';
import { MailError } from '../errors';
import { classifyTokenError } from './classify';
import type { SmtpAuthSource, SmtpLogin } from './smtpAuth';
import { MIN_TLS_VERSION, trustedSecureContext } from './tlsTrust';

/** Messages per pooled connection before it is recycled. */
export const MESSAGES_PER_CONNECTION = 100;
export const CONNECTION_TIMEOUT_MS = 15_000;
export const GREETING_TIMEOUT_MS = 15_000;
export const SOCKET_TIMEOUT_MS = 60_000;

/** Names of our nodemailer custom auth handlers; they speak AUTH XOAUTH2 and AUTH LOGIN on the wire. */
const XOAUTH2_HANDLER = 'M365-XOAUTH2';
const LOGIN_HANDLER = 'M365-LOGIN';

export type Transporter = ReturnType<typeof nodemailer.createTransport>;

interface CustomAuthContext {
  auth: { credentials?: { user?: string } };
  sendCommand(command: string): Promise<{ status: number; response: string; code?: string }>;
}

/**
 * What the auth handlers attach to the error they raise. nodemailer relabels whatever a handler throws
 * (code EAUTH, message suffix), so a classified credential failure travels beside it, untouched.
 */
export interface AuthFailureMarker {
  tokenFromCache?: boolean;
  credentialError?: MailError;
}

/** Gets credentials inside an auth handler; a failure (Key Vault, Entra ID) is carried out as-is. */
async function credentials(auth: SmtpAuthSource): Promise<SmtpLogin> {
  try {
    return await auth.get();
  } catch (error) {
    const credentialError = error instanceof MailError ? error : classifyTokenError(error);
    throw Object.assign(new Error(`Credentials unavailable: ${credentialError.code}`), { credentialError });
  }
}

/** AUTH XOAUTH2 with a token fetched for this connection, so a long-lived pool never presents an expired token. */
async function xoauth2(auth: SmtpAuthSource, ctx: CustomAuthContext): Promise<void> {
  const login = await credentials(auth);
  if (login.kind !== 'xoauth2') throw new MailError('CONFIG_INVALID', 'XOAUTH2 needs an OAuth MAIL_AUTH_MODE');
  const payload = Buffer.from(`user=${login.user}\x01auth=Bearer ${login.accessToken}\x01\x01`).toString('base64');
  let reply = await ctx.sendCommand(`AUTH XOAUTH2 ${payload}`);
  // RFC 7628: a 334 carries an error challenge; an empty line then ends the exchange with the final status.
  if (reply.status === 334) reply = await ctx.sendCommand('');
  if (reply.status !== 235) {
    throw Object.assign(new Error(`Authentication failed`), { tokenFromCache: login.fromCache });
  }
}

/** AUTH LOGIN with the app password (legacy basic mode). */
async function login(auth: SmtpAuthSource, ctx: CustomAuthContext): Promise<void> {
  const credential = await credentials(auth);
  if (credential.kind !== 'password') throw new MailError('CONFIG_INVALID', 'AUTH LOGIN needs MAIL_AUTH_MODE=basic');
  const steps = [
    'AUTH LOGIN',
    Buffer.from(credential.user).toString('base64'),
    Buffer.from(credential.password).toString('base64'),
  ];
  for (const [index, step] of steps.entries()) {
    const reply = await ctx.sendCommand(step);
    const expected = index < steps.length - 1 ? 334 : 235;
    if (reply.status !== expected) throw new Error('Authentication failed');
  }
}

/** A pooled transport to `config.smtp`: at most `maxConnections`, each closed after `idleTimeoutMs` idle. */
export function createSmtpTransport(
  config: Config,
  auth: SmtpAuthSource,
  options: { maxConnections: number; idleTimeoutMs: number },
): Transporter {
  const { host, port } = config.smtp;
  const oauth = auth.mode !== 'basic';
  // Built once for the process: each connection (and each reconnection) would otherwise parse the whole CA list.
  const secureContext = trustedSecureContext(config.extraCaPem);
  const base = {
    host,
    port,
    secure: false,
    requireTLS: true,
    tls: { minVersion: MIN_TLS_VERSION, rejectUnauthorized: true, ...(secureContext ? { secureContext } : {}) },
    connectionTimeout: CONNECTION_TIMEOUT_MS,
    greetingTimeout: GREETING_TIMEOUT_MS,
    socketTimeout: SOCKET_TIMEOUT_MS,
    disableFileAccess: true,
    disableUrlAccess: true,
    logger: false,
    // A method name of our own: nodemailer replaces a plain 'XOAUTH2' with the server's first mechanism (LOGIN)
    // when it has no token generator, and our handler supplies the token per connection instead.
    auth: { type: 'custom', method: oauth ? XOAUTH2_HANDLER : LOGIN_HANDLER, user: config.sender },
    customAuth: oauth
      ? { [XOAUTH2_HANDLER]: (ctx: CustomAuthContext) => xoauth2(auth, ctx) }
      : { [LOGIN_HANDLER]: (ctx: CustomAuthContext) => login(auth, ctx) },
  };
  return nodemailer.createTransport({
    ...base,
    pool: true,
    maxConnections: options.maxConnections,
    maxMessages: MESSAGES_PER_CONNECTION,
    idleTimeout: options.idleTimeoutMs,
  } as never);
}
