import { describe, expect, it } from 'vitest';
import { LOST_RACE, retryLostRaces } from '../../src/storage/etagRetry';

describe('retryLostRaces', () => {
  it('returns the first attempt that does not lose the race, telling each attempt how many were lost before it', async () => {
    const seen: number[] = [];
    const result = await retryLostRaces({
      maxRaces: 5,
      attempt: (race) => {
        seen.push(race);
        return Promise.resolve(race < 2 ? LOST_RACE : `won at ${race}`);
      },
      exhausted: () => 'exhausted',
    });
    expect(result).toBe('won at 2');
    expect(seen).toEqual([0, 1, 2]);
  });

  it('gives up after maxRaces lost races with what exhausted gives, or its error', async () => {
    let attempts = 0;
    const lose = (): Promise<typeof LOST_RACE> => {
      attempts++;
      return Promise.resolve(LOST_RACE);
    };
    expect(await retryLostRaces({ maxRaces: 3, attempt: lose, exhausted: () => 'fallback' })).toBe('fallback');
    expect(attempts).toBe(3);
    await expect(
      retryLostRaces({
        maxRaces: 2,
        attempt: lose,
        exhausted: () => {
          throw new Error('lost the race 2 times');
        },
      }),
    ).rejects.toThrow('lost the race 2 times');
    expect(attempts).toBe(5);
  });

  it('does not retry a failure: only a lost race is retried', async () => {
    let attempts = 0;
    await expect(
      retryLostRaces({
        maxRaces: 5,
        attempt: () => {
          attempts++;
          return Promise.reject(new Error('storage failed'));
        },
        exhausted: () => undefined,
      }),
    ).rejects.toThrow('storage failed');
    expect(attempts).toBe(1);
  });

  it('an undefined result ends the loop like any other result', async () => {
    let attempts = 0;
    const result = await retryLostRaces({
      maxRaces: 5,
      attempt: () => {
        attempts++;
        return Promise.resolve(undefined);
      },
      exhausted: () => 'exhausted',
    });
    expect(result).toBeUndefined();
    expect(attempts).toBe(1);
  });
});
