/** The SMTP connection checks: the host's DNS, a TCP connection to the port, and STARTTLS with the certificate. */
import { lookup } from 'node:dns/promises';
import { isIP } from 'node:net';
import type { Config } from '../../config';
import { trustedCas } from '../../sender/tlsTrust';
import { describeDnsError } from '../dnsResolver';
import type { CheckResult } from '../report';
import { probeStartTls, probeTcp, SmtpProbeError } from '../smtpProbe';
import { result, type DoctorInputs, type DoctorState } from './context';

const HOST_FIX = "Check MAIL_SMTP_HOST (smtp.office365.com; smtp.office365.us for GCC High) and this machine's DNS.";

/** Resolves MAIL_SMTP_HOST: through --dns when given, else the system resolver the sender itself uses. */
export async function checkSmtpDns(inputs: DoctorInputs, config: Config, state: DoctorState): Promise<CheckResult> {
  const { host } = config.smtp;
  if (isIP(host)) {
    state.smtpAddresses = [host];
    return result('smtp-dns', 'pass', `${host} is an IP address: nothing to resolve`);
  }
  try {
    let addresses: string[];
    if (inputs.dns.server !== undefined) {
      const [v4, v6] = await Promise.allSettled([inputs.dns.resolve4(host), inputs.dns.resolve6(host)]);
      addresses = [...(v4.status === 'fulfilled' ? v4.value : []), ...(v6.status === 'fulfilled' ? v6.value : [])];
      if (addresses.length === 0) throw v4.status === 'rejected' ? v4.reason : new Error('no address');
    } else {
      addresses = (await lookup(host, { all: true })).map((a) => a.address);
    }
    state.smtpAddresses = addresses;
    return result('smtp-dns', 'pass', `${host} resolves to ${addresses.slice(0, 4).join(', ')}`);
  } catch (error) {
    return result(
      'smtp-dns',
      'fail',
      `${host} does not resolve: ${describeDnsError(error)}: CONNECTION_FAILED`,
      HOST_FIX,
    );
  }
}

const PORT_FIX =
  'Check outbound 587 from the Function App (VNet, NSG, firewall) and MAIL_SMTP_PORT (587; 465 does not take SMTP AUTH submission).';

export async function checkSmtpTcp(inputs: DoctorInputs, config: Config, state: DoctorState): Promise<CheckResult> {
  const address = state.smtpAddresses?.[0] ?? config.smtp.host;
  try {
    const endpoint = await probeTcp(address, config.smtp.port, inputs.timeoutMs);
    state.tcpOk = true;
    return result('smtp-tcp', 'pass', `connected to ${config.smtp.host}:${config.smtp.port} (${endpoint})`);
  } catch (error) {
    const code = error instanceof SmtpProbeError && error.code ? ` (${error.code})` : '';
    return result(
      'smtp-tcp',
      'fail',
      `cannot connect to ${config.smtp.host}:${config.smtp.port}${code}: CONNECTION_FAILED`,
      PORT_FIX,
    );
  }
}

const TLS_VERSIONS = ['TLSv1.2', 'TLSv1.3'];

export async function checkStartTls(inputs: DoctorInputs, config: Config, state: DoctorState): Promise<CheckResult> {
  const { host, port } = config.smtp;
  try {
    const probe = await probeStartTls({
      address: state.smtpAddresses?.[0] ?? host,
      host,
      port,
      ca: trustedCas(config.extraCaPem),
      timeoutMs: inputs.timeoutMs,
    });
    const dates = `certificate ${probe.subject ? `CN=${probe.subject} ` : ''}valid ${probe.validFrom.toISOString()} to ${probe.validTo.toISOString()}`;
    const now = inputs.now();
    if (!TLS_VERSIONS.includes(probe.tlsVersion)) {
      return result(
        'smtp-starttls',
        'fail',
        `${probe.tlsVersion} negotiated: TLS_VERSION`,
        'Exchange Online takes TLS 1.2 or later (421 4.7.66 TLS 1.0 and 1.1 are not supported); a TLS-downgrading proxy is in the way.',
      );
    }
    if (probe.validTo.getTime() < now || probe.validFrom.getTime() > now) {
      return result(
        'smtp-starttls',
        'fail',
        `${probe.tlsVersion}, but by this machine's clock the ${dates}: TLS_CERTIFICATE`,
        'Fix the clock or the host name; for a private CA set MAIL_TLS_CA_FILE. Verification is never turned off.',
      );
    }
    state.startTlsOk = true;
    return result('smtp-starttls', 'pass', `STARTTLS to ${probe.tlsVersion} (${probe.cipher}), ${dates}`);
  } catch (error) {
    const e = error instanceof SmtpProbeError ? error : new SmtpProbeError('handshake', (error as Error).message);
    if (e.stage === 'starttls' || e.stage === 'greeting' || e.stage === 'ehlo') {
      return result(
        'smtp-starttls',
        'fail',
        `${e.message}: STARTTLS_UNAVAILABLE (no token would be sent: the sender never authenticates in clear text)`,
        'Check MAIL_SMTP_HOST/MAIL_SMTP_PORT (smtp.office365.com:587) and any middlebox that strips STARTTLS.',
      );
    }
    if (e.code === 'ERR_SSL_UNSUPPORTED_PROTOCOL' || /protocol version|unsupported protocol/i.test(e.message)) {
      return result(
        'smtp-starttls',
        'fail',
        `the server offers no TLS 1.2 or later (${e.message.slice(0, 200)}): TLS_VERSION`,
        'Exchange Online takes TLS 1.2 or later; a TLS-downgrading proxy is in the way.',
      );
    }
    return result(
      'smtp-starttls',
      'fail',
      `the TLS handshake failed${e.code ? ` (${e.code})` : ''}: ${e.message.slice(0, 300)}: TLS_CERTIFICATE`,
      "The server's certificate was not trusted (wrong host, expired, unknown CA, or this machine's clock is wrong). Fix the clock or the host name; for a private CA set MAIL_TLS_CA_FILE. Verification is never turned off.",
    );
  }
}
