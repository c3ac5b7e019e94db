/**
 * Pure readers of the DNS records the doctor looks at (SPF and DMARC TXT records). DNS answers are input: every
 * record is bounded before it is read, and nothing here uses a regular expression that can backtrack.
 */

/** A TXT record longer than this is not read (SPF records are limited to 512 bytes in practice; DMARC is short). */
export const MAX_TXT_RECORD_CHARS = 4096;
/** At most this many TXT records of one name are looked at. */
export const MAX_TXT_RECORDS = 64;
/** Exchange Online's SPF include. */
export const EXCHANGE_SPF_INCLUDE = 'include:spf.protection.outlook.com';

/** Joins the character-strings of each TXT record (node:dns gives them as arrays), bounded in count and size. */
export function joinTxtRecords(records: readonly (readonly string[])[]): string[] {
  const joined: string[] = [];
  for (const chunks of records.slice(0, MAX_TXT_RECORDS)) {
    let text = '';
    for (const chunk of chunks) {
      text += chunk;
      if (text.length > MAX_TXT_RECORD_CHARS) break;
    }
    joined.push(text.slice(0, MAX_TXT_RECORD_CHARS + 1));
  }
  return joined;
}

/** Splits on runs of spaces and tabs, without a regular expression. */
function terms(record: string): string[] {
  return record
    .replaceAll('\t', ' ')
    .split(' ')
    .filter((t) => t !== '');
}

export type SpfVerdict =
  | { kind: 'none' }
  | { kind: 'multiple'; count: number }
  | { kind: 'too-long' }
  | { kind: 'found'; record: string; includesExchange: boolean };

/** Finds the domain's `v=spf1` record among its TXT records and whether it includes Exchange Online's senders. */
export function readSpf(txt: readonly string[]): SpfVerdict {
  const spf = txt.filter((r) => {
    const first = terms(r.slice(0, 16))[0]?.toLowerCase();
    return first === 'v=spf1';
  });
  if (spf.length === 0) return { kind: 'none' };
  if (spf.length > 1) return { kind: 'multiple', count: spf.length };
  const record = spf[0] as string;
  if (record.length > MAX_TXT_RECORD_CHARS) return { kind: 'too-long' };
  const includesExchange = terms(record).some((term) => {
    const t = term.toLowerCase();
    // A qualifier (+, ~, ?, -) may precede the mechanism; only + (the default) authorises.
    return t === EXCHANGE_SPF_INCLUDE || t === `+${EXCHANGE_SPF_INCLUDE}`;
  });
  return { kind: 'found', record, includesExchange };
}

export type DmarcPolicy = 'none' | 'quarantine' | 'reject';

export type DmarcVerdict =
  | { kind: 'none' }
  | { kind: 'multiple'; count: number }
  | { kind: 'too-long' }
  | { kind: 'invalid'; reason: string }
  | { kind: 'found'; record: string; policy: DmarcPolicy };

/** Reads the `v=DMARC1` record among `_dmarc.<domain>`'s TXT records: its `p=` policy. */
export function readDmarc(txt: readonly string[]): DmarcVerdict {
  const tagsOf = (record: string) =>
    record.split(';').map((part) => {
      const eq = part.indexOf('=');
      return eq < 0
        ? { name: part.trim().toLowerCase(), value: '' }
        : { name: part.slice(0, eq).trim().toLowerCase(), value: part.slice(eq + 1).trim() };
    });
  const dmarc = txt.filter((r) => {
    const first = tagsOf(r.slice(0, 32))[0];
    return first?.name === 'v' && first.value.toUpperCase() === 'DMARC1';
  });
  if (dmarc.length === 0) return { kind: 'none' };
  if (dmarc.length > 1) return { kind: 'multiple', count: dmarc.length };
  const record = dmarc[0] as string;
  if (record.length > MAX_TXT_RECORD_CHARS) return { kind: 'too-long' };
  const policy = tagsOf(record)
    .find((t) => t.name === 'p')
    ?.value.toLowerCase();
  if (policy === undefined) return { kind: 'invalid', reason: 'it has no p= tag' };
  if (policy !== 'none' && policy !== 'quarantine' && policy !== 'reject')
    return { kind: 'invalid', reason: 'its p= tag is not none, quarantine or reject' };
  return { kind: 'found', record, policy };
}

/** The DKIM selectors Exchange Online signs with; each is a CNAME to the tenant's key. */
export const DKIM_SELECTORS = ['selector1', 'selector2'] as const;
