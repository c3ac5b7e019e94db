/**
 * Reads the claims the doctor reports from an access token's payload, without verifying it (Exchange does that):
 * `roles`, `aud`, `tid`, `appid`, `oid` and nothing else. The token is bounded before it is decoded.
 */

/** A token longer than this is not decoded (Entra access tokens are a few kilobytes). */
export const MAX_TOKEN_CHARS = 16_384;

/** The claims of an app-only token the doctor prints: none is a secret. */
export interface TokenClaims {
  roles: string[];
  aud: string | undefined;
  tid: string | undefined;
  appid: string | undefined;
  oid: string | undefined;
}

/** At most this many roles, each at most this long, are read. */
const MAX_ROLES = 64;
const MAX_CLAIM_CHARS = 256;

const BASE64URL = /^[A-Za-z0-9_-]*$/;

function claimString(value: unknown): string | undefined {
  return typeof value === 'string' && value.length <= MAX_CLAIM_CHARS ? value : undefined;
}

/** The payload's claims, or undefined when `token` is not a JWT (three base64url parts with a JSON object in the middle). */
export function readTokenClaims(token: string): TokenClaims | undefined {
  if (typeof token !== 'string' || token.length > MAX_TOKEN_CHARS) return undefined;
  const parts = token.split('.');
  if (parts.length !== 3) return undefined;
  const payload = parts[1] as string;
  if (payload === '' || !BASE64URL.test(payload)) return undefined;
  let json: unknown;
  try {
    json = JSON.parse(Buffer.from(payload, 'base64url').toString('utf8'));
  } catch {
    return undefined;
  }
  if (json === null || typeof json !== 'object' || Array.isArray(json)) return undefined;
  const claims = json as Record<string, unknown>;
  const roles = Array.isArray(claims.roles)
    ? claims.roles
        .slice(0, MAX_ROLES)
        .map(claimString)
        .filter((r): r is string => r !== undefined)
    : [];
  return {
    roles,
    aud: claimString(claims.aud),
    tid: claimString(claims.tid),
    appid: claimString(claims.appid),
    oid: claimString(claims.oid),
  };
}
