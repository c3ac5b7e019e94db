import { describe, expect, it } from 'vitest';
import { MailError } from '../src/errors';
import { parseMessage } from '../src/message';

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
