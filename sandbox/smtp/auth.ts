/** SMTP AUTH as Exchange Online decides it: XOAUTH2 tokens and basic (LOGIN/PLAIN) passwords, checked against the tenant. */
import { timingSafeEqual } from 'node:crypto';
import type { SMTPServerAuthentication } from 'smtp-server';
import type { TokenIssuer, TokenProblem } from '../tokens';
import { SMTP_SEND_AS_APP_ROLE, type SandboxTenant } from '../tenant';
import { lower } from './addresses';
import { EXCHANGE_REPLIES } from './replies';

/** Audiences Exchange Online accepts in an XOAUTH2 bearer token: its resource URI and its first-party app id. */
export const EXCHANGE_AUDIENCES = ['https://outlook.office365.com', '00000002-0000-0ff1-ce00-000000000000'];

/** How a session authenticated. */
export type SmtpAuthMethod = 'XOAUTH2' | 'LOGIN' | 'PLAIN';

/** Why an authentication attempt ended as it did. */
export type AuthOutcome =
  | 'ok'
  | 'not-tls'
  | 'tenant-disabled'
  | 'mailbox-disabled'
  | 'basic-disabled'
  | 'unknown-mailbox'
  | 'bad-password'
  | `token-${TokenProblem}`
  | 'wrong-tenant'
  | 'missing-role'
  | 'service-principal-not-registered'
  | 'service-principal-object-id-mismatch'
  | 'no-full-access';

/** What an AUTH attempt is checked against, besides what the client sent. */
export interface SmtpAuthContext {
  tenant: SandboxTenant;
  issuer: TokenIssuer;
  /** Basic SMTP AUTH is allowed (`limits.basicAuthEnabled` as of the attempt). */
  basicAuthEnabled: boolean;
  /** The session is under TLS (after STARTTLS). */
  secure: boolean;
  /** The `[host timestamp]` diagnostic a 535 5.7.3 carries, as of the refusal. */
  diagnostic(): string;
}

/** How an AUTH attempt ended: the reply to send and, when the token verified, what it said. */
export interface SmtpAuthVerdict {
  outcome: AuthOutcome;
  /** 235 when it succeeded. */
  code: number;
  /** The reply text after the code. */
  text: string;
  /** The mailbox's address, when it succeeded. */
  user?: string;
  /** From the token, once it verified (also on a refusal after that). */
  token?: { appId: string; objectId: string; roles: string[] };
}

function secretEquals(a: string, b: string): boolean {
  const x = Buffer.from(a);
  const y = Buffer.from(b);
  return x.length === y.length && timingSafeEqual(x, y);
}

/**
 * Decides an AUTH attempt the way Exchange does, in its order: TLS, the tenant's SMTP AUTH switch, then the token
 * (signature, audience, expiry, tenant, SMTP.SendAsApp, the service principal registered with the right object id,
 * FullAccess) or the app password, with the mailbox's own switch between.
 */
export async function checkSmtpAuth(
  auth: SMTPServerAuthentication,
  context: SmtpAuthContext,
): Promise<SmtpAuthVerdict> {
  const { tenant } = context;
  const refuse = (outcome: AuthOutcome, code: number, text: string): SmtpAuthVerdict => ({ outcome, code, text });
  const unsuccessful = (outcome: AuthOutcome) =>
    refuse(outcome, 535, EXCHANGE_REPLIES.authUnsuccessful(context.diagnostic()));

  if (!context.secure) return refuse('not-tls', 504, EXCHANGE_REPLIES.unrecognizedAuth);
  if (!tenant.exchange.smtpAuthEnabled) return refuse('tenant-disabled', 535, EXCHANGE_REPLIES.tenantAuthDisabled);
  const user = lower(auth.username ?? '');
  const mailbox = tenant.exchange.mailboxes.get(user);

  if (auth.method === 'XOAUTH2') {
    const check = await context.issuer.verify(auth.accessToken ?? '', EXCHANGE_AUDIENCES);
    if (!check.ok) return unsuccessful(`token-${check.problem}`);
    const claims = check.claims;
    const token = { appId: claims.appid, objectId: claims.oid, roles: claims.roles ?? [] };
    const refused = (verdict: SmtpAuthVerdict): SmtpAuthVerdict => ({ ...verdict, token });
    if (claims.tid !== tenant.tenantId) return refused(unsuccessful('wrong-tenant'));
    if (!claims.roles?.includes(SMTP_SEND_AS_APP_ROLE)) return refused(unsuccessful('missing-role'));
    const registered = tenant.exchange.servicePrincipals.get(claims.appid);
    if (registered === undefined) return refused(unsuccessful('service-principal-not-registered'));
    if (registered !== claims.oid) return refused(unsuccessful('service-principal-object-id-mismatch'));
    if (!mailbox) return refused(unsuccessful('unknown-mailbox'));
    if (!mailbox.smtpAuthEnabled) {
      return refused(refuse('mailbox-disabled', 535, EXCHANGE_REPLIES.mailboxAuthDisabled));
    }
    if (!mailbox.fullAccess.has(claims.oid)) return refused(unsuccessful('no-full-access'));
    return { outcome: 'ok', code: 235, text: EXCHANGE_REPLIES.authSuccessful, user: mailbox.address, token };
  }
  if (auth.method === 'LOGIN' || auth.method === 'PLAIN') {
    if (!context.basicAuthEnabled) return refuse('basic-disabled', 535, EXCHANGE_REPLIES.basicAuthDisabled);
    if (!mailbox) return unsuccessful('unknown-mailbox');
    if (!mailbox.smtpAuthEnabled) return refuse('mailbox-disabled', 535, EXCHANGE_REPLIES.mailboxAuthDisabled);
    if (!mailbox.appPassword || !secretEquals(auth.password ?? '', mailbox.appPassword)) {
      return unsuccessful('bad-password');
    }
    return { outcome: 'ok', code: 235, text: EXCHANGE_REPLIES.authSuccessful, user: mailbox.address };
  }
  return refuse('not-tls', 504, EXCHANGE_REPLIES.unrecognizedAuth);
}
