/** The auth mode check: MAIL_AUTH_MODE=basic works today but is going away (src/config.ts BASIC_AUTH_DEPRECATION). */
import { BASIC_AUTH_DEPRECATION, type Config } from '../../config';
import type { CheckResult } from '../report';
import { result } from './context';

export function checkAuthMode(config: Config): CheckResult {
  if (config.auth.mode === 'basic')
    return result(
      'auth-mode',
      'warn',
      'MAIL_AUTH_MODE=basic (password over AUTH LOGIN)',
      `${BASIC_AUTH_DEPRECATION} (BASIC_AUTH_DISABLED once Microsoft turns it off.)`,
    );
  return result('auth-mode', 'pass', `MAIL_AUTH_MODE=${config.auth.mode} (OAuth 2.0)`);
}
