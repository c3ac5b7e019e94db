/**
 * The token check: gets the SMTP token exactly as the sender does (src/sender/smtpAuth.ts) and reads its claims
 * without verifying them: `roles` must hold SMTP.SendAsApp, `aud` must be Exchange's resource (the scope without
 * `/.default`), `tid` the tenant. Only roles, aud, tid, appid and oid are ever printed; never the token.
 */
import type { Config } from '../../config';
import { MailError, ensureError } from '../../errors';
import { trimTrailingSlashes } from '../../inputBounds';
import { createSmtpAuthSource } from '../../sender/smtpAuth';
import { readTokenClaims, type TokenClaims } from '../jwtClaims';
import type { CheckResult } from '../report';
import { failed, result, type DoctorInputs, type DoctorState } from './context';

export const SEND_AS_APP_ROLE = 'SMTP.SendAsApp';

/** What is wrong with the claims, each with its fix; empty when they are right. Pure, for the unit tests. */
export function claimProblems(
  claims: TokenClaims,
  expected: { audience: string; tenantId: string },
): Array<{ problem: string; fix: string }> {
  const problems: Array<{ problem: string; fix: string }> = [];
  if (!claims.roles.includes(SEND_AS_APP_ROLE))
    problems.push({
      problem: `roles has no ${SEND_AS_APP_ROLE}`,
      fix: 'Grant the application permission Office 365 Exchange Online → SMTP.SendAsApp to the app registration, with admin consent (or assign it with RBAC for Applications).',
    });
  if ((claims.aud === undefined ? undefined : trimTrailingSlashes(claims.aud)) !== expected.audience)
    problems.push({
      problem: `aud is ${claims.aud ?? '(none)'}, not ${expected.audience}`,
      fix: 'Use MAIL_SMTP_SCOPE=https://outlook.office365.com/.default (GCC High: https://outlook.office365.us/.default).',
    });
  // A tenant given by its domain name cannot be compared with the tid GUID.
  const guid = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i.test(expected.tenantId);
  if (guid && claims.tid?.toLowerCase() !== expected.tenantId.toLowerCase())
    problems.push({
      problem: `tid is ${claims.tid ?? '(none)'}, not MAIL_TENANT_ID`,
      fix: 'Set MAIL_TENANT_ID to the tenant of the mailbox.',
    });
  return problems;
}

/** The claims the doctor prints. */
export function describeClaims(claims: TokenClaims): string {
  return `roles=[${claims.roles.join(', ')}] aud=${claims.aud ?? '-'} tid=${claims.tid ?? '-'} appid=${claims.appid ?? '-'} oid=${claims.oid ?? '-'}`;
}

export async function checkToken(inputs: DoctorInputs, config: Config, state: DoctorState): Promise<CheckResult> {
  const auth = config.auth;
  if (auth.mode === 'basic') {
    state.auth = createSmtpAuthSource(config, state.secrets, inputs.redactor);
    return result('token', 'skip', 'skipped: MAIL_AUTH_MODE=basic uses no token');
  }
  const source = createSmtpAuthSource(config, state.secrets, inputs.redactor);
  let accessToken: string;
  try {
    const login = await source.get();
    if (login.kind !== 'xoauth2') throw new MailError('TOKEN_FAILED', 'no access token');
    accessToken = login.accessToken;
  } catch (thrown) {
    const error = thrown instanceof MailError ? thrown : new MailError('TOKEN_FAILED', ensureError(thrown).message);
    return failed('token', error.code, `${error.code}: ${error.message.slice(0, 400)}`, error.hint);
  }
  state.auth = source;
  const claims = readTokenClaims(accessToken);
  if (!claims)
    return failed(
      'token',
      'TOKEN_FAILED',
      'the access token is not a readable JWT',
      'Read the AADSTS code in the message.',
    );
  state.claims = claims;
  state.tokenOk = true;
  const problems = claimProblems(claims, { audience: auth.scope.replace(/\/\.default$/, ''), tenantId: auth.tenantId });
  // Exchange would refuse such a token at AUTH (535 5.7.3): the code the send would fail with.
  if (problems.length)
    return failed(
      'token',
      'AUTH_FAILED',
      `${problems.map((p) => p.problem).join('; ')} (${describeClaims(claims)})`,
      problems.map((p) => p.fix).join('\n'),
    );
  return result('token', 'pass', `token from ${new URL(config.authorityHost).host}: ${describeClaims(claims)}`);
}
