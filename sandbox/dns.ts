/**
 * The sandbox's DNS: a loopback UDP DNS server (dns2) that answers TXT, CNAME and A queries from a zone held in
 * memory, NXDOMAIN for names it does not hold. The doctor is pointed at it with `--dns 127.0.0.1:<port>`.
 */
import dns2 from 'dns2';

/** What one name holds. TXT records are given as their text (one string) or as character-strings (an array). */
export interface ZoneEntry {
  txt?: Array<string | string[]>;
  cname?: string;
  a?: string[];
}

export interface SandboxDns {
  /** `127.0.0.1:<port>`, for `--dns`. */
  readonly server: string;
  /** Names (lower case, no trailing dot) to what they hold; change it at will between queries. */
  readonly zone: Map<string, ZoneEntry>;
  close(): Promise<void>;
}

/** The records a domain sending through Exchange Online should publish: SPF, both DKIM selectors, DMARC. */
export function goodDomainRecords(domain: string): Array<[string, ZoneEntry]> {
  const tenant = domain.replaceAll('.', '-');
  return [
    [domain, { txt: ['v=spf1 include:spf.protection.outlook.com -all'] }],
    [`selector1._domainkey.${domain}`, { cname: `selector1-${tenant}._domainkey.${tenant}.onmicrosoft.com` }],
    [`selector2._domainkey.${domain}`, { cname: `selector2-${tenant}._domainkey.${tenant}.onmicrosoft.com` }],
    [`_dmarc.${domain}`, { txt: ['v=DMARC1; p=reject; rua=mailto:dmarc@' + domain] }],
  ];
}

/** Starts a DNS server on 127.0.0.1 (UDP, a free port) serving `records`. */
export async function startSandboxDns(records: Iterable<[string, ZoneEntry]> = []): Promise<SandboxDns> {
  const zone = new Map<string, ZoneEntry>(records);
  const { Packet } = dns2;
  const server = dns2.createServer({
    udp: true,
    handle: (request, send) => {
      const response = Packet.createResponseFromRequest(request);
      const question = request.questions[0];
      const name = (question?.name ?? '').toLowerCase().replace(/\.$/, '');
      const entry = zone.get(name);
      if (!question || !entry) {
        // NXDOMAIN: the name does not exist.
        response.header.rcode = 3;
      } else {
        const base = { name: question.name, class: Packet.CLASS.IN, ttl: 60 };
        if (question.type === Packet.TYPE.TXT)
          for (const data of entry.txt ?? []) response.answers.push({ ...base, type: Packet.TYPE.TXT, data } as never);
        if (question.type === Packet.TYPE.CNAME && entry.cname)
          response.answers.push({ ...base, type: Packet.TYPE.CNAME, domain: entry.cname } as never);
        if (question.type === Packet.TYPE.A)
          for (const address of entry.a ?? [])
            response.answers.push({ ...base, type: Packet.TYPE.A, address } as never);
      }
      void send(response);
    },
  });
  const addresses = await server.listen({ udp: { port: 0, address: '127.0.0.1' } });
  const port = addresses.udp?.port;
  if (!port) {
    await server.close();
    throw new Error('the DNS server did not start');
  }
  return { server: `127.0.0.1:${port}`, zone, close: () => server.close() };
}
