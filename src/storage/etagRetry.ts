/**
 * Read-modify-write under an ETag: a writer reads a record, decides on what it read, and writes only if nobody has
 * written the record since (If-Match). A writer that loses that race (the table helpers' undefined: 412 on a replace,
 * 409 on an insert) reads again and decides again, a bounded number of times, so that contention cannot loop forever.
 */

/** Lost ETag races on an outbox record or a batch summary before giving up to the host's retry. */
export const MAX_RACES = 5;

/** What an attempt returns when its ETag-guarded write lost the race: read again and decide again. */
export const LOST_RACE: unique symbol = Symbol('lost the ETag race');
export type LostRace = typeof LOST_RACE;

/** Options of {@link retryLostRaces}. */
export interface RaceRetry<T> {
  /** Attempts at most: each one that returns LOST_RACE starts the next, up to this many. */
  maxRaces: number;
  /** Reads the current state, decides and writes; `race` is how many races were lost before it (0 for the first). */
  attempt: (race: number) => Promise<T | LostRace>;
  /** After the last attempt lost: the result to give instead, or throws. */
  exhausted: () => T;
  /** Waits a random time up to this long after every lost race, so that racing writers fall out of step. */
  jitterMs?: number;
}

/**
 * Runs `attempt` until it returns a result rather than LOST_RACE, at most `maxRaces` times, then `exhausted()`.
 * Only a lost race is retried: anything `attempt` throws (storage failing) propagates at once.
 */
export async function retryLostRaces<T>({ maxRaces, attempt, exhausted, jitterMs }: RaceRetry<T>): Promise<T> {
  for (let race = 0; race < maxRaces; race++) {
    const result = await attempt(race);
    if (result !== LOST_RACE) return result;
    if (jitterMs) await new Promise((resolve) => setTimeout(resolve, Math.random() * jitterMs));
  }
  return exhausted();
}
