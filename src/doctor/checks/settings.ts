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
  return result(
    'settings',
    'pass',
    `sender ${c.sender}, MAIL_AUTH_MODE=${c.auth.mode}, SMTP ${c.smtp.host}:${c.smtp.port}`,
  );
}
