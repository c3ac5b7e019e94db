/** The sandbox's signing key: issues and verifies RS256 JWTs the way Entra ID access tokens look. */
import { generateKeyPairSync, randomUUID, type KeyObject } from 'node:crypto';
import { SignJWT, jwtVerify, exportJWK, errors as joseErrors, type JWTPayload, type JWK } from 'jose';

/** Claims of an app-only access token, as Entra issues them. */
export interface AccessTokenClaims extends JWTPayload {
  aud: string;
  tid: string;
  appid: string;
  oid: string;
  roles?: string[];
  idtyp?: string;
}

/** Why a token was refused, in terms a server would log. */
export type TokenProblem = 'malformed' | 'signature' | 'expired' | 'audience' | 'issuer';

export type TokenCheck = { ok: true; claims: AccessTokenClaims } | { ok: false; problem: TokenProblem; detail: string };

/** A token the issuer signed, kept so that tests can check it never leaks; see {@link TokenIssuer.issued}. */
export interface IssuedToken {
  token: string;
  aud: string;
  /** The `oid` it was issued to (the app's service principal or the managed identity). */
  oid: string;
  issuedAt: Date;
}

/** Holds one RS256 key pair; every sandbox service trusts tokens it signed. */
export class TokenIssuer {
  readonly kid = randomUUID();
  /**
   * Every token this issuer signed, oldest first. Test-only knowledge: a real token service never keeps them, but the
   * secret scans need each one as a needle (a leaked log line, status record or SMTP command would carry it).
   */
  readonly issued: IssuedToken[] = [];
  private readonly privateKey: KeyObject;
  private readonly publicKey: KeyObject;
  /** Tokens whose `jti` is listed here are refused as if the signature were bad (revocation). */
  private readonly revoked = new Set<string>();

  constructor(readonly issuerUrl: string) {
    const pair = generateKeyPairSync('rsa', { modulusLength: 2048 });
    this.privateKey = pair.privateKey;
    this.publicKey = pair.publicKey;
  }

  /** Signs `claims` for `lifetimeSeconds`, adding iss, iat, nbf, exp and jti. */
  async sign(claims: Omit<AccessTokenClaims, 'iss' | 'iat' | 'exp' | 'nbf'>, lifetimeSeconds: number): Promise<string> {
    const now = Math.floor(Date.now() / 1000);
    const token = await new SignJWT({ ...claims })
      .setProtectedHeader({ alg: 'RS256', typ: 'JWT', kid: this.kid })
      .setIssuer(this.issuerUrl)
      .setIssuedAt(now)
      .setNotBefore(now - 5)
      .setExpirationTime(now + lifetimeSeconds)
      .setJti(randomUUID())
      .sign(this.privateKey);
    this.issued.push({ token, aud: String(claims.aud), oid: String(claims.oid), issuedAt: new Date(now * 1000) });
    return token;
  }

  /** Verifies signature, expiry, issuer and audience. */
  async verify(token: string, audiences: string[]): Promise<TokenCheck> {
    try {
      const { payload } = await jwtVerify(token, this.publicKey, {
        issuer: this.issuerUrl,
        audience: audiences,
        algorithms: ['RS256'],
        clockTolerance: 0,
      });
      if (payload.jti && this.revoked.has(payload.jti)) {
        return { ok: false, problem: 'signature', detail: 'token revoked' };
      }
      return { ok: true, claims: payload as AccessTokenClaims };
    } catch (error) {
      if (error instanceof joseErrors.JWTExpired) return { ok: false, problem: 'expired', detail: error.message };
      if (error instanceof joseErrors.JWTClaimValidationFailed) {
        const problem = error.claim === 'aud' ? 'audience' : error.claim === 'iss' ? 'issuer' : 'malformed';
        return { ok: false, problem, detail: error.message };
      }
      if (error instanceof joseErrors.JWSSignatureVerificationFailed) {
        return { ok: false, problem: 'signature', detail: error.message };
      }
      return { ok: false, problem: 'malformed', detail: error instanceof Error ? error.message : String(error) };
    }
  }

  /** Revokes every token with this `jti` (see {@link TokenIssuer.verify}). */
  revoke(jti: string): void {
    this.revoked.add(jti);
  }

  /** The public key as a JWKS document, as served at the OIDC `jwks_uri`. */
  async jwks(): Promise<{ keys: JWK[] }> {
    const jwk = await exportJWK(this.publicKey);
    return { keys: [{ ...jwk, kid: this.kid, use: 'sig', alg: 'RS256' }] };
  }
}
