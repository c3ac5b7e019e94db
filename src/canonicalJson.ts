/** Canonical JSON: object keys sorted, so that equal content hashes equally whatever its key order. */
import { isContainer } from './inputBounds';

/** JSON with object keys sorted, so that equal requests hash equally whatever their key order. */
export function canonicalJson(value: unknown): string {
  return JSON.stringify(value, (_key, v: unknown) =>
    v && typeof v === 'object' && !Array.isArray(v) && !Buffer.isBuffer(v)
      ? Object.fromEntries(
          Object.entries(v as Record<string, unknown>).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)),
        )
      : v,
  );
}

/**
 * Canonical JSON (keys sorted) built without recursion, for values too deep for JSON.stringify: the same text that
 * {@link canonicalJson} gives for parsed JSON, so a hash over it identifies such content as stably.
 */
export function canonicalJsonIterative(value: unknown): string {
  const out: string[] = [];
  // Work items: a value to write, or a literal piece of text.
  const work: Array<{ value: unknown } | { text: string }> = [{ value }];
  while (work.length > 0) {
    const item = work.pop() as { value: unknown } | { text: string };
    if ('text' in item) {
      out.push(item.text);
      continue;
    }
    const v = item.value;
    if (Array.isArray(v)) {
      const pieces: Array<{ value: unknown } | { text: string }> = [{ text: '[' }];
      v.forEach((entry, i) => {
        if (i > 0) pieces.push({ text: ',' });
        pieces.push({ value: entry === undefined || typeof entry === 'function' ? null : entry });
      });
      pieces.push({ text: ']' });
      for (let k = pieces.length - 1; k >= 0; k--) work.push(pieces[k] as { value: unknown } | { text: string });
    } else if (isContainer(v)) {
      const object = v as Record<string, unknown>;
      const keys = Object.keys(object)
        .filter((k) => object[k] !== undefined && typeof object[k] !== 'function')
        .sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
      const pieces: Array<{ value: unknown } | { text: string }> = [{ text: '{' }];
      keys.forEach((key, i) => {
        pieces.push({ text: `${i > 0 ? ',' : ''}${JSON.stringify(key)}:` });
        pieces.push({ value: object[key] });
      });
      pieces.push({ text: '}' });
      for (let k = pieces.length - 1; k >= 0; k--) work.push(pieces[k] as { value: unknown } | { text: string });
    } else {
      out.push(JSON.stringify(v) ?? 'null');
    }
  }
  return out.join('');
}
