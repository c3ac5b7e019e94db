/** The settings check: loadConfig (src/config.ts) with its own errors, each naming the setting and its fix. */
import { ConfigError, loadConfig } from '../../config';
import { ensureError } from '../../errors';
import type { CheckResult } from '../report';
import { failed, result, type DoctorInputs, type DoctorState } from './context';

export function checkSettings(inputs: DoctorInputs, state: DoctorState): CheckResult {
  try {
    state.config = loadConfig(inputs.settings());
  } catch (error) {
    const problems = error instanceof ConfigError ? error.problems : [ensureError(error).message];
    return failed(
      'settings',
      'CONFIG_INVALID',
      `${problems.length} setting problem(s): ${problems.join('; ')}`,
      'Fix the app settings named above (local.settings.json "Values" locally, the Function App settings in Azure).',
    );
  }
  const c = state.config;
  const summary = `sender ${c.sender}, MAIL_AUTH_MODE=${c.auth.mode}, SMTP ${c.smtp.host}:${c.smtp.port}`;
  if (c.unsubscribe.baseUrl === undefined) {
    // Not invalid: transactional mail works. But bulk mail, digests included, is refused without its links.
    return result(
      'settings',
      'warn',
      `${summary}; MAIL_UNSUBSCRIBE_BASE_URL is not set: bulk mail and every digest run fail with UNSUBSCRIBE_NOT_CONFIGURED`,
      'Set MAIL_UNSUBSCRIBE_BASE_URL to the public https base of this app and MAIL_KEY_VAULT_URL to the vault holding the unsubscribe key (docs/unsubscribe.md), or ignore this if the app sends transactional mail only.',
    );
  }
  return result('settings', 'pass', summary);
}
