/**
 * The domain checks, through the doctor's resolver (src/doctor/dnsResolver.ts): SPF includes Exchange Online's
 * senders, DKIM's two selectors are CNAMEs, DMARC exists (warn on p=none).
 */
import { describeDnsError, isNoRecord, type DoctorDns } from '../dnsResolver';
import { DKIM_SELECTORS, EXCHANGE_SPF_INCLUDE, joinTxtRecords, readDmarc, readSpf } from '../dnsRecords';
import type { CheckResult } from '../report';
import { result } from './context';

async function txt(dns: DoctorDns, name: string): Promise<string[]> {
  try {
    return joinTxtRecords(await dns.resolveTxt(name));
  } catch (error) {
    if (isNoRecord(error)) return [];
    throw error;
  }
}

const unreachable = (name: string, query: string, error: unknown, fix: string) =>
  result(name, 'fail', `could not look up ${query}: ${describeDnsError(error)}`, fix);

export async function checkSpf(dns: DoctorDns, domain: string): Promise<CheckResult> {
  const fix = `Publish (or extend) one TXT record at ${domain}: "v=spf1 ${EXCHANGE_SPF_INCLUDE} -all" (keep your other senders' mechanisms).`;
  let records: string[];
  try {
    records = await txt(dns, domain);
  } catch (error) {
    return unreachable('spf', `TXT ${domain}`, error, fix);
  }
  const spf = readSpf(records);
  if (spf.kind === 'none') return result('spf', 'fail', `${domain} has no v=spf1 TXT record`, fix);
  if (spf.kind === 'multiple')
    return result(
      'spf',
      'fail',
      `${domain} has ${spf.count} v=spf1 records (SPF allows one)`,
      `Merge them into one. ${fix}`,
    );
  if (spf.kind === 'too-long') return result('spf', 'fail', `${domain}'s SPF record is too long to read`, fix);
  if (!spf.includesExchange)
    return result('spf', 'fail', `${domain}'s SPF record does not ${EXCHANGE_SPF_INCLUDE}`, fix);
  return result('spf', 'pass', `${domain}: ${spf.record.slice(0, 200)}`);
}

export async function checkDkim(dns: DoctorDns, domain: string): Promise<CheckResult> {
  const found: string[] = [];
  const missing: string[] = [];
  for (const selector of DKIM_SELECTORS) {
    const name = `${selector}._domainkey.${domain}`;
    try {
      const targets = await dns.resolveCname(name);
      if (targets.length) found.push(`${name} → ${(targets[0] as string).slice(0, 200)}`);
      else missing.push(name);
    } catch (error) {
      if (!isNoRecord(error))
        return unreachable('dkim', `CNAME ${name}`, error, 'Check the DNS server (or --dns) and retry.');
      missing.push(name);
    }
  }
  if (missing.length)
    return result(
      'dkim',
      'fail',
      `no CNAME at ${missing.join(', ')}`,
      `Publish the two CNAMEs the Microsoft 365 Defender portal shows for ${domain} (selector1._domainkey and selector2._domainkey → …onmicrosoft.com), then enable DKIM signing for the domain.`,
    );
  return result('dkim', 'pass', found.join('; '));
}

export async function checkDmarc(dns: DoctorDns, domain: string): Promise<CheckResult> {
  const name = `_dmarc.${domain}`;
  const fix = `Publish a TXT record at ${name}: "v=DMARC1; p=quarantine; rua=mailto:<reports address>" (start with p=none only while you watch the reports).`;
  let records: string[];
  try {
    records = await txt(dns, name);
  } catch (error) {
    return unreachable('dmarc', `TXT ${name}`, error, fix);
  }
  const dmarc = readDmarc(records);
  if (dmarc.kind === 'none') return result('dmarc', 'fail', `${name} has no v=DMARC1 TXT record`, fix);
  if (dmarc.kind === 'multiple')
    return result('dmarc', 'fail', `${name} has ${dmarc.count} v=DMARC1 records (DMARC then applies none)`, fix);
  if (dmarc.kind === 'too-long') return result('dmarc', 'fail', `${name}'s record is too long to read`, fix);
  if (dmarc.kind === 'invalid') return result('dmarc', 'fail', `${name}'s record is invalid: ${dmarc.reason}`, fix);
  if (dmarc.policy === 'none')
    return result(
      'dmarc',
      'warn',
      `${name}: p=none (monitoring only: receivers take no action on failing mail)`,
      `Move to p=quarantine or p=reject at ${name} once the reports show all your senders pass.`,
    );
  return result('dmarc', 'pass', `${name}: p=${dmarc.policy}`);
}
