/** The typed Config: every app setting, parsed and validated once, with errors that name the setting and the fix. */
import { existsSync, readFileSync, statSync } from 'node:fs';
import path from 'node:path';
import { z } from 'zod';
import { MailError } from './errors';
import { trimTrailingSlashes } from './inputBounds';
import { isEmailAddress, MAX_ADDRESS_CHARS } from './message';
import { parseAuthenticationString } from './telemetry';

export const DEFAULT_SMTP_HOST = 'smtp.office365.com';
export const DEFAULT_SMTP_PORT = 587;
export const DEFAULT_SMTP_SCOPE = 'https://outlook.office365.com/.default';
export const DEFAULT_AUTHORITY_HOST = 'https://login.microsoftonline.com';
export const DEFAULT_RATE_PER_MINUTE = 30;
export const DEFAULT_MAX_CONNECTIONS = 3;
export const DEFAULT_DAILY_RECIPIENT_LIMIT = 10_000;
export const DEFAULT_MAX_RECIPIENTS = 500;
/** 35 MiB: Exchange Online's default send limit. */
export const DEFAULT_MAX_MESSAGE_BYTES = 36_700_160;
/** The window MAIL_RATE_PER_MINUTE applies to; settable only so that tests and benchmarks can scale time down. */
export const DEFAULT_RATE_WINDOW_SECONDS = 60;
/** The rolling window MAIL_DAILY_RECIPIENT_LIMIT applies to (24 h); settable for the same reason. */
export const DEFAULT_DAILY_WINDOW_SECONDS = 24 * 60 * 60;
/** How long a worker owns a message it is sending: above the sender's worst case (token, connect, 60 s socket timeout). */
export const DEFAULT_SEND_LEASE_SECONDS = 300;
/** The first back-off after a transient failure (it doubles per attempt); settable only so that tests can scale time down. */
export const DEFAULT_RETRY_BACKOFF_SECONDS = 30;
/** Status records, idempotency keys, payloads and batches are deleted this long after their final state. */
export const DEFAULT_RETENTION_DAYS = 30;

/** The Key Vault secret holding the key that signs unsubscribe links, unless MAIL_UNSUBSCRIBE_KEY_NAME says otherwise. */
export const DEFAULT_UNSUBSCRIBE_KEY_NAME = 'mail-unsubscribe-key';
/**
 * The unsubscribe key's secret name: a Key Vault secret name (1 to 127 letters, digits and dashes) with room for the
 * `-previous` of the key it replaced during a rotation.
 */
const UNSUBSCRIBE_KEY_NAME = /^[A-Za-z0-9-]{1,118}$/;

/** Authority hosts of Microsoft's clouds; any other host is added to MSAL's knownAuthorities. */
export const MICROSOFT_AUTHORITY_HOSTS = new Set([
  'login.microsoftonline.com',
  'login.microsoftonline.us',
  'login.chinacloudapi.cn',
  'login.partner.microsoftonline.cn',
]);

export const AUTH_MODES = ['client-secret', 'client-certificate', 'federated-identity', 'basic'] as const;
export type AuthMode = (typeof AUTH_MODES)[number];

const GUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
/** The longest URL, host or name setting looked at: a longer value is invalid before any pattern runs on it. */
export const MAX_SETTING_CHARS = 2048;
const DOMAIN_CHARS = /^[a-z0-9.-]+$/i;
const TOP_LEVEL_DOMAIN = /^[a-z]{2,}$/i;

/** An address setting: bounded, then the linear check the message schema uses. */
const isEmail = (value: string) => value.length <= MAX_ADDRESS_CHARS && isEmailAddress(value);

/**
 * `contoso.com`: letters, digits, dots and dashes, ending in a dot and a top-level domain of two or more letters.
 * Split at the last dot rather than matched as `[a-z0-9.-]+\.[a-z]{2,}`, whose two parts both take dots and letters.
 */
