/**
 * Property tests of the doctor's readers of untrusted input with hostile strings: DNS TXT records (SPF, DMARC), the
 * access token's claims and the --dns/--domain arguments. Each answers (never throws) in linear time.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { canonicalJsonIterative } from '../../src/canonicalJson';
import { DoctorUsageError, parseDoctorArgs } from '../../src/doctor/command';
import { dnsServerProblem } from '../../src/doctor/dnsResolver';
import { joinTxtRecords, readDmarc, readSpf } from '../../src/doctor/dnsRecords';
import { readTokenClaims } from '../../src/doctor/jwtClaims';
import { hostileRun, hostileString, hostileValue } from '../support/hostile';

/** One-sided bound: a backtracking reader takes minutes on these inputs; a loaded machine must not fail a linear one. */
const LINEAR_BOUND_MS = 5_000;

const txtRecords = fc.array(fc.array(hostileString(20_000), { maxLength: 4 }), { maxLength: 6 });

describe('DNS record readers', () => {
  it('read any TXT records without throwing, in linear time', () => {
    fc.assert(
      fc.property(txtRecords, fc.constantFrom('', 'v=spf1 ', 'v=DMARC1; p=', 'v=DMARC1;'), (records, prefix) => {
        const started = performance.now();
        const joined = joinTxtRecords(records.map((chunks, i) => (i === 0 ? [prefix, ...chunks] : chunks)));
        const spf = readSpf(joined);
        const dmarc = readDmarc(joined);
        expect(['none', 'multiple', 'too-long', 'found']).toContain(spf.kind);
        expect(['none', 'multiple', 'too-long', 'invalid', 'found']).toContain(dmarc.kind);
        expect(performance.now() - started).toBeLessThan(LINEAR_BOUND_MS);
      }),
      { numRuns: 200 },
    );
  });
});

describe('JWT claim reader', () => {
  const tokenish = fc.oneof(
    hostileString(40_000),
    fc.tuple(hostileRun(20_000), hostileString(20_000), hostileRun(100)).map((parts) => parts.join('.')),
    hostileValue.map((v) => `h.${Buffer.from(canonicalJsonIterative(v)).toString('base64url')}.s`),
    fc
      .record({ roles: hostileValue, aud: hostileValue, tid: hostileValue, appid: hostileValue, oid: hostileValue })
      .map((v) => `h.${Buffer.from(canonicalJsonIterative(v)).toString('base64url')}.s`),
  );
  it('gives string claims or undefined for any input, in linear time', () => {
    fc.assert(
      fc.property(tokenish, (token) => {
        const started = performance.now();
        const claims = readTokenClaims(token);
        if (claims) {
          expect(claims.roles.every((r) => typeof r === 'string')).toBe(true);
          for (const key of ['aud', 'tid', 'appid', 'oid'] as const)
            expect(['string', 'undefined']).toContain(typeof claims[key]);
        }
        expect(performance.now() - started).toBeLessThan(LINEAR_BOUND_MS);
      }),
      { numRuns: 200 },
    );
  });
});

describe('doctor arguments', () => {
  it('accept or refuse any --dns and --domain value naming the flag', () => {
    fc.assert(
      fc.property(hostileString(10_000), fc.constantFrom('--dns', '--domain'), (value, flag) => {
        const started = performance.now();
        expect(typeof (dnsServerProblem(value) ?? '')).toBe('string');
        try {
          parseDoctorArgs([flag, value]);
        } catch (error) {
          expect(error).toBeInstanceOf(DoctorUsageError);
          expect([flag, '(args)']).toContain((error as DoctorUsageError).option);
        }
        expect(performance.now() - started).toBeLessThan(LINEAR_BOUND_MS);
      }),
      { numRuns: 200 },
    );
  });
});
