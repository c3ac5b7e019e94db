/**
 * The AUTH check: connect, STARTTLS, AUTH, QUIT with the sender's own transport (src/sender/smtpTransport.ts) and
 * nodemailer's verify(), which sends no message. On 535 5.7.3 it prints the two Exchange commands with the appid and
 * oid of the token just acquired (the oid of an app-only token is the Enterprise Application's object id).
 */
import type { Config } from '../../config';
import { MailError } from '../../errors';
import { classifySmtpError } from '../../sender/classify';
import type { SmtpAuthSource } from '../../sender/smtpAuth';
import { createSmtpTransport, type AuthFailureMarker } from '../../sender/smtpTransport';
import type { TokenClaims } from '../jwtClaims';
import type { CheckResult } from '../report';
import { failed, result } from './context';

/** The commands that register the app in Exchange and give it the mailbox (after 535 5.7.3). Pure. */
export function servicePrincipalFix(sender: string, claims: TokenClaims | undefined): string {
  const appid = claims?.appid ?? '<appid>';
  const oid = claims?.oid ?? '<oid>';
  return [
    `New-ServicePrincipal -AppId ${appid} -ObjectId ${oid}`,
    `Add-MailboxPermission -Identity ${sender} -User ${oid} -AccessRights FullAccess`,
    "The oid is the Enterprise Application's object id (not the App Registration's). Also check SMTP.SendAsApp has admin consent.",
  ].join('\n');
}

export async function checkSmtpAuth(
  config: Config,
  auth: SmtpAuthSource,
  claims: TokenClaims | undefined,
): Promise<CheckResult> {
  const transport = createSmtpTransport(config, auth, { maxConnections: 1, idleTimeoutMs: 1_000 });
  try {
    await transport.verify();
    return result(
      'smtp-auth',
      'pass',
      `AUTH ${auth.mode === 'basic' ? 'LOGIN' : 'XOAUTH2'} as ${config.sender} accepted (connect, STARTTLS, AUTH, QUIT; nothing sent)`,
    );
  } catch (thrown) {
    const marker = thrown as AuthFailureMarker;
    const error: MailError = marker.credentialError ?? classifySmtpError(thrown);
    const reply = error.smtp ? ` (${error.smtp.response.slice(0, 300)})` : '';
    const fix =
      error.code === 'AUTH_FAILED' && auth.mode !== 'basic' ? servicePrincipalFix(config.sender, claims) : error.hint;
    return failed('smtp-auth', error.code, `${error.code}${reply}`, fix);
  } finally {
    transport.close();
  }
}