export function isDomain(value: string): boolean {
  if (value.length > MAX_SETTING_CHARS || !DOMAIN_CHARS.test(value)) return false;
  const dot = value.lastIndexOf('.');
  return dot > 0 && TOP_LEVEL_DOMAIN.test(value.slice(dot + 1));
}

/** MAIL_DIGEST_SCHEDULE's default: 07:00 every day (UTC unless WEBSITE_TIME_ZONE says otherwise). */
export const DEFAULT_DIGEST_SCHEDULE = '0 0 7 * * *';
/** MAIL_DIGEST_MAX_ITEMS's default: items listed in one digest; the rest are counted as omitted. */
export const DEFAULT_DIGEST_MAX_ITEMS = 50;
/** One NCRONTAB field: digits, `*`, and the `, - /` that join them (no nested quantifiers: linear time). */
const NCRONTAB_FIELD = /^[0-9*,/-]{1,60}$/;
/** A day or month name field (MON-FRI, JAN): letters allowed in the last two fields. */
const NCRONTAB_NAMED_FIELD = /^[0-9A-Za-z*,/-]{1,60}$/;

/** True for a six-field NCRONTAB expression (seconds first), as the Functions host's timer trigger takes it. */
export function isDigestSchedule(value: string): boolean {
  if (value.length > 200) return false;
  const fields = value.trim().split(/\s+/);
  if (fields.length !== 6) return false;
  return fields.every((field, i) => (i >= 4 ? NCRONTAB_NAMED_FIELD : NCRONTAB_FIELD).test(field));
}

/**
 * The digest timer's schedule from the app settings the worker sees at registration (MAIL_DIGEST_SCHEDULE, else the
 * default). An invalid value falls back to the default here; loadConfig reports it by name when the app starts.
 */
export function digestScheduleSetting(env: Record<string, string | undefined>): string {
  const value = env.MAIL_DIGEST_SCHEDULE?.trim();
  return value && isDigestSchedule(value) ? value : DEFAULT_DIGEST_SCHEDULE;
}

/** A pattern test on a setting that first bounds its length. */
const matches = (pattern: RegExp, value: string) => value.length <= MAX_SETTING_CHARS && pattern.test(value);

/** Fixes shown after "<SETTING> is invalid/required:". */
const FIXES: Record<string, string> = {
  MAIL_SENDER: 'set it to the UPN of the mailbox that authenticates, e.g. alerts@contoso.com',
  MAIL_ALLOWED_FROM: 'a comma-separated list of addresses or @domain entries, e.g. "alerts@contoso.com,@contoso.com"',
  MAIL_AUTH_MODE: `one of ${AUTH_MODES.join(', ')}`,
  MAIL_TENANT_ID: "the Entra tenant id (GUID) or primary domain, from the app registration's Overview page",
  MAIL_CLIENT_ID: "the app registration's Application (client) ID (a GUID)",
  MAIL_KEY_VAULT_URL: 'https://<vault-name>.vault.azure.net (required unless MAIL_AUTH_MODE=federated-identity)',
  MAIL_AUTHORITY_HOST: 'an https URL such as https://login.microsoftonline.com',
  MAIL_SMTP_HOST: 'a host name such as smtp.office365.com',
  MAIL_SMTP_PORT: 'a TCP port, 587 for Exchange Online',
  MAIL_SMTP_SCOPE: 'https://outlook.office365.com/.default (or the sovereign cloud equivalent)',
  MAIL_TLS_CA_FILE: 'the path of a PEM file holding the extra CA certificate to trust',
  MAIL_UNSUBSCRIBE_BASE_URL:
    'the public https base URL of this app, without query or fragment, e.g. https://<app>.azurewebsites.net (http only for 127.0.0.1 or localhost)',
  MAIL_UNSUBSCRIBE_KEY_NAME:
    'the name of a Key Vault secret: 1 to 118 letters, digits and dashes (the name + "-previous" must fit 127)',
};

