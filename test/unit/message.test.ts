import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { MailError } from '../../src/errors';
import { parseMessage } from '../../src/message';

/**
 * One-sided bound for the linear-time regressions: the backtracking they guard against took minutes; a loaded two-core
 * machine must not make a linear run fail.
 */
const LINEAR_BOUND_MS = 5_000;

const limits = { defaultFrom: 'alerts@contoso.com', maxRecipients: 3, maxMessageBytes: 100_000 };

function details(input: unknown): Array<{ path: string; message: string }> {
  try {
    parseMessage(input, limits);
  } catch (error) {
    expect(error).toBeInstanceOf(MailError);
    expect((error as MailError).code).toBe('INVALID_MESSAGE');
    return (error as MailError).details ?? [];
  }
  throw new Error('expected INVALID_MESSAGE');
}

describe('parseMessage', () => {
  it('normalises addresses in every accepted form', () => {
    const m = parseMessage(
      {
        to: ['a@example.com', { address: 'b@example.com', name: 'Bee' }],
        cc: 'Cee <c@example.com>',
        subject: 'Hi',
        text: 'x',
      },
      limits,
    );
    expect(m.from).toEqual({ address: 'alerts@contoso.com' });
    expect(m.to).toEqual([{ address: 'a@example.com' }, { address: 'b@example.com', name: 'Bee' }]);
    expect(m.cc).toEqual([{ address: 'c@example.com', name: 'Cee' }]);
  });

  it('names the field of each bad address', () => {
    const list = details({ to: ['ok@example.com', 'not-an-address'], subject: 's', text: 't' });
    expect(list).toContainEqual(expect.objectContaining({ path: 'to[1]' }));
  });

  it.each([
    ['subject', { subject: 'Hello\r\nBcc: victim@example.com' }, 'subject'],
    ['address', { to: 'a@example.com\r\nBcc: victim@example.com' }, 'to'],
    ['display name', { to: { address: 'a@example.com', name: 'A\nBcc: v@example.com' } }, 'to'],
    ['header value', { headers: { 'X-Order': 'A-1\r\nBcc: v@example.com' } }, 'headers.X-Order'],
    ['attachment name', { attachments: [{ filename: 'a\r\n.pdf', contentBase64: 'AA==' }] }, 'attachments[0].filename'],
  ])('rejects CR/LF in the %s', (_what, patch, path) => {
    const list = details({ to: 'a@example.com', subject: 's', text: 't', ...patch });
    expect(list.some((d) => d.path.startsWith(path) || d.path === path)).toBe(true);
    expect(list.map((d) => d.message).join(' ')).toMatch(/CR, LF|valid email|address/);
  });

  it('accepts only X- headers', () => {
    const list = details({ to: 'a@example.com', subject: 's', text: 't', headers: { Bcc: 'v@example.com' } });
    expect(list[0]?.path).toBe('headers.Bcc');
    expect(list[0]?.message).toMatch(/only X- headers/);
  });

  it('requires a body, a recipient, and respects the recipient and size limits', () => {
    expect(details({ to: 'a@example.com', subject: 's' })).toContainEqual({
      path: 'text',
      message: 'text or html is required',
    });
    expect(details({ subject: 's', text: 't' })[0]?.path).toBe('to');
    expect(
      details({ to: ['a@x.com', 'b@x.com'], cc: ['c@x.com', 'd@x.com'], subject: 's', text: 't' })[0]?.message,
    ).toMatch(/at most 3 recipients/);
    const big = Buffer.alloc(90_000).toString('base64');
    expect(
      details({ to: 'a@x.com', subject: 's', attachments: [{ filename: 'a.bin', contentBase64: big }] })[0]?.path,
    ).toBe('attachments');
  });

  it('rejects unknown fields and wrong types by name', () => {
    const list = details({ to: 'a@example.com', subject: 42, text: 't', sneaky: true });
    const paths = list.map((d) => d.path);
    expect(paths).toContain('subject');
    expect(list.map((d) => d.message).join(' ')).toMatch(/sneaky/);
  });
});

