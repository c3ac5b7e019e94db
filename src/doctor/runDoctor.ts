/**
 * Runs every check in order. A check whose prerequisite did not pass is reported as skipped with the reason, so
 * the first failure is the one to fix.
 */
import type { CheckResult } from './report';
import { checkAuthMode } from './checks/authMode';
import { checkClock } from './checks/clock';
import { skipped, type DoctorInputs, type DoctorState } from './checks/context';
import { checkDkim, checkDmarc, checkSpf } from './checks/domainRecords';
import { checkKeyVault } from './checks/keyVault';
import { checkSendAs } from './checks/sendAs';
import { checkSettings } from './checks/settings';
import { checkSmtpAuth } from './checks/smtpAuthentication';
import { checkSmtpDns, checkSmtpTcp, checkStartTls } from './checks/smtpConnection';
import { checkToken } from './checks/token';

/** The checks, in the order they run. */
export const CHECK_NAMES = [
  'settings',
  'clock',
  'smtp-dns',
  'smtp-tcp',
  'smtp-starttls',
  'key-vault',
  'token',
  'smtp-auth',
  'send-as',
  'spf',
  'dkim',
  'dmarc',
  'auth-mode',
] as const;

/** Runs the checks; `onResult` sees each as it completes (the CLI prints as it goes). */
export async function runDoctor(
  inputs: DoctorInputs,
  onResult: (result: CheckResult) => void = () => {},
): Promise<CheckResult[]> {
  const results: CheckResult[] = [];
  const add = (r: CheckResult) => {
    const safe = { ...r, detail: inputs.redactor.redact(r.detail), fix: inputs.redactor.redact(r.fix) };
    results.push(safe);
    onResult(safe);
  };
  const state: DoctorState = {};
  add(checkSettings(inputs, state));
  const config = state.config;
  if (!config) {
    for (const name of CHECK_NAMES.slice(1)) add(skipped(name, 'the settings are invalid'));
    return results;
  }
  add(await checkClock(inputs, config));

  add(await checkSmtpDns(inputs, config, state));
  add(state.smtpAddresses ? await checkSmtpTcp(inputs, config, state) : skipped('smtp-tcp', 'smtp-dns failed'));
  add(
    state.tcpOk
      ? await checkStartTls(inputs, config, state)
      : skipped('smtp-starttls', state.smtpAddresses ? 'smtp-tcp failed' : 'smtp-dns failed'),
  );

  add(await checkKeyVault(inputs, config, state));
  add(state.keyVaultOk ? await checkToken(inputs, config, state) : skipped('token', 'key-vault failed'));

  if (!state.startTlsOk) add(skipped('smtp-auth', 'the SMTP connection checks did not pass'));
  else if (!state.keyVaultOk) add(skipped('smtp-auth', 'key-vault failed'));
  else if (!state.auth) add(skipped('smtp-auth', 'token failed'));
  else add(await checkSmtpAuth(config, state.auth, state.claims));

  add(checkSendAs(config));

  const domain = inputs.domain ?? config.sender.slice(config.sender.lastIndexOf('@') + 1);
  add(await checkSpf(inputs.dns, domain));
  add(await checkDkim(inputs.dns, domain));
  add(await checkDmarc(inputs.dns, domain));
  add(checkAuthMode(config));
  return results;
}