/** A positive number setting: whole (a count) or not (seconds, days), with its default when unset. */
function positive(name: string, fallback: number, kind: 'whole' | 'seconds' | 'days') {
  return z
    .string()
    .optional()
    .transform((value, ctx) => {
      if (value === undefined || value.trim() === '') return fallback;
      const n = Number(value);
      if (!(kind === 'whole' ? Number.isInteger(n) : Number.isFinite(n)) || n <= 0) {
        const what = kind === 'whole' ? 'a positive whole number' : `a positive number of ${kind}`;
        // The value is not repeated: a secret pasted into the wrong setting would end up in the logs.
        ctx.addIssue({ code: 'custom', message: `${name} must be ${what}` });
        return z.NEVER;
      }
      return n;
    });
}

const positiveInt = (name: string, fallback: number) => positive(name, fallback, 'whole');
const positiveNumber = (name: string, fallback: number) => positive(name, fallback, 'seconds');

const onOff = (name: string) =>
  z
    .string()
    .optional()
    .transform((value, ctx) => {
      const v = value?.trim().toLowerCase();
      if (v === undefined || v === '' || v === 'on' || v === 'true') return true;
      if (v === 'off' || v === 'false') return false;
      ctx.addIssue({ code: 'custom', message: `${name} must be "on" or "off"` });
      return z.NEVER;
    });

const optionalString = z
  .string()
  .optional()
  .transform((v) => (v === undefined || v.trim() === '' ? undefined : v.trim()));

const rawSchema = z.object({
  MAIL_SENDER: optionalString,
  MAIL_ALLOWED_FROM: optionalString,
  MAIL_AUTH_MODE: optionalString,
  MAIL_TENANT_ID: optionalString,
  MAIL_CLIENT_ID: optionalString,
  MAIL_KEY_VAULT_URL: optionalString,
  MAIL_CLIENT_SECRET_NAME: optionalString,
  MAIL_CLIENT_CERT_NAME: optionalString,
  MAIL_PASSWORD_SECRET_NAME: optionalString,
  MAIL_AUTHORITY_HOST: optionalString,
  MAIL_SMTP_HOST: optionalString,
  MAIL_SMTP_PORT: positiveInt('MAIL_SMTP_PORT', DEFAULT_SMTP_PORT),
  MAIL_SMTP_SCOPE: optionalString,
  MAIL_TLS_CA_FILE: optionalString,
  MAIL_RATE_PER_MINUTE: positiveInt('MAIL_RATE_PER_MINUTE', DEFAULT_RATE_PER_MINUTE),
  MAIL_MAX_CONNECTIONS: positiveInt('MAIL_MAX_CONNECTIONS', DEFAULT_MAX_CONNECTIONS),
  MAIL_DAILY_RECIPIENT_LIMIT: positiveInt('MAIL_DAILY_RECIPIENT_LIMIT', DEFAULT_DAILY_RECIPIENT_LIMIT),
  MAIL_MAX_RECIPIENTS: positiveInt('MAIL_MAX_RECIPIENTS', DEFAULT_MAX_RECIPIENTS),
  MAIL_MAX_MESSAGE_BYTES: positiveInt('MAIL_MAX_MESSAGE_BYTES', DEFAULT_MAX_MESSAGE_BYTES),
  MAIL_PACING: onOff('MAIL_PACING'),
  MAIL_SEND_LEASE_SECONDS: positiveNumber('MAIL_SEND_LEASE_SECONDS', DEFAULT_SEND_LEASE_SECONDS),
  MAIL_RETRY_BACKOFF_SECONDS: positiveNumber('MAIL_RETRY_BACKOFF_SECONDS', DEFAULT_RETRY_BACKOFF_SECONDS),
  MAIL_RATE_WINDOW_SECONDS: positiveNumber('MAIL_RATE_WINDOW_SECONDS', DEFAULT_RATE_WINDOW_SECONDS),
  MAIL_DAILY_WINDOW_SECONDS: positiveNumber('MAIL_DAILY_WINDOW_SECONDS', DEFAULT_DAILY_WINDOW_SECONDS),
  MAIL_RETENTION_DAYS: positive('MAIL_RETENTION_DAYS', DEFAULT_RETENTION_DAYS, 'days'),
  MAIL_UNSUBSCRIBE_BASE_URL: optionalString,
  MAIL_UNSUBSCRIBE_KEY_NAME: optionalString,
  MAIL_DIGEST_SCHEDULE: z
    .string()
    .optional()
    .transform((value, ctx) => {
      const schedule = value === undefined || value.trim() === '' ? DEFAULT_DIGEST_SCHEDULE : value.trim();
      if (!isDigestSchedule(schedule)) {
        ctx.addIssue({
          code: 'custom',
          message: `MAIL_DIGEST_SCHEDULE must be an NCRONTAB expression of six fields, seconds first (default "${DEFAULT_DIGEST_SCHEDULE}": 07:00 every day)`,
        });
        return z.NEVER;
      }
      return schedule;
    }),
  MAIL_DIGEST_MAX_ITEMS: positiveInt('MAIL_DIGEST_MAX_ITEMS', DEFAULT_DIGEST_MAX_ITEMS),
  AzureWebJobsStorage: optionalString,
  APPLICATIONINSIGHTS_CONNECTION_STRING: optionalString,
  APPLICATIONINSIGHTS_AUTHENTICATION_STRING: optionalString,
  AZURE_CLIENT_ID: optionalString,
});

