/**
 * Unsubscribe tokens without servers: signing and verifying round-trip, and property tests with hostile generators —
 * any string, any mutation of a valid token, any other key or an expired one is refused naming `t`, in bounded time,
 * never with anything but UNSUBSCRIBE_TOKEN_INVALID; and the headers and pages built from them escape what they show.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { MailError } from '../../src/errors';
import { buildUnsubscribeHeaders } from '../../src/suppression/unsubscribeLinks';
import { confirmationPage, escapeHtml, invalidLinkPage } from '../../src/suppression/unsubscribePage';
import {
  MAX_TOKEN_CHARS,
  signUnsubscribeToken,
  tokenShapeProblem,
  verifyUnsubscribeToken,
} from '../../src/suppression/unsubscribeToken';
import { hostileString, HOSTILE_CHARS } from '../support/hostile';

const KEY = Buffer.from('k'.repeat(48));
const NOW = Date.UTC(2026, 11, 1);
const valid = (address = 'someone@example.com', list = 'news', expiresAt = NOW + 86_400_000) =>
  signUnsubscribeToken({ address, list, expiresAt }, KEY);

/** Runs verify; returns the claim, or asserts the refusal is UNSUBSCRIBE_TOKEN_INVALID naming `t`. */
function verifyOrRefuse(token: unknown, key: Buffer | readonly Buffer[] = KEY, now = NOW) {
  try {
    return verifyUnsubscribeToken(token, key, now);
  } catch (error) {
    expect(error).toBeInstanceOf(MailError);
    expect((error as MailError).code).toBe('UNSUBSCRIBE_TOKEN_INVALID');
    expect((error as MailError).details?.map((d) => d.path)).toEqual(['t']);
    return undefined;
  }
}

describe('signUnsubscribeToken / verifyUnsubscribeToken', () => {
  it('round-trips the lower-cased address, the list and the expiry (whole seconds)', () => {
    const claim = verifyUnsubscribeToken(valid('Some.One@Example.COM', 'news-2'), KEY, NOW);
    expect(claim).toEqual({ address: 'some.one@example.com', list: 'news-2', expiresAt: NOW + 86_400_000 });
    expect(valid()).toMatch(/^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]{22}$/);
  });

  it('refuses an expired token, another key, and a token of the longest address within the bound', () => {
    expect(verifyOrRefuse(valid(undefined, undefined, NOW - 1))).toBeUndefined();
    expect(verifyOrRefuse(valid(), Buffer.from('x'.repeat(48)))).toBeUndefined();
    const longest = `${'é'.repeat(300)}@${'a'.repeat(15)}.co`;
    const token = valid(longest, 'l'.repeat(64));
    expect(token.length).toBeLessThanOrEqual(MAX_TOKEN_CHARS);
    expect(verifyOrRefuse(token)?.address).toBe(longest);
  });

  it('any string is refused naming t (or is a valid token), quickly', () => {
    fc.assert(
      fc.property(fc.oneof(hostileString(10_000), fc.string(), fc.constantFrom(...HOSTILE_CHARS)), (text) => {
        const started = performance.now();
        verifyOrRefuse(text);
        expect(performance.now() - started).toBeLessThan(100);
      }),
      { numRuns: 300 },
    );
  });

  it('non-strings and huge values are refused before any work', () => {
    for (const value of [undefined, null, 42, {}, [], 'a'.repeat(10_000_000), `${'A'.repeat(MAX_TOKEN_CHARS)}.x`]) {
      const started = performance.now();
      expect(verifyOrRefuse(value)).toBeUndefined();
      expect(performance.now() - started).toBeLessThan(50);
    }
  });

  it('every mutation of a valid token is refused: a changed, inserted or removed character', () => {
    const token = valid();
    fc.assert(
      fc.property(
        fc.integer({ min: 0, max: token.length - 1 }),
        fc.constantFrom(...'ABCabc019_-.=+/ \r\n%'.split('')),
        fc.constantFrom('replace', 'insert', 'delete'),
        (index, char, how) => {
          const mutated =
            how === 'replace'
              ? `${token.slice(0, index)}${char}${token.slice(index + 1)}`
              : how === 'insert'
                ? `${token.slice(0, index)}${char}${token.slice(index)}`
                : `${token.slice(0, index)}${token.slice(index + 1)}`;
          if (mutated === token) return;
          expect(verifyOrRefuse(mutated)).toBeUndefined();
        },
      ),
      { numRuns: 500 },
    );
  });

  it('several keys (current and previous): a token signed with either is valid, with neither refused', () => {
    const previous = Buffer.from('p'.repeat(48));
    const other = Buffer.from('o'.repeat(48));
    const byPrevious = signUnsubscribeToken(
      { address: 'a@example.com', list: 'news', expiresAt: NOW + 1000 },
      previous,
    );
    expect(verifyOrRefuse(byPrevious, [KEY, previous])?.address).toBe('a@example.com');
    expect(verifyOrRefuse(valid(), [KEY, previous])?.address).toBe('someone@example.com');
    expect(verifyOrRefuse(byPrevious, [KEY, other])).toBeUndefined();
    expect(verifyOrRefuse(byPrevious, [])).toBeUndefined();
  });

  it('a payload re-signed by nobody (swapped between two tokens) is refused', () => {
    const [payloadA] = valid('a@example.com').split('.');
    const [, macB] = valid('b@example.com').split('.');
    expect(verifyOrRefuse(`${payloadA}.${macB}`)).toBeUndefined();
  });

  it('the shape check alone refuses what needs no key', () => {
    expect(tokenShapeProblem(valid())).toBeUndefined();
    expect(tokenShapeProblem('')).toMatch(/required/);
    expect(tokenShapeProblem('a.b')).toBeDefined();
    expect(tokenShapeProblem('x'.repeat(MAX_TOKEN_CHARS + 1))).toMatch(/at most/);
  });
});

describe('headers and pages', () => {
  it('the headers carry no CR or LF whatever the mailbox, and quote the token twice', () => {
    fc.assert(
      fc.property(fc.emailAddress(), (mailbox) => {
        const headers = buildUnsubscribeHeaders({ baseUrl: 'https://mailer.example.com', mailbox, token: valid() });
        expect(headers['List-Unsubscribe']).not.toMatch(/[\r\n]/);
        expect(headers['List-Unsubscribe'].split(valid()).length).toBe(3);
        expect(headers['List-Unsubscribe-Post']).toBe('List-Unsubscribe=One-Click');
      }),
      { numRuns: 100 },
    );
  });

  it('pages escape every value they show', () => {
    fc.assert(
      fc.property(hostileString(2_000), (text) => {
        const html = confirmationPage({ address: text, list: text, token: text }) + invalidLinkPage(text);
        expect(html).not.toContain('<script');
        expect(escapeHtml(text)).not.toMatch(/[<>"']/);
      }),
      { numRuns: 200 },
    );
  });
});
