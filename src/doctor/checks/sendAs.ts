/**
 * The SendAs check. Exchange (and the sandbox) decide SendAs when the message is submitted, at the end of DATA
 * (554 5.2.252 SendAsDenied): MAIL FROM and RCPT TO are accepted for any address, so a MAIL FROM + RCPT + RSET probe
 * proves nothing and the only real test is to send. The doctor does not send: it passes the sender's own address
 * (no grant needed) and warns for every other allowed From with the grant to check and how to prove it.
 */
import type { Config } from '../../config';
import type { CheckResult } from '../report';
import { result } from './context';

export function checkSendAs(config: Config): CheckResult {
  const others = config.allowedFrom.filter((entry) => entry !== config.sender);
  if (others.length === 0)
    return result('send-as', 'pass', `only ${config.sender} itself may be the From address: no SendAs grant needed`);
  const first = others.find((e) => !e.startsWith('@')) ?? `someone${others[0] as string}`;
  return result(
    'send-as',
    'warn',
    `MAIL_ALLOWED_FROM allows ${others.join(', ')}: SendAs cannot be verified without sending (Exchange checks it at the end of DATA, 554 5.2.252 SendAsDenied)`,
    [
      ...others
        .filter((e) => !e.startsWith('@'))
        .map(
          (e) =>
            `Add-RecipientPermission -Identity ${e} -Trustee ${config.sender} -AccessRights SendAs (allow up to an hour)`,
        ),
      ...(others.some((e) => e.startsWith('@'))
        ? ['For an @domain entry, grant SendAs on each address of the domain that is used as From.']
        : []),
      `Prove it with one real message: m365-mailer send --from ${first} --to <you> --subject test --text test`,
    ].join('\n'),
  );
}