/** Every setting loadConfig reads (AzureWebJobsStorage's identity-based forms are read by src/storage/storageClients.ts). */
export const SETTING_NAMES = Object.keys(rawSchema.shape) as ReadonlyArray<keyof typeof rawSchema.shape>;

/** OAuth settings shared by the three OAuth modes. */
interface OAuthSettings {
  tenantId: string;
  clientId: string;
  authorityHost: string;
  scope: string;
}

/** Credentials by mode: a discriminated union, so a mode without its settings does not type-check. */
export type AuthConfig =
  | ({ mode: 'client-secret'; keyVaultUrl: string; clientSecretName: string } & OAuthSettings)
  | ({ mode: 'client-certificate'; keyVaultUrl: string; clientCertName: string } & OAuthSettings)
  | ({ mode: 'federated-identity'; managedIdentityClientId?: string | undefined } & OAuthSettings)
  | { mode: 'basic'; keyVaultUrl: string; passwordSecretName: string };

export interface Config {
  sender: string;
  /** Lower-cased addresses and '@domain' entries; always includes the sender. */
  allowedFrom: string[];
  auth: AuthConfig;
  /** The authority host, also used by DefaultAzureCredential for Key Vault. */
  authorityHost: string;
  smtp: { host: string; port: number };
  /** PEM of MAIL_TLS_CA_FILE, trusted in addition to the system roots. */
  extraCaPem?: string | undefined;
  extraCaFile?: string | undefined;
  limits: {
    ratePerMinute: number;
    maxConnections: number;
    dailyRecipientLimit: number;
    maxRecipients: number;
    maxMessageBytes: number;
    /** MAIL_PACING: enforce the limits across instances through shared storage (off only for benchmarks). */
    pacing: boolean;
    /** The window ratePerMinute counts in (60 s unless scaled down by MAIL_RATE_WINDOW_SECONDS). */
    rateWindowMs: number;
    /** The rolling window dailyRecipientLimit counts in (24 h unless scaled down by MAIL_DAILY_WINDOW_SECONDS). */
    dailyWindowMs: number;
  };
  /** MAIL_SEND_LEASE_SECONDS: a crashed worker's message is taken over after this long. */
  sendLeaseMs: number;
  /** MAIL_RETRY_BACKOFF_SECONDS: the wait after a first transient failure, doubling per attempt. */
  retryBackoffSeconds: number;
  /** MAIL_RETENTION_DAYS: records, keys, payloads and batches are deleted this long after their final state. */
  retentionMs: number;
  /** Scheduled digests: MAIL_DIGEST_SCHEDULE (NCRONTAB, six fields) and MAIL_DIGEST_MAX_ITEMS (items shown per digest). */
  digests: { schedule: string; maxItems: number };
  storageConnection?: string | undefined;
  appInsightsConnectionString?: string | undefined;
  /** APPLICATIONINSIGHTS_AUTHENTICATION_STRING: send telemetry with a managed identity token (local auth off). */
  appInsightsAuthenticationString?: string | undefined;
  managedIdentityClientId?: string | undefined;
  /** MAIL_KEY_VAULT_URL (without a trailing slash), whatever the auth mode; undefined when unset. */
  keyVaultUrl?: string | undefined;
  /**
   * List-Unsubscribe links of bulk mail: `baseUrl` (MAIL_UNSUBSCRIBE_BASE_URL, no trailing slash) is undefined when
   * unset, and then bulk mail is refused (UNSUBSCRIBE_NOT_CONFIGURED); `keyName` names the signing key in Key Vault.
   */
  unsubscribe: { baseUrl?: string | undefined; keyName: string };
}

