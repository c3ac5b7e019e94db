/** The one secret scanner every test uses: finds each secret as-is, base64 at any byte offset, JSON-escaped and URL-encoded. */
import type { ExchangeSmtpServer } from '../../sandbox/smtp/server';

/** One secret to look for; `label` names it in a report without repeating it. */
export interface Needle {
  /** What it is: `client-secret`, `access-token`, `storage-account-key`… (see SandboxSecretKind for the sandbox's). */
  kind: string;
  label: string;
  value: string;
}

/**
 * How a secret was written:
 * - `as-is`: the value itself;
 * - `base64@k` / `base64url@k`: inside a longer byte string that was base64-encoded, starting `k` bytes past a
 *   multiple of 3 (an XOAUTH2 initial response shifts the token this way: `user=…\x01auth=Bearer <token>`);
 * - `json-escaped`, `json-escaped-twice`: inside a JSON string (a PEM key's newlines as `\n`), or a JSON string inside
 *   a JSON string (an error body quoted in a JSON log line);
 * - `url-encoded` (encodeURIComponent) and `form-encoded` (application/x-www-form-urlencoded: `~` is `%7E` there);
 * - `whitespace-free`: a multi-line value with its line breaks changed or removed (CRLF, re-wrapped, indented);
 * - `pem-body`: the base64 body of a private key block on its own (a key pasted without its armour).
 * A form without whitespace of its own is also found when line breaks split it (base64 wrapped at 76 in MIME,
 * quoted-printable soft line breaks, a folded header, a re-wrapped key).
 */
export type LeakForm =
  | 'as-is'
  | 'base64@0'
  | 'base64@1'
  | 'base64@2'
  | 'base64url@0'
  | 'base64url@1'
  | 'base64url@2'
  | 'json-escaped'
  | 'json-escaped-twice'
  | 'url-encoded'
  | 'form-encoded'
  | 'whitespace-free'
  | 'pem-body';

/** A needle found in a haystack. Never holds the secret: the excerpt shows `«kind:form»` in its place. */
export interface Leak {
  kind: string;
  label: string;
  form: LeakForm;
  /** Which haystack: the name given to {@link SecretScanner.find}, with `[i]` for the i-th of a list. */
  where: string;
  /** Up to 40 characters either side of the match, the match itself replaced. */
  excerpt: string;
}

/** Haystacks by name: a text or a list of texts (log lines, response bodies, SMTP lines). */
export type Haystacks = Record<string, string | readonly string[]>;

export interface SecretScanner {
  /** The needles, one per distinct value (labels of duplicates joined). */
  readonly needles: readonly Needle[];
  /** Every needle found in `haystack`, each once, in the first of its forms that matched; `[]` when it is clean. */
  find(haystack: string, where?: string): Leak[];
  /** {@link SecretScanner.find} over each named haystack (each element of a list on its own). */
  findAll(haystacks: Haystacks): Leak[];
}

/** Shorter values cannot be told from ordinary text; a needle this short is a mistake in the test, not a pass. */
export const MIN_NEEDLE_CHARS = 8;
const EXCERPT_CHARS = 40;
/** Characters of a base64 encoding that depend only on the prefix's bytes, for a prefix of 0, 1 or 2 bytes. */
const PREFIX_CHARS = [0, 2, 3] as const;
const PRIVATE_KEY_BLOCK = /-----BEGIN ([A-Z0-9 ]*PRIVATE KEY)-----([\s\S]*?)-----END \1-----/g;

/**
 * `text` without line breaks or whitespace: quoted-printable soft line breaks (`=` then a line end) go first, then
 * every whitespace character. Needles and haystacks go through the same function, so a base64 line ending in `=`
 * padding compares equal whatever its line ends were.
 */
function compactOf(text: string): string {
  return text.replace(/=[ \t]*\r*\n/g, '').replace(/\s+/g, '');
}

interface Form {
  form: LeakForm;
  text: string;
  /** Also searched in the haystack with line breaks and whitespace removed (possible when the text has none itself). */
  compact: boolean;
}

/**
 * The characters of base64(prefix + value + suffix) that depend on `value` alone, for a prefix of `offset` bytes
 * (mod 3) and any suffix: the characters shared with the prefix or the suffix are dropped.
 */
export function base64AtOffset(value: string, offset: 0 | 1 | 2, alphabet: 'base64' | 'base64url' = 'base64'): string {
  const bytes = Buffer.from(value, 'utf8');
  const encoded = Buffer.concat([Buffer.alloc(offset), bytes])
    .toString(alphabet)
    .replace(/=+$/, '');
  const end = Math.floor(((offset + bytes.length) * 8) / 6);
  return encoded.slice(PREFIX_CHARS[offset], end);
}

