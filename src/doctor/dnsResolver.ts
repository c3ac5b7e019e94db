/**
 * The doctor's DNS: node:dns's Resolver, pointed at the system's servers or at the one `--dns <ip[:port]>` names
 * (a loopback server in tests and in the demo). Every query is bounded in time.
 */
import { Resolver } from 'node:dns/promises';
import { isIP } from 'node:net';

/** Each query gets this long, with one try: a DNS server that does not answer fails the check, it does not hang it. */
export const DNS_QUERY_TIMEOUT_MS = 3_000;

/** The queries the checks make. */
export interface DoctorDns {
  /** The server named by --dns, or undefined for the system's. */
  readonly server: string | undefined;
  resolveTxt(name: string): Promise<string[][]>;
  resolveCname(name: string): Promise<string[]>;
  resolve4(name: string): Promise<string[]>;
  resolve6(name: string): Promise<string[]>;
}

/**
 * Checks a `--dns` value: an IPv4 address with an optional port (`127.0.0.1:5353`), or an IPv6 address, bracketed
 * when it has a port (`[::1]:5353`). Returns undefined when it is valid, else what is wrong.
 */
export function dnsServerProblem(value: string): string | undefined {
  if (value.length > 64) return 'is too long';
  let host = value;
  let port: string | undefined;
  if (value.startsWith('[')) {
    const close = value.indexOf(']');
    if (close < 0) return 'has "[" without "]"';
    host = value.slice(1, close);
    const rest = value.slice(close + 1);
    if (rest !== '') {
      if (!rest.startsWith(':')) return 'must be [IPv6]:port';
      port = rest.slice(1);
    }
    if (isIP(host) !== 6) return 'must hold an IPv6 address between the brackets';
  } else if (isIP(value) === 6) {
    host = value;
  } else {
    const colon = value.lastIndexOf(':');
    if (colon >= 0) {
      host = value.slice(0, colon);
      port = value.slice(colon + 1);
    }
    if (isIP(host) !== 4) return 'must be an IP address (a DNS server, not a name), e.g. 127.0.0.1:5353';
  }
  if (port !== undefined) {
    const n = Number(port);
    if (!/^\d{1,5}$/.test(port) || n < 1 || n > 65_535) return 'has a port that is not 1-65535';
  }
  return undefined;
}

/** A resolver for `server` (validated with {@link dnsServerProblem}), or for the system's servers when undefined. */
export function createDoctorDns(server: string | undefined, timeoutMs = DNS_QUERY_TIMEOUT_MS): DoctorDns {
  const resolver = new Resolver({ timeout: timeoutMs, tries: 1 });
  if (server !== undefined) resolver.setServers([server]);
  return {
    server,
    resolveTxt: (name) => resolver.resolveTxt(name),
    resolveCname: (name) => resolver.resolveCname(name),
    resolve4: (name) => resolver.resolve4(name),
    resolve6: (name) => resolver.resolve6(name),
  };
}

/** DNS error codes that mean "no such record" rather than "could not ask". */
export function isNoRecord(error: unknown): boolean {
  const code = (error as { code?: unknown } | null)?.code;
  return code === 'ENOTFOUND' || code === 'ENODATA' || code === 'NXDOMAIN';
}

/** A DNS failure in a few words, without the stack. */
export function describeDnsError(error: unknown): string {
  const code = (error as { code?: unknown } | null)?.code;
  if (code === 'ENOTFOUND') return 'no such name (NXDOMAIN)';
  if (code === 'ENODATA') return 'the name has no record of that type';
  if (code === 'ETIMEOUT') return 'the DNS server did not answer';
  if (code === 'ECONNREFUSED') return 'the DNS server refused the connection';
  return typeof code === 'string' ? `DNS error ${code}` : 'DNS error';
}