export const BASIC_AUTH_DEPRECATION =
  'MAIL_AUTH_MODE=basic is deprecated: Microsoft turns Basic SMTP AUTH off by default at the end of December 2026. Move to client-secret, client-certificate or federated-identity.';

/** Returns true when `from` is the sender or allowed by MAIL_ALLOWED_FROM (address or @domain). */
export function isAllowedFrom(from: string, allowedFrom: readonly string[]): boolean {
  const address = from.toLowerCase();
  const domain = address.slice(address.lastIndexOf('@'));
  return allowedFrom.includes(address) || allowedFrom.includes(domain);
}

/** A settings error lists every problem at once, each naming the setting and its fix. */
export class ConfigError extends MailError {
  constructor(readonly problems: string[]) {
    super('CONFIG_INVALID', `Invalid settings:\n  - ${problems.join('\n  - ')}`);
  }
}

function isMicrosoftAuthority(host: string): boolean {
  try {
    return MICROSOFT_AUTHORITY_HOSTS.has(new URL(host).hostname);
  } catch {
    return false;
  }
}

/** True when MSAL needs knownAuthorities and @azure/identity needs disableInstanceDiscovery (sandbox, custom hosts). */
export function isCustomAuthority(config: Pick<Config, 'authorityHost'>): boolean {
  return !isMicrosoftAuthority(config.authorityHost);
}

/**
 * Parses settings from `env` (process.env, merged with local.settings.json Values by {@link readSettings}).
 * Throws ConfigError naming every missing or invalid setting.
 */