/** Every form of `value` the scanner looks for, without duplicates (the first form giving a text names it). */
export function encodedForms(value: string): Array<{ form: LeakForm; text: string }> {
  const jsonEscaped = JSON.stringify(value).slice(1, -1);
  const candidates: Array<{ form: LeakForm; text: string }> = [
    { form: 'as-is', text: value },
    ...([0, 1, 2] as const).flatMap((offset) => [
      { form: `base64@${offset}` as LeakForm, text: base64AtOffset(value, offset) },
      { form: `base64url@${offset}` as LeakForm, text: base64AtOffset(value, offset, 'base64url') },
    ]),
    { form: 'json-escaped', text: jsonEscaped },
    { form: 'json-escaped-twice', text: JSON.stringify(jsonEscaped).slice(1, -1) },
    { form: 'url-encoded', text: encodeURIComponent(value) },
    { form: 'form-encoded', text: new URLSearchParams({ v: value }).toString().slice(2) },
  ];
  if (/\s/.test(value)) candidates.push({ form: 'whitespace-free', text: compactOf(value) });
  for (const block of value.matchAll(PRIVATE_KEY_BLOCK)) {
    // Without its padding, which a line break after it could have taken away (see compactOf).
    candidates.push({ form: 'pem-body', text: compactOf(block[2] ?? '').replace(/=+$/, '') });
  }
  const seen = new Set<string>();
  return candidates.filter(({ text }) => text.length > 0 && !seen.has(text) && seen.add(text));
}

function excerpt(haystack: string, index: number, length: number, marker: string): string {
  const before = haystack.slice(Math.max(0, index - EXCERPT_CHARS), index);
  const after = haystack.slice(index + length, index + length + EXCERPT_CHARS);
  return `${before}«${marker}»${after}`;
}

/**
 * A scanner for `needles`. Throws on a needle shorter than {@link MIN_NEEDLE_CHARS}: a secret that cannot be looked
 * for must fail the test that thought it was looking.
 */
export function secretScanner(needles: Iterable<Needle>): SecretScanner {
  const byValue = new Map<string, Needle>();
  for (const needle of needles) {
    if (needle.value.length < MIN_NEEDLE_CHARS) {
      throw new Error(`secretScanner: ${needle.kind} "${needle.label}" is shorter than ${MIN_NEEDLE_CHARS} characters`);
    }
    const known = byValue.get(needle.value);
    if (known) known.label = `${known.label} = ${needle.label}`;
    else byValue.set(needle.value, { ...needle });
  }
  const entries = [...byValue.values()].map((needle) => ({
    needle,
    forms: encodedForms(needle.value).map((f): Form => ({ ...f, compact: !/\s/.test(f.text) })),
  }));

  const find = (haystack: string, where = 'text'): Leak[] => {
    const leaks: Leak[] = [];
    let compact: string | undefined;
    for (const { needle, forms } of entries) {
      for (const { form, text, compact: alsoCompact } of forms) {
        let source = haystack;
        let index = haystack.indexOf(text);
        if (index < 0 && alsoCompact) {
          compact ??= compactOf(haystack);
          source = compact;
          index = compact.indexOf(text);
        }
        if (index < 0) continue;
        // One report per needle and haystack, in the first form that matched (as-is before any encoding).
        leaks.push({
          kind: needle.kind,
          label: needle.label,
          form,
          where,
          excerpt: excerpt(source, index, text.length, `${needle.kind}:${form}`),
        });
        break;
      }
    }
    return leaks;
  };

  return {
    needles: entries.map((e) => e.needle),
    find,
    findAll(haystacks) {
      return Object.entries(haystacks).flatMap(([where, texts]) =>
        typeof texts === 'string' ? find(texts, where) : texts.flatMap((text, i) => find(text, `${where}[${i}]`)),
      );
    },
  };
}

/**
 * What clients sent the sandbox SMTP server, unredacted, in two parts: `auth`, the AUTH commands and their exchanges
 * after STARTTLS (the one place a token or password belongs on the wire), and `elsewhere`, every other line and
 * every message's content (MAIL FROM, RCPT, headers, body, and anything at all before STARTTLS).
 */
export function smtpWire(smtp: ExchangeSmtpServer): { auth: string[]; elsewhere: string[] } {
  const auth: string[] = [];
  const elsewhere: string[] = [];
  for (const entry of smtp.received) {
    (entry.kind === 'auth' && entry.secure ? auth : elsewhere).push(entry.text);
  }
  return { auth, elsewhere };
}

/**
 * The accepted messages as a reader sees them, decoded (quoted-printable and base64 parts undone): subject, headers,
 * text, HTML and attachment contents, one string per message.
 */
export function smtpMessagesDecoded(smtp: ExchangeSmtpServer): string[] {
  return smtp.messages.map((m) =>
    [
      m.parsed.subject ?? '',
      ...m.parsed.headers.map((h) => `${h.key}: ${h.value}`),
      m.parsed.text ?? '',
      m.parsed.html ?? '',
      ...m.parsed.attachments.map((a) =>
        typeof a.content === 'string' ? a.content : Buffer.from(new Uint8Array(a.content)).toString('utf8'),
      ),
    ].join('\n'),
  );
}
