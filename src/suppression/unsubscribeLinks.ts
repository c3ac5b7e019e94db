/**
 * The List-Unsubscribe links of bulk mail (RFC 2369, one-click per RFC 8058): `unsubscribeHeaders({ recipient, list })`
 * gives the two headers every bulk message carries, signed with the key read from Key Vault
 * (MAIL_UNSUBSCRIBE_KEY_NAME), and `verify` checks a token that comes back. Any source of bulk mail (notification
 * batches today) calls the outbox with a list, and the outbox sets these headers; callers cannot give them.
 */
import { MailError } from '../errors';
import { SECRET_CACHE_TTL_MS } from '../timeouts';
import type { Config } from '../config';
import type { SecretSource } from '../sender/keyVaultSecrets';
import {
  invalidToken,
  signUnsubscribeToken,
  tokenShapeProblem,
  TOKEN_LIFETIME_MS,
  verifyUnsubscribeToken,
  type UnsubscribeClaim,
} from './unsubscribeToken';

/** The path of the unsubscribe endpoint under MAIL_UNSUBSCRIBE_BASE_URL. */
export const UNSUBSCRIBE_PATH = '/api/unsubscribe';
/** A shorter key is refused: HMAC-SHA256 wants at least 256 bits. */
export const MIN_KEY_CHARS = 32;
/** The secret holding the key a rotation replaced (`<MAIL_UNSUBSCRIBE_KEY_NAME>-previous`): its links stay valid. */
export const PREVIOUS_KEY_SUFFIX = '-previous';

/** The two headers of a bulk message. */
export interface UnsubscribeHeaders {
  'List-Unsubscribe': string;
  'List-Unsubscribe-Post': 'List-Unsubscribe=One-Click';
}

/** The headers for a signed token: the https link first (the one RFC 8058 clients POST to), then the mailto. */
export function buildUnsubscribeHeaders(options: {
  baseUrl: string;
  mailbox: string;
  token: string;
}): UnsubscribeHeaders {
  const mailto = encodeURIComponent(options.mailbox).replace(/%40/g, '@');
  // Every part is validated already (the base URL, the mailbox, a base64url token); a line break would still start a
  // header of its own, so it is refused here too rather than trusted.
  if (/[\r\n]/.test(options.baseUrl + options.token)) throw new Error('A header value must not contain CR or LF');
  return {
    'List-Unsubscribe': `<${unsubscribeUrl(options.baseUrl, options.token)}>, <mailto:${mailto}?subject=unsubscribe%20${options.token}>`,
    'List-Unsubscribe-Post': 'List-Unsubscribe=One-Click',
  };
}

/** The one-click link of `token`. Tokens are base64url and a dot: nothing to escape. */
export function unsubscribeUrl(baseUrl: string, token: string): string {
  return `${baseUrl}${UNSUBSCRIBE_PATH}?t=${token}`;
}

export interface UnsubscribeLinksDeps {
  config: Pick<Config, 'sender' | 'unsubscribe'>;
  /** The app's Key Vault reader; absent when no MAIL_KEY_VAULT_URL is set. */
  secrets?: SecretSource | undefined;
  now?: () => number;
}

/** Signs and verifies unsubscribe tokens with the key in Key Vault. */
export class UnsubscribeLinks {
  private readonly now: () => number;
  /** The previous key, or its absence, for SECRET_CACHE_TTL_MS: a missing secret is not asked for on every request. */
  private previous: { key: Promise<Buffer | undefined>; expiresAt: number } | undefined;

  constructor(private readonly deps: UnsubscribeLinksDeps) {
    this.now = deps.now ?? Date.now;
  }

  /** True when bulk mail can carry links: a base URL and a vault to read the key from. */
  get configured(): boolean {
    return this.deps.config.unsubscribe.baseUrl !== undefined && this.deps.secrets !== undefined;
  }

  /** Throws UNSUBSCRIBE_NOT_CONFIGURED naming `field` when bulk mail cannot carry links. */
  assertConfigured(field = 'category'): void {
    if (this.configured) return;
    throw new MailError(
      'UNSUBSCRIBE_NOT_CONFIGURED',
      'Bulk mail needs MAIL_UNSUBSCRIBE_BASE_URL and MAIL_KEY_VAULT_URL for its List-Unsubscribe links; neither is sent without them',
      { details: [{ path: field, message: 'bulk mail is refused until MAIL_UNSUBSCRIBE_BASE_URL is set' }] },
    );
  }

  /** The two headers for `recipient` of `list`, with a token valid for TOKEN_LIFETIME_MS. */
  async unsubscribeHeaders(options: { recipient: string; list: string }): Promise<UnsubscribeHeaders> {
    this.assertConfigured();
    const token = signUnsubscribeToken(
      { address: options.recipient, list: options.list, expiresAt: this.now() + TOKEN_LIFETIME_MS },
      await this.key(),
    );
    return buildUnsubscribeHeaders({
      baseUrl: this.deps.config.unsubscribe.baseUrl as string,
      mailbox: this.deps.config.sender,
      token,
    });
  }

  /** The claim of `token`, or MailError UNSUBSCRIBE_TOKEN_INVALID naming `t` (bounded before anything else). */
  async verify(token: unknown): Promise<UnsubscribeClaim> {
    if (!this.deps.secrets) {
      throw new MailError('UNSUBSCRIBE_NOT_CONFIGURED', 'Unsubscribe links cannot be checked: no MAIL_KEY_VAULT_URL', {
        details: [{ path: 't', message: 'this app issues no unsubscribe links' }],
      });
    }
    // The cheap checks first, so that a hostile token costs no Key Vault read.
    const problem = tokenShapeProblem(token);
    if (problem !== undefined) throw invalidToken(problem);
    const [current, previous] = await Promise.all([this.key(), this.previousKey()]);
    return verifyUnsubscribeToken(token, previous ? [current, previous] : [current], this.now());
  }

  private async key(name = this.deps.config.unsubscribe.keyName): Promise<Buffer> {
    const secrets = this.deps.secrets;
    if (!secrets) {
      throw new MailError('UNSUBSCRIBE_NOT_CONFIGURED', 'No MAIL_KEY_VAULT_URL to read the unsubscribe key from');
    }
    const { value } = await secrets.get(name);
    if (value.length < MIN_KEY_CHARS) {
      throw new MailError(
        'UNSUBSCRIBE_NOT_CONFIGURED',
        `The unsubscribe key (Key Vault secret ${name}) is shorter than ${MIN_KEY_CHARS} characters`,
        { hint: 'Set the secret to at least 32 random bytes, base64-encoded: openssl rand -base64 48' },
      );
    }
    return Buffer.from(value, 'utf8');
  }

  /** The key the last rotation replaced, if its secret exists; the answer is kept SECRET_CACHE_TTL_MS either way. */
  private previousKey(): Promise<Buffer | undefined> {
    const at = this.now();
    if (this.previous && this.previous.expiresAt > at) return this.previous.key;
    const key = this.key(`${this.deps.config.unsubscribe.keyName}${PREVIOUS_KEY_SUFFIX}`).catch((error: unknown) => {
      if (error instanceof MailError && error.code === 'KEY_VAULT_SECRET_NOT_FOUND') return undefined;
      throw error;
    });
    const entry = { key, expiresAt: at + SECRET_CACHE_TTL_MS };
    this.previous = entry;
    // A failed read (the vault down) is not kept: the next request asks again.
    key.catch(() => {
      if (this.previous === entry) this.previous = undefined;
    });
    return key;
  }
}