export function loadConfig(env: Record<string, string | undefined>): Config {
  const parsed = rawSchema.safeParse(env);
  const problems: string[] = [];
  if (!parsed.success) {
    for (const issue of parsed.error.issues) {
      // Our own rules word their message; anything else (a non-string value) is named, never quoted.
      problems.push(issue.code === 'custom' ? issue.message : `${issue.path.join('.')} is invalid: it must be text`);
    }
    throw new ConfigError(problems);
  }
  const s = parsed.data;
  const required = (name: keyof typeof s, why = '') => {
    if (s[name] === undefined) problems.push(`${name} is required${why}: ${FIXES[name] ?? 'set it'}`);
  };
  // Names the setting and the rule, never the value: a secret pasted into the wrong setting (or a connection string
  // in place of a URL) must not reach the logs, the CLI's output or an HTTP answer.
  const invalid = (name: string, which = '') =>
    problems.push(`${name} is invalid${which}: ${FIXES[name] ?? 'check the value'}`);

  required('MAIL_SENDER');
  const sender = s.MAIL_SENDER?.toLowerCase() ?? '';
  if (s.MAIL_SENDER && !isEmail(s.MAIL_SENDER)) invalid('MAIL_SENDER');

  const allowedFrom = new Set<string>(sender ? [sender] : []);
  const entries = (s.MAIL_ALLOWED_FROM ?? '').split(',').map((e) => e.trim().toLowerCase());
  entries.forEach((entry, index) => {
    if (!entry) return;
    if (entry.startsWith('@') ? isDomain(entry.slice(1)) : isEmail(entry)) allowedFrom.add(entry);
    // The entry's position finds it without quoting it.
    else invalid('MAIL_ALLOWED_FROM', ` (entry ${index + 1} of ${entries.length})`);
  });

  const mode = (s.MAIL_AUTH_MODE ?? 'client-secret') as AuthMode;
  if (!AUTH_MODES.includes(mode)) invalid('MAIL_AUTH_MODE');

  const authorityHost = trimTrailingSlashes(s.MAIL_AUTHORITY_HOST ?? DEFAULT_AUTHORITY_HOST);
  if (!matches(/^https:\/\/[^/\s]+$/, authorityHost)) invalid('MAIL_AUTHORITY_HOST');

  const scope = s.MAIL_SMTP_SCOPE ?? DEFAULT_SMTP_SCOPE;
  // `\S+` then a literal suffix: the only backtracking is \S+ giving back one character at a time (linear).
  if (!matches(/^https:\/\/\S+\/\.default$/, scope)) invalid('MAIL_SMTP_SCOPE');

  const oauth = mode !== 'basic';
  if (oauth) {
    required('MAIL_TENANT_ID', ` for MAIL_AUTH_MODE=${mode}`);
    required('MAIL_CLIENT_ID', ` for MAIL_AUTH_MODE=${mode}`);
    if (s.MAIL_TENANT_ID && !(matches(GUID, s.MAIL_TENANT_ID) || isDomain(s.MAIL_TENANT_ID))) invalid('MAIL_TENANT_ID');
    if (s.MAIL_CLIENT_ID && !matches(GUID, s.MAIL_CLIENT_ID)) invalid('MAIL_CLIENT_ID');
  }
  if (mode !== 'federated-identity') required('MAIL_KEY_VAULT_URL', ` for MAIL_AUTH_MODE=${mode}`);
  if (s.MAIL_KEY_VAULT_URL && !matches(/^https:\/\/[^/\s]+\/?$/, s.MAIL_KEY_VAULT_URL)) {
    invalid('MAIL_KEY_VAULT_URL');
  }

  const unsubscribeBase = s.MAIL_UNSUBSCRIBE_BASE_URL ? trimTrailingSlashes(s.MAIL_UNSUBSCRIBE_BASE_URL) : undefined;
  if (unsubscribeBase !== undefined) {
    if (!isPublicBaseUrl(unsubscribeBase)) invalid('MAIL_UNSUBSCRIBE_BASE_URL');
    if (!s.MAIL_KEY_VAULT_URL) {
      problems.push(
        'MAIL_KEY_VAULT_URL is required when MAIL_UNSUBSCRIBE_BASE_URL is set: the key that signs unsubscribe links is read from Key Vault',
      );
    }
  }
  const unsubscribeKeyName = s.MAIL_UNSUBSCRIBE_KEY_NAME ?? DEFAULT_UNSUBSCRIBE_KEY_NAME;
  if (!matches(UNSUBSCRIBE_KEY_NAME, unsubscribeKeyName)) invalid('MAIL_UNSUBSCRIBE_KEY_NAME');

  const smtpHost = s.MAIL_SMTP_HOST ?? DEFAULT_SMTP_HOST;
  if (!matches(DOMAIN_CHARS, smtpHost)) invalid('MAIL_SMTP_HOST');
  if (s.MAIL_SMTP_PORT > 65_535) invalid('MAIL_SMTP_PORT');

  let extraCaPem: string | undefined;
  if (s.MAIL_TLS_CA_FILE) {
    const file = path.resolve(s.MAIL_TLS_CA_FILE);
    // A directory (or anything not a file) would make readFileSync throw EISDIR: it is as missing as no file.
    if (!existsSync(file) || !statSync(file).isFile())
      problems.push(`MAIL_TLS_CA_FILE points at a file that does not exist (${file}): ${FIXES.MAIL_TLS_CA_FILE}`);
    else {
      extraCaPem = readFileSync(file, 'utf8');
      if (!extraCaPem.includes('-----BEGIN CERTIFICATE-----')) {
        problems.push(`MAIL_TLS_CA_FILE (${file}) holds no PEM certificate: ${FIXES.MAIL_TLS_CA_FILE}`);
      }
    }
  }
  try {
    parseAuthenticationString(s.APPLICATIONINSIGHTS_AUTHENTICATION_STRING);
  } catch (error) {
    problems.push((error as Error).message);
  }
  if (s.MAIL_MAX_RECIPIENTS > 1000) {
    problems.push('MAIL_MAX_RECIPIENTS must be at most 1000: Exchange Online accepts 1 to 1000 recipients per message');
  }
  if (problems.length > 0) throw new ConfigError(problems);

  const vault = trimTrailingSlashes(s.MAIL_KEY_VAULT_URL ?? '');
  const oauthSettings: OAuthSettings = {
    tenantId: s.MAIL_TENANT_ID ?? '',
    clientId: s.MAIL_CLIENT_ID ?? '',
    authorityHost,
    scope,
  };
  const auth: AuthConfig =
    mode === 'client-secret'
      ? {
          mode,
          keyVaultUrl: vault,
          clientSecretName: s.MAIL_CLIENT_SECRET_NAME ?? 'mail-client-secret',
          ...oauthSettings,
        }
      : mode === 'client-certificate'
        ? { mode, keyVaultUrl: vault, clientCertName: s.MAIL_CLIENT_CERT_NAME ?? 'mail-client-cert', ...oauthSettings }
        : mode === 'federated-identity'
          ? { mode, managedIdentityClientId: s.AZURE_CLIENT_ID, ...oauthSettings }
          : { mode, keyVaultUrl: vault, passwordSecretName: s.MAIL_PASSWORD_SECRET_NAME ?? 'mail-password' };

  return {
    sender,
    allowedFrom: [...allowedFrom],
    auth,
    authorityHost,
    smtp: { host: smtpHost, port: s.MAIL_SMTP_PORT },
    extraCaPem,
    extraCaFile: s.MAIL_TLS_CA_FILE,
    limits: {
      ratePerMinute: s.MAIL_RATE_PER_MINUTE,
      maxConnections: s.MAIL_MAX_CONNECTIONS,
      dailyRecipientLimit: s.MAIL_DAILY_RECIPIENT_LIMIT,
      maxRecipients: s.MAIL_MAX_RECIPIENTS,
      maxMessageBytes: s.MAIL_MAX_MESSAGE_BYTES,
      pacing: s.MAIL_PACING,
      rateWindowMs: Math.round(s.MAIL_RATE_WINDOW_SECONDS * 1000),
      dailyWindowMs: Math.round(s.MAIL_DAILY_WINDOW_SECONDS * 1000),
    },
    sendLeaseMs: Math.round(s.MAIL_SEND_LEASE_SECONDS * 1000),
    retryBackoffSeconds: s.MAIL_RETRY_BACKOFF_SECONDS,
    retentionMs: Math.round(s.MAIL_RETENTION_DAYS * 24 * 60 * 60 * 1000),
    digests: { schedule: s.MAIL_DIGEST_SCHEDULE, maxItems: s.MAIL_DIGEST_MAX_ITEMS },
    storageConnection: s.AzureWebJobsStorage,
    appInsightsConnectionString: s.APPLICATIONINSIGHTS_CONNECTION_STRING,
    appInsightsAuthenticationString: s.APPLICATIONINSIGHTS_AUTHENTICATION_STRING,
    managedIdentityClientId: s.AZURE_CLIENT_ID,
    keyVaultUrl: vault || undefined,
    unsubscribe: { baseUrl: unsubscribeBase, keyName: unsubscribeKeyName },
  };
}

