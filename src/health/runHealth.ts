/**
 * The checks of GET /api/health: settings, key-vault, token and smtp, each run by the doctor's own check
 * (src/doctor/checks/). Only the name, the status and, on a failure, the app's error code leave this file: the
 * doctor's details name hosts, the mailbox, secrets' names and token claims, and a health answer is anonymous.
 */
import { ConfigError, SETTING_NAMES, type Config } from '../config';
import { MailError, type MailErrorCode } from '../errors';
import type { ConnectionSlots } from '../pacing/connectionSlots';
import type { Redactor } from '../redact';
import { asStorageUnavailable } from '../storage/storageClients';
import type { DoctorInputs, DoctorState } from '../doctor/checks/context';
import { createDoctorDns } from '../doctor/dnsResolver';
import type { CheckResult } from '../doctor/report';

export const HEALTH_CHECK_NAMES = ['settings', 'key-vault', 'token', 'smtp'] as const;
export type HealthCheckName = (typeof HEALTH_CHECK_NAMES)[number];
export type HealthCheckStatus = 'pass' | 'fail' | 'skip';

/**
 * One check as the endpoint answers it. `detail` is `ok` on a pass, the error code on a failure (with the names of
 * the bad settings for `settings`), and one of the fixed reasons of {@link SKIP_REASONS} on a skip.
 */
export interface HealthCheck {
  name: HealthCheckName;
  status: HealthCheckStatus;
  detail: string;
}

/** Every detail a skipped check can have: fixed text, never built from a setting or a server's answer. */
export const SKIP_REASONS = {
  settingsFailed: 'skipped: settings failed',
  keyVaultFailed: 'skipped: key-vault failed',
  tokenFailed: 'skipped: token failed',
  noSecret: 'skipped: this auth mode reads no secret from Key Vault',
  noToken: 'skipped: this auth mode uses no token',
  connectionsBusy: 'skipped: all connections busy',
} as const;

/** Each network step of a check (connect, a reply, a handshake, an HTTP answer) gets this long. */
export const HEALTH_STEP_TIMEOUT_MS = 10_000;
/** After the SMTP session closes, its connection slot is given back this much later (as the pool does). */
const SLOT_RELEASE_DELAY_MS = 200;

const pass = (name: HealthCheckName): HealthCheck => ({ name, status: 'pass', detail: 'ok' });
const fail = (name: HealthCheckName, code: string): HealthCheck => ({
  name,
  status: 'fail',
  detail: code,
});
const skip = (name: HealthCheckName, reason: string): HealthCheck => ({ name, status: 'skip', detail: reason });

/** A doctor result as a health check: its status, and its code (never its detail). */
function fromDoctor(name: HealthCheckName, r: CheckResult, skipReason: string): HealthCheck {
  if (r.status === 'fail') return fail(name, r.code ?? 'UNKNOWN');
  if (r.status === 'skip') return skip(name, skipReason);
  return pass(name);
}

/** The names of the settings a ConfigError is about (known setting names only: a problem's text may quote a value). */
export function badSettingNames(error: unknown): string[] {
  if (!(error instanceof ConfigError)) return [];
  const known = new Set<string>(SETTING_NAMES);
  const names = error.problems.map((p) => /^[A-Za-z][A-Za-z0-9_]*/.exec(p)?.[0] ?? '').filter((n) => known.has(n));
  return [...new Set(names)];
}

/** The checks when the app's settings do not load: settings failed (with the names of the bad settings), the rest skipped. */
export function settingsFailedChecks(error: unknown): HealthCheck[] {
  const names = badSettingNames(error);
  const code: MailErrorCode = error instanceof MailError ? error.code : 'CONFIG_INVALID';
  return [
    fail('settings', names.length ? `${code}: ${names.join(', ')}` : code),
    ...HEALTH_CHECK_NAMES.slice(1).map((name) => skip(name, SKIP_REASONS.settingsFailed)),
  ];
}

export interface HealthDeps {
  config: Config;
  /** The process redactor: the secrets the Key Vault check reads are added to it. */
  redactor: Redactor;
  /** The mailbox's connection cap (absent with MAIL_PACING=off): the SMTP check holds one slot for its session. */
  slots?: ConnectionSlots | undefined;
  timeoutMs?: number;
}

/**
 * Runs key-vault, token and smtp with config already loaded (settings passes). Never throws. The smtp check holds
 * one of the mailbox's connection slots for its one session (connect, STARTTLS, AUTH, QUIT: nothing is sent), or
 * is skipped when every slot is held: it never opens a session beyond MAIL_MAX_CONNECTIONS.
 */
export async function runHealthChecks(deps: HealthDeps): Promise<HealthCheck[]> {
  const { config } = deps;
  // The doctor's checks load the send path (MSAL, Key Vault, nodemailer): on the first health check, not at start-up.
  const [{ checkKeyVault }, { checkToken }, { checkSmtpAuth }] = await Promise.all([
    import('../doctor/checks/keyVault.js'),
    import('../doctor/checks/token.js'),
    import('../doctor/checks/smtpAuthentication.js'),
  ]);
  const inputs: DoctorInputs = {
    settings: () => ({}),
    domain: undefined,
    dns: createDoctorDns(undefined),
    now: Date.now,
    redactor: deps.redactor,
    timeoutMs: deps.timeoutMs ?? HEALTH_STEP_TIMEOUT_MS,
  };
  const state: DoctorState = { config };
  const checks: HealthCheck[] = [pass('settings')];

  checks.push(fromDoctor('key-vault', await checkKeyVault(inputs, config, state), SKIP_REASONS.noSecret));
  if (!state.keyVaultOk) {
    checks.push(skip('token', SKIP_REASONS.keyVaultFailed), skip('smtp', SKIP_REASONS.keyVaultFailed));
    return checks;
  }
  checks.push(fromDoctor('token', await checkToken(inputs, config, state), SKIP_REASONS.noToken));
  const auth = state.auth;
  if (!auth || (auth.mode !== 'basic' && !state.tokenOk)) {
    checks.push(skip('smtp', SKIP_REASONS.tokenFailed));
    return checks;
  }
  checks.push(await smtpCheck(deps, () => checkSmtpAuth(config, auth, state.claims)));
  return checks;
}

async function smtpCheck(deps: HealthDeps, session: () => Promise<CheckResult>): Promise<HealthCheck> {
  if (!deps.slots) return fromDoctor('smtp', await session(), SKIP_REASONS.tokenFailed);
  let slot;
  try {
    // The session lasts seconds, the lease LEASE_SECONDS with renewals: a lost lease needs storage to fail meanwhile,
    // and then the session is over within HEALTH_STEP_TIMEOUT_MS per step anyway.
    slot = await deps.slots.acquire(() => {});
  } catch (error) {
    return fail('smtp', asStorageUnavailable(error)?.code ?? 'UNKNOWN');
  }
  if (!slot) return skip('smtp', SKIP_REASONS.connectionsBusy);
  try {
    return fromDoctor('smtp', await session(), SKIP_REASONS.tokenFailed);
  } finally {
    await new Promise((resolve) => setTimeout(resolve, SLOT_RELEASE_DELAY_MS));
    await slot.release();
  }
}
