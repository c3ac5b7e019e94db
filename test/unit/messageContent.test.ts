/** The stored form of a rendered message: one JSON text, cut into Table properties without changing a character. */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { parseMessage, serializeMessage, splitContent } from '../../src/outbox/messageContent';
import type { MailMessage } from '../../src/message';

const message = (text: string): MailMessage => ({
  from: { address: 'alerts@contoso.com' },
  to: [{ address: 'a@example.com', name: 'Ä 😀' }],
  cc: [],
  bcc: [],
  subject: `Subject ${text.slice(0, 20)}`,
  text,
  attachments: [{ filename: 'a.bin', contentType: 'application/octet-stream', content: Buffer.from([0, 1, 2, 255]) }],
  headers: { 'X-Order': 'A-1' },
  messageId: '<id@contoso.com>',
});

describe('messageContent', () => {
  it('parts joined give the text back, each within the limit, none starting or ending inside a surrogate pair', () => {
    fc.assert(
      fc.property(fc.string({ unit: 'binary', maxLength: 400 }), fc.integer({ min: 2, max: 50 }), (text, limit) => {
        const parts = splitContent(text, limit);
        expect(parts.join('')).toBe(text);
        let end = 0;
        for (const part of parts) {
          expect(part.length).toBeLessThanOrEqual(limit);
          expect(part.length).toBeGreaterThan(0);
          end += part.length;
          // A part ending on a high surrogate followed by its low half would split the pair.
          const last = part.charCodeAt(part.length - 1);
          const next = text.charCodeAt(end);
          expect(last >= 0xd800 && last <= 0xdbff && next >= 0xdc00 && next <= 0xdfff).toBe(false);
        }
      }),
    );
  });

  it('a message survives serialize → split → join → parse, attachments and U+2028 included', () => {
    const text = `line\u2028separated\u2029paragraph ${'😀'.repeat(20_000)}`;
    const stored = serializeMessage({ message: message(text) });
    expect(stored).not.toMatch(/[\u2028\u2029]/);
    const back = parseMessage(splitContent(stored).join(''));
    expect(back.message).toEqual(message(text));
  });

  it('content that is not JSON throws a SyntaxError (delivery fails the message PAYLOAD_INVALID)', () => {
    expect(() => parseMessage('{not json')).toThrow(SyntaxError);
  });
});
