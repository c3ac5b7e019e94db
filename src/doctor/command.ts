/**
 * `m365-mailer doctor [--domain contoso.com] [--dns 127.0.0.1:5353] [--json]`: parses the arguments, runs the
 * checks with the app's settings and prints them. Exit status 0 when nothing failed, 1 when a check failed, 2 for bad
 * usage.
 */
import { parseArgs } from 'node:util';
import { isDomain } from '../config';
import { createDoctorDns, dnsServerProblem } from './dnsResolver';
import { doctorExitCode, formatCheck, formatJson, formatSummary, type CheckResult } from './report';
import { runDoctor } from './runDoctor';
import type { Redactor } from '../redact';

/** A doctor argument that is wrong; `option` names the flag. */
export class DoctorUsageError extends Error {
  constructor(
    message: string,
    readonly option: string,
  ) {
    super(message);
  }
}

/** Each network step of a check (connect, a reply, a handshake, an HTTP answer) gets this long. */
export const DOCTOR_STEP_TIMEOUT_MS = 10_000;

export interface DoctorCommand {
  domain: string | undefined;
  dns: string | undefined;
  json: boolean;
}

export const DOCTOR_USAGE = `  m365-mailer doctor [--domain <domain>] [--dns <ip[:port]>] [--json]
                   checks settings, clock, SMTP DNS/TCP/STARTTLS, Key Vault, token, AUTH, SendAs, SPF/DKIM/DMARC
                   --domain: the domain whose SPF, DKIM and DMARC are checked (default: MAIL_SENDER's domain)
                   --dns: the DNS server to ask (default: the system's), e.g. 127.0.0.1:5353`;

export function parseDoctorArgs(args: string[]): DoctorCommand {
  let values;
  try {
    ({ values } = parseArgs({
      args,
      strict: true,
      allowPositionals: false,
      options: { domain: { type: 'string' }, dns: { type: 'string' }, json: { type: 'boolean' } },
    }));
  } catch (error) {
    throw new DoctorUsageError((error as Error).message, '(args)');
  }
  const domain = values.domain?.trim().toLowerCase();
  if (domain !== undefined && !isDomain(domain))
    throw new DoctorUsageError('--domain must be a domain name such as contoso.com', '--domain');
  const dns = values.dns?.trim();
  if (dns !== undefined) {
    const problem = dnsServerProblem(dns);
    if (problem) throw new DoctorUsageError(`--dns ${problem}`, '--dns');
  }
  return { domain, dns, json: values.json ?? false };
}

/** Runs a parsed doctor command, writing each result as it comes; returns the exit status. */
export async function runDoctorCommand(
  command: DoctorCommand,
  options: {
    settings: () => Record<string, string | undefined>;
    redactor: Redactor;
    write: (text: string) => void;
    now?: () => number;
    timeoutMs?: number;
  },
): Promise<number> {
  const print = (r: CheckResult) => options.write(command.json ? formatJson([r]) : formatCheck(r));
  const results = await runDoctor(
    {
      settings: options.settings,
      domain: command.domain,
      dns: createDoctorDns(command.dns),
      now: options.now ?? Date.now,
      redactor: options.redactor,
      timeoutMs: options.timeoutMs ?? DOCTOR_STEP_TIMEOUT_MS,
    },
    print,
  );
  if (!command.json) options.write(formatSummary(results));
  return doctorExitCode(results);
}