/**
 * True for an absolute https URL without credentials, query or fragment (http only for a loopback host: the dev
 * host), at most MAX_SETTING_CHARS long: the base the unsubscribe links start with.
 */
export function isPublicBaseUrl(value: string): boolean {
  if (value.length > MAX_SETTING_CHARS || /[\s"<>]/.test(value)) return false;
  let url: URL;
  try {
    url = new URL(value);
  } catch {
    return false;
  }
  const loopback = url.hostname === '127.0.0.1' || url.hostname === 'localhost' || url.hostname === '[::1]';
  if (url.protocol !== 'https:' && !(url.protocol === 'http:' && loopback)) return false;
  return !url.username && !url.password && !url.search && !url.hash && !value.includes('?') && !value.includes('#');
}

/** Set by App Service on every instance in Azure: the app runs on the platform, not on a developer's machine. */
export const AZURE_INSTANCE_SETTING = 'WEBSITE_INSTANCE_ID';

/** Where in `text` a JSON.parse failure is, as "line L, column C", from the position V8 reports (if it does). */
function jsonErrorPosition(error: unknown, text: string): string {
  const position = /position (\d+)/.exec(error instanceof Error ? error.message : '')?.[1];
  if (position === undefined) return text.trim() === '' ? 'the file is empty' : 'it ends too early';
  const before = text.slice(0, Number(position));
  const line = before.split('\n').length;
  return `at line ${line}, column ${Number(position) - before.lastIndexOf('\n')}`;
}

/**
 * The settings a local run sees, as `func start` builds them: local.settings.json `Values` first,
 * then the process environment on top. A malformed local.settings.json is a ConfigError.
 * In Azure (`WEBSITE_INSTANCE_ID` set) the file is never read: app settings are the only source there, and a
 * local.settings.json that slipped into a deployment must not change (or break) the app.
 */
export function readSettings(
  env: Record<string, string | undefined> = process.env,
  file = path.resolve('local.settings.json'),
): Record<string, string | undefined> {
  if (env[AZURE_INSTANCE_SETTING]?.trim()) return { ...env };
  if (!existsSync(file)) return { ...env };
  const text = readFileSync(file, 'utf8');
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (error) {
    // JSON.parse's message quotes the text around the error, which can be a secret among the Values.
    throw new ConfigError([`${file} is not valid JSON (${jsonErrorPosition(error, text)}): fix or delete it`]);
  }
  const isObject = (v: unknown): v is Record<string, unknown> =>
    v !== null && typeof v === 'object' && !Array.isArray(v);
  const values = isObject(json) ? (json.Values ?? {}) : undefined;
  if (!isObject(values)) {
    throw new ConfigError([`${file} must hold a JSON object with the settings in "Values": fix or delete it`]);
  }
  const merged: Record<string, string | undefined> = {};
  for (const [key, value] of Object.entries(values)) {
    if (typeof value === 'string' || typeof value === 'number' || typeof value === 'boolean')
      merged[key] = String(value);
  }
  return { ...merged, ...env };
}

/**
 * Copies settings into process.env where unset, as `func start` does with local.settings.json, so that the
 * Azure SDK's own lookups (AZURE_CLIENT_ID, IDENTITY_ENDPOINT, …) see them.
 */
export function exportSettings(settings: Record<string, string | undefined>): void {
  for (const [key, value] of Object.entries(settings)) {
    if (value !== undefined && process.env[key] === undefined) process.env[key] = value;
  }
}
