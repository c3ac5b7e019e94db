/** What the checks share: the inputs of the run, and what earlier checks found for the later ones. */
import type { Config } from '../../config';
import type { MailErrorCode } from '../../errors';
import type { Redactor } from '../../redact';
import type { SecretSource } from '../../sender/keyVaultSecrets';
import type { SmtpAuthSource } from '../../sender/smtpAuth';
import type { DoctorDns } from '../dnsResolver';
import type { TokenClaims } from '../jwtClaims';
import type { CheckResult, CheckStatus } from '../report';

export interface DoctorInputs {
  /** Reads the app settings (environment merged with local.settings.json); may throw a ConfigError. */
  settings: () => Record<string, string | undefined>;
  /** The domain whose SPF, DKIM and DMARC records are checked; default the sender's domain. */
  domain: string | undefined;
  dns: DoctorDns;
  /** The local clock; injectable so a test can put it off by minutes. */
  now: () => number;
  redactor: Redactor;
  /** Bound of each network step (connect, a reply, the handshake, an HTTP answer). */
  timeoutMs: number;
}

/** Filled in as the checks run. */
export interface DoctorState {
  config?: Config;
  /** Addresses of the SMTP host from the DNS check. */
  smtpAddresses?: string[];
  tcpOk?: boolean;
  startTlsOk?: boolean;
  secrets?: SecretSource;
  keyVaultOk?: boolean;
  auth?: SmtpAuthSource;
  tokenOk?: boolean;
  claims?: TokenClaims;
}

export const result = (name: string, status: CheckStatus, detail: string, fix = ''): CheckResult => ({
  name,
  status,
  detail,
  fix,
});

/** A failed check with the app's error code (see CheckResult.code). */
export const failed = (name: string, code: MailErrorCode, detail: string, fix = ''): CheckResult => ({
  ...result(name, 'fail', detail, fix),
  code,
});

/** A check that did not run because one it depends on did not pass. */
export const skipped = (name: string, reason: string): CheckResult => result(name, 'skip', `skipped: ${reason}`);
