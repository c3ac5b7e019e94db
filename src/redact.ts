/** Scrubs secrets and tokens out of any text before it is logged, stored or printed. */

const REDACTED = '[redacted]';
/** A JWT: three base64url segments, the first two starting with '{"' encoded. */
const JWT = /eyJ[A-Za-z0-9_-]{5,}\.eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*/g;
/** XOAUTH2 initial responses and bearer headers. */
const BEARER = /(Bearer\s+|auth=Bearer\s+|AUTH\s+(?:XOAUTH2|PLAIN|LOGIN)\s+)[A-Za-z0-9+/=._~-]{8,}/gi;
/** Secrets shorter than this are not tracked: replacing them would mangle ordinary text. */
const MIN_SECRET_CHARS = 8;

/**
 * How many access tokens the redactor remembers. A token lives about an hour and MSAL renews it 5 minutes early, so
 * a process holds one or two valid ones per credential; older ones are expired and no longer written anywhere. The
 * bound keeps a long-lived process from growing by one entry per token request.
 */
export const MAX_TRACKED_TOKENS = 64;

/** App settings whose whole value is a secret given to the process (the platform's or a developer's). */
const SECRET_SETTINGS = ['IDENTITY_HEADER', 'MSI_SECRET', 'AZURE_CLIENT_SECRET'] as const;
/** Parts of a connection string (any setting) that are secrets: a storage account key or a SAS token. */
const CONNECTION_STRING_SECRETS = /(?:^|;)\s*(?:AccountKey|SharedAccessSignature)\s*=\s*([^;]+)/gi;

/**
 * Knows every secret value this process has read, and removes them (and anything token-shaped) from text.
 * Long-lived secrets (Key Vault values, the storage account key, IDENTITY_HEADER) are kept for the life of the
 * process; access tokens are kept for the {@link MAX_TRACKED_TOKENS} most recent only.
 */
export class Redactor {
  /** Never evicted: a rotated Key Vault secret's old version may still appear in an error or a log line. */
  private readonly secrets = new Set<string>();
  /** Insertion order is age: the first entry is the oldest. */
  private readonly tokens = new Set<string>();
  /** The base64 form of each tracked value (SMTP AUTH payloads carry it), computed once instead of per redact(). */
  private readonly base64 = new Map<string, string>();

  /** Registers a long-lived secret (a value read from Key Vault, a password, an account key); never evicted. */
  add(value: string | undefined): void {
    if (!value || value.length < MIN_SECRET_CHARS) return;
    this.tokens.delete(value);
    this.secrets.add(value);
    this.base64.set(value, Buffer.from(value).toString('base64'));
  }

  /** Registers a short-lived access token; only the {@link MAX_TRACKED_TOKENS} most recent are kept. */
  addToken(value: string | undefined): void {
    if (!value || value.length < MIN_SECRET_CHARS || this.secrets.has(value)) return;
    // Re-adding a token makes it the newest again (a cached token handed out once more).
    this.tokens.delete(value);
    this.tokens.add(value);
    this.base64.set(value, Buffer.from(value).toString('base64'));
    while (this.tokens.size > MAX_TRACKED_TOKENS) {
      const oldest = this.tokens.values().next().value as string;
      this.tokens.delete(oldest);
      this.base64.delete(oldest);
    }
  }

  /** How many long-lived secrets and tokens are tracked (the token count never exceeds MAX_TRACKED_TOKENS). */
  get size(): { secrets: number; tokens: number } {
    return { secrets: this.secrets.size, tokens: this.tokens.size };
  }

  /** `text` with every tracked value (and its base64 form), every JWT and every bearer credential replaced. */
  redact(text: string): string {
    let out = text.replace(JWT, REDACTED).replace(BEARER, `$1${REDACTED}`);
    for (const values of [this.secrets, this.tokens]) {
      for (const secret of values) {
        if (out.includes(secret)) out = out.split(secret).join(REDACTED);
        const b64 = this.base64.get(secret) as string;
        if (out.includes(b64)) out = out.split(b64).join(REDACTED);
      }
    }
    return out;
  }

  /**
   * A copy of a JSON-like value (an HTTP answer's body) with every string redacted. Strings are redacted one by one
   * rather than the serialised JSON, so a replacement can never break an escape sequence.
   */
  redactValue<T>(value: T): T {
    if (typeof value === 'string') return this.redact(value) as T;
    if (Array.isArray(value)) return value.map((item: unknown) => this.redactValue(item)) as T;
    if (value !== null && typeof value === 'object' && Object.getPrototypeOf(value) === Object.prototype) {
      return Object.fromEntries(
        Object.entries(value as Record<string, unknown>).map(([key, item]) => [key, this.redactValue(item)]),
      ) as T;
    }
    return value;
  }
}

/**
 * Registers the secrets found in app settings: IDENTITY_HEADER (and the older MSI_SECRET), AZURE_CLIENT_SECRET, and
 * the AccountKey / SharedAccessSignature of any connection string (AzureWebJobsStorage). Called where the settings
 * are read (the Functions runtime, the CLI), so that every log line and answer built afterwards is scrubbed of them.
 */
export function registerSecretSettings(redactor: Redactor, settings: Record<string, string | undefined>): void {
  for (const name of SECRET_SETTINGS) redactor.add(settings[name]?.trim());
  for (const value of Object.values(settings)) {
    if (!value || !/AccountKey|SharedAccessSignature/i.test(value)) continue;
    for (const match of value.matchAll(CONNECTION_STRING_SECRETS)) redactor.add(match[1]?.trim());
  }
}

/** The process-wide redactor; tests create their own. */
export const defaultRedactor = new Redactor();