describe('addresses and headers: the rules of the linear validators', () => {
  it.each<[string, { address: string; name?: string } | undefined]>([
    ['a@example.com', { address: 'a@example.com' }],
    ['  a@example.com  ', { address: 'a@example.com' }],
    ['Bee <b@example.com>', { address: 'b@example.com', name: 'Bee' }],
    ['"Bee, the second" <b@example.com>', { address: 'b@example.com', name: 'Bee, the second' }],
    ['" Bee " <b@example.com>', { address: 'b@example.com', name: 'Bee' }],
    ['"Bee <b@example.com>', { address: 'b@example.com', name: 'Bee' }],
    ['<b@example.com>', { address: 'b@example.com' }],
    ['"" <b@example.com>', { address: 'b@example.com' }],
    ['Bee"" <b@example.com>', undefined],
    ['B"ee <b@example.com>', undefined],
    ['Bee <<b@example.com>', undefined],
    ['Bee <b@ example.com>', undefined],
    ['Bee <>', undefined],
    ['a@b@example.com', undefined],
    ['a@.com', undefined],
    ['a@example.', undefined],
    ['a@.', undefined],
    ['a@x..y', { address: 'a@x..y' }],
  ])('%j', (value, expected) => {
    if (expected) expect(parseMessage({ to: value, subject: 's', text: 't' }, limits).to).toEqual([expected]);
    else expect(details({ to: value, subject: 's', text: 't' })[0]?.path).toBe('to');
  });

  it('validates 1,000 addresses of 575 spaces then a letter in linear time', () => {
    const started = performance.now();
    const list = details({ to: Array.from({ length: 1_000 }, () => `${' '.repeat(575)}a`), subject: 's', text: 't' });
    expect(performance.now() - started).toBeLessThan(LINEAR_BOUND_MS);
    expect(list[0]?.path).toBe('to[0]');
  });

  it('checks the length of an { address } object before anything else looks at it', () => {
    const started = performance.now();
    const list = details({ to: [{ address: `a@${'.'.repeat(1_000_000)}` }], subject: 's', text: 't' });
    expect(performance.now() - started).toBeLessThan(LINEAR_BOUND_MS);
    expect(list).toEqual([{ path: 'to[0]', message: 'address is not a valid email address' }]);
  });

  it.each([
    'X-MS-Exchange-Organization-AuthAs',
    'X-ms-exchange-foo',
    'X-Microsoft-Antispam',
    'X-Forefront-Antispam-Report',
  ])("refuses Exchange's own header %s", (name) => {
    const list = details({ to: 'a@example.com', subject: 's', text: 't', headers: { [name]: 'x' } });
    expect(list[0]?.path).toBe(`headers.${name}`);
    expect(list[0]?.message).toMatch(/written by Exchange Online itself/);
  });

  it('refuses header names that differ only in case, naming the second', () => {
    const list = details({ to: 'a@example.com', subject: 's', text: 't', headers: { 'X-Order': '1', 'X-ORDER': '2' } });
    expect(list).toEqual([
      { path: 'headers.X-ORDER', message: expect.stringMatching(/differs from X-Order only in case/) as unknown },
    ]);
  });

  it('base64: line breaks before the padding, nothing after it but line breaks', () => {
    const ok = (contentBase64: string) =>
      parseMessage({ to: 'a@example.com', subject: 's', attachments: [{ filename: 'a', contentBase64 }] }, limits);
    expect(ok('SGVs\r\nbG8=\r\n').attachments[0]?.content.toString()).toBe('Hello');
    for (const bad of ['AA=\n=', 'A===', '=A', `${'\n'.repeat(100_000)}!`]) {
      expect(
        details({ to: 'a@example.com', subject: 's', attachments: [{ filename: 'a', contentBase64: bad }] })[0]?.path,
      ).toBe('attachments[0].contentBase64');
    }
  });
});

describe('the linear address parser reads every short string as the old regexes did', () => {
  // The replaced patterns, kept here as the reference (harmless on strings this short).
  const OLD_EMAIL = /^[^\s@<>()",;:\\[\]]+@[^\s@<>()",;:\\[\]]+\.[^\s@<>()",;:\\[\]]+$/;
  const OLD_NAMED = /^\s*(?:"?([^"<>]*?)"?\s*)?<([^<>\s]+)>\s*$/;
  const old = (value: string) => {
    const named = OLD_NAMED.exec(value);
    const address = (named?.[2] ?? value).trim();
    const name = named?.[1]?.trim() || undefined;
    return OLD_EMAIL.test(address) ? { address, ...(name ? { name } : {}) } : undefined;
  };
  const alphabet = fc.constantFrom('a', 'b', '@', '.', ' ', '\u3000', '\t', '"', '<', '>', ',', ':', '(', 'é');
  const noise = fc.array(alphabet, { maxLength: 4 }).map((c) => c.join(''));
  const mostly = (clean: string[]) => fc.oneof({ weight: 4, arbitrary: fc.constantFrom(...clean) }, noise);
  // Random strings, and strings shaped like addresses with noise in some parts (many of those are valid).
  const value = fc.oneof(
    fc.array(alphabet, { maxLength: 24 }).map((c) => c.join('')),
    fc
      .tuple(
        mostly(['', ' ']),
        fc.constantFrom('', '"', ' '),
        mostly(['Bee', 'Bee Two', '', 'a@b.c']),
        fc.constantFrom('<', ' <', ''),
        mostly(['a', 'x.y']),
        mostly(['example', 'b.c']),
        mostly(['', ' ']),
      )
      .map(
        ([pre, quote, name, open, local, domain, tail]) =>
          `${pre}${open ? `${quote}${name}${quote}` : ''}${open}${local}@${domain}.co${open ? '>' : ''}${tail}`,
      ),
  );

  it('same address and name, or invalid for both', () => {
    let valid = 0;
    fc.assert(
      fc.property(value, (value) => {
        let now: unknown;
        try {
          now = parseMessage({ to: value, subject: 's', text: 't' }, limits).to[0];
        } catch {
          now = undefined;
        }
        expect(now).toEqual(old(value));
        if (now) valid++;
      }),
      { numRuns: 5_000 },
    );
    expect(valid).toBeGreaterThan(500);
  });
});
