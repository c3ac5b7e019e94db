/**
 * How the stores map their values onto Table entities, which hold flat properties only: optional fields copied when
 * set, nested values kept as JSON text, and string properties kept under the service's size limit.
 */
import type { ClassifiedError } from '../errors';

/** Table string properties hold at most 32K UTF-16 characters: the stores keep theirs below this. */
export const MAX_STRING_PROPERTY_CHARS = 30_000;

/** The fields `keys` of `source` that are set (neither undefined nor null): an entity or value has no empty fields. */
export function presentFields<T extends object, K extends keyof T>(source: T, keys: readonly K[]): Partial<Pick<T, K>> {
  const present: Partial<Pick<T, K>> = {};
  for (const key of keys) {
    if (source[key] !== undefined && source[key] !== null) present[key] = source[key];
  }
  return present;
}

/** Parses JSON text kept in a string property; `fallback` when there is none or it is not JSON (clipped, say). */
export function parseJsonProperty<T>(text: string | undefined, fallback: T): T {
  if (!text) return fallback;
  try {
    return JSON.parse(text) as T;
  } catch {
    return fallback;
  }
}

/**
 * The ClassifiedError kept as JSON in a string property, or undefined when there is none. Text that is not JSON (cut
 * at the property limit) becomes an UNKNOWN error quoting it, `transient` as the store assumes for an unknown cause.
 */
export function parseErrorProperty(text: string | undefined, transient: boolean): ClassifiedError | undefined {
  if (!text) return undefined;
  return parseJsonProperty<ClassifiedError>(text, {
    code: 'UNKNOWN',
    message: text.slice(0, 500),
    transient,
    hint: '',
  });
}
