/**
 * The clock check: this machine's clock against the Date header of the authority host (Entra ID). Tokens are
 * accepted with about 5 minutes of skew; a larger one makes fresh tokens look expired or not yet valid.
 */
import https from 'node:https';
import type { Config } from '../../config';
import { trustedCas } from '../../sender/tlsTrust';
import type { CheckResult } from '../report';
import { result, type DoctorInputs } from './context';

/** Above this the check warns. */
export const CLOCK_WARN_MS = 60_000;
/** Above this it fails: Entra ID and Exchange tolerate about 5 minutes. */
export const CLOCK_FAIL_MS = 5 * 60_000;

/** The verdict on a measured skew (positive: this machine is ahead). Pure, for the unit tests. */
export function judgeSkew(skewMs: number): 'pass' | 'warn' | 'fail' {
  const abs = Math.abs(skewMs);
  return abs > CLOCK_FAIL_MS ? 'fail' : abs > CLOCK_WARN_MS ? 'warn' : 'pass';
}

/** The Date header of any answer of `url` (a 404 is as good as a 200), verified TLS with the sender's CAs. */
function serverDate(url: string, extraCaPem: string | undefined, timeoutMs: number): Promise<number> {
  return new Promise((resolve, reject) => {
    const ca = trustedCas(extraCaPem);
    const request = https.request(
      url,
      { method: 'HEAD', agent: false, rejectUnauthorized: true, ...(ca ? { ca } : {}), timeout: timeoutMs },
      (response) => {
        response.resume();
        const header = response.headers.date;
        const time = header ? Date.parse(header) : NaN;
        if (Number.isNaN(time)) reject(new Error(`${new URL(url).host} sent no usable Date header`));
        else resolve(time);
      },
    );
    request.on('timeout', () => request.destroy(new Error(`no answer within ${timeoutMs} ms`)));
    request.on('error', reject);
    request.end();
  });
}

export async function checkClock(inputs: DoctorInputs, config: Config): Promise<CheckResult> {
  const url = `${config.authorityHost}/`;
  let server: number;
  const before = inputs.now();
  try {
    server = await serverDate(url, config.extraCaPem, inputs.timeoutMs);
  } catch (error) {
    return result(
      'clock',
      'fail',
      `could not read the time of ${new URL(url).host}: ${(error as Error).message}`,
      'Check outbound HTTPS to MAIL_AUTHORITY_HOST (login.microsoftonline.com) from this machine.',
    );
  }
  // The Date header has a resolution of one second: compare it with the middle of the request.
  const local = (before + inputs.now()) / 2;
  const skew = local - server;
  const seconds = Math.round(skew / 1000);
  const detail = `this clock is ${Math.abs(seconds)} s ${seconds >= 0 ? 'ahead of' : 'behind'} ${new URL(url).host}`;
  const verdict = judgeSkew(skew);
  const fix =
    verdict === 'pass'
      ? ''
      : "Synchronise this machine's clock (NTP). Tokens are accepted with about 5 minutes of skew; past that Entra ID and Exchange refuse them as not yet valid or expired, and TLS certificates may look expired (TLS_CERTIFICATE).";
  return result('clock', verdict, detail, fix);
}
