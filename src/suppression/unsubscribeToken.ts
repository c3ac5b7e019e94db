/**
 * Unsubscribe tokens: `<payload>.<mac>`, both base64url without padding. The payload is the UTF-8 text
 * `1\n<expiry, epoch seconds>\n<list>\n<address>`; the MAC is the first 16 bytes of HMAC-SHA256 over the payload's
 * base64url text with the key from Key Vault. Verification bounds the length and the alphabet before it decodes
 * anything, compares the MAC in constant time (`timingSafeEqual`) before it parses the payload, and only then checks
 * the fields and the expiry.
 */
import { createHmac, timingSafeEqual } from 'node:crypto';
import { MailError } from '../errors';
import { isEmailAddress, MAX_ADDRESS_CHARS } from '../message';
import { LIST_ID } from './suppressionStore';

const VERSION = '1';
/** MAC bytes kept: 128 bits. */
const MAC_BYTES = 16;
const MAC_CHARS = Math.ceil((MAC_BYTES * 4) / 3);
/**
 * The longest token: an address of MAX_ADDRESS_CHARS characters (up to 4 UTF-8 bytes each), a list id of 64, the
 * expiry, base64url (4/3), and the MAC. Anything longer is refused before it is decoded.
 */
export const MAX_TOKEN_CHARS = 2048;
/** How long a link stays valid: a year, so that an old message can still be unsubscribed from. */
export const TOKEN_LIFETIME_MS = 365 * 24 * 60 * 60 * 1000;
/** base64url, one dot, base64url: single character classes, linear. */
const TOKEN_SHAPE = /^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$/;

/** What a valid token says: who unsubscribes from which list. */
export interface UnsubscribeClaim {
  /** Lower-cased. */
  address: string;
  list: string;
  /** Epoch milliseconds. */
  expiresAt: number;
}

function mac(key: Buffer, payload: string): Buffer {
  return createHmac('sha256', key).update(payload).digest().subarray(0, MAC_BYTES);
}

/** A token for `address` and `list`, valid until `expiresAt` (epoch ms), signed with `key`. */
export function signUnsubscribeToken(claim: UnsubscribeClaim, key: Buffer): string {
  const text = [VERSION, String(Math.floor(claim.expiresAt / 1000)), claim.list, claim.address.toLowerCase()].join(
    '\n',
  );
  const payload = Buffer.from(text, 'utf8').toString('base64url');
  return `${payload}.${mac(key, payload).toString('base64url')}`;
}

export function invalidToken(message: string): MailError {
  return new MailError('UNSUBSCRIBE_TOKEN_INVALID', `Invalid unsubscribe link: ${message}`, {
    details: [{ path: 't', message }],
  });
}

/**
 * Why `token` cannot be a token at all (missing, too long, wrong alphabet or shape), or undefined: the checks that
 * need no key, so that a malformed token costs no Key Vault read.
 */
export function tokenShapeProblem(token: unknown): string | undefined {
  if (typeof token !== 'string' || token.length === 0) return 'is required: the t of the unsubscribe link';
  if (token.length > MAX_TOKEN_CHARS) return `must be at most ${MAX_TOKEN_CHARS} characters`;
  if (!TOKEN_SHAPE.test(token)) return 'is not an unsubscribe token';
  if (token.length - token.indexOf('.') - 1 !== MAC_CHARS) return 'is not an unsubscribe token';
  return undefined;
}

/**
 * The claim of `token` if one of `keys` signed it (the current key, then the previous one during a rotation) and it
 * has not expired at `now`. Throws MailError UNSUBSCRIBE_TOKEN_INVALID naming `t` otherwise; the message never quotes
 * the token.
 */
export function verifyUnsubscribeToken(
  token: unknown,
  keys: Buffer | readonly Buffer[],
  now: number,
): UnsubscribeClaim {
  const shape = tokenShapeProblem(token);
  if (shape !== undefined || typeof token !== 'string') return fail(shape ?? 'is not an unsubscribe token');
  const dot = token.indexOf('.');
  const payload = token.slice(0, dot);
  const presented = Buffer.from(token.slice(dot + 1), 'ascii');
  // The MAC's text, not its decoded bytes: base64url's last character has bits a decoder ignores, so comparing bytes
  // would accept altered tokens. Both are MAC_CHARS ASCII characters (checked above). Every key is tried, so the time
  // taken does not tell which one matched.
  let signed = false;
  for (const key of Buffer.isBuffer(keys) ? [keys] : keys) {
    const expected = Buffer.from(mac(key, payload).toString('base64url'), 'ascii');
    if (presented.length === expected.length && timingSafeEqual(presented, expected)) signed = true;
  }
  if (!signed) return fail('was not issued by this app, or was altered');
  // Signed by us: what follows only guards against our own older formats.
  const parts = Buffer.from(payload, 'base64url').toString('utf8').split('\n');
  const [version, expiry, list, address] = parts;
  if (parts.length !== 4 || version !== VERSION || !expiry || !list || !address) return fail('has an unknown format');
  const expiresAt = Number(expiry) * 1000;
  if (!/^\d{1,12}$/.test(expiry) || !LIST_ID.test(list)) return fail('has an unknown format');
  if (address.length > MAX_ADDRESS_CHARS || !isEmailAddress(address)) return fail('has an unknown format');
  if (expiresAt <= now) return fail('has expired');
  return { address, list, expiresAt };

  function fail(message: string): never {
    throw invalidToken(message);
  }
}
