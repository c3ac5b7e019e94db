/** Scrubs secrets and tokens out of any text before it is logged, stored or printed. */

const REDACTED = '[redacted]';
/** A JWT: three base64url segments, the first two starting with '{"' encoded. */
const JWT = /eyJ[A-Za-z0-9_-]{5,}\.eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*/g;
/** XOAUTH2 initial responses and bearer headers. */
const BEARER = /(Bearer\s+|auth=Bearer\s+|AUTH\s+(?:XOAUTH2|PLAIN|LOGIN)\s+)[A-Za-z0-9+/=._~-]{8,}/gi;
/** Secrets shorter than this are not tracked: replacing them would mangle ordinary text. */
const MIN_SECRET_CHARS = 8;

/** Knows every secret value this process has read, and removes them (and anything token-shaped) from text. */
export class Redactor {
  private readonly secrets = new Set<string>();

  /** Registers a value read from Key Vault, a token, or a password. */
  add(value: string | undefined): void {
    if (value && value.length >= MIN_SECRET_CHARS) this.secrets.add(value);
  }

  redact(text: string): string {
    let out = text.replace(JWT, REDACTED).replace(BEARER, `$1${REDACTED}`);
    for (const secret of this.secrets) {
      if (out.includes(secret)) out = out.split(secret).join(REDACTED);
      // The base64 form shows up in SMTP AUTH payloads.
      const b64 = Buffer.from(secret).toString('base64');
      if (out.includes(b64)) out = out.split(b64).join(REDACTED);
    }
    return out;
  }
}

/** The process-wide redactor; tests create their own. */
export const defaultRedactor = new Redactor();
