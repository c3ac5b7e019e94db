/** Bounds on input checked before anything recursive or costly sees it: JSON nesting depth, number of values, string and total sizes; and the field paths that name them. */
import { MailError, type FieldProblem } from './errors';

/**
 * The deepest nesting of arrays and objects any input may have. JSON.stringify, zod, the canonical hash and the
 * template probe all recurse, and JSON.stringify throws a RangeError a few thousand levels down.
 */
export const MAX_JSON_DEPTH = 32;
/**
 * The most values a POST /api/messages body may hold, counted as arrays and objects opened plus the commas between
 * entries. 3,000 recipients as `{ address, name }`, 100 attachments, 50 headers and template data with a few
 * thousand rows fit well inside it; dense structure costs V8's JSON.parse 10 to 40 times more per byte than a string.
 */
export const MAX_BODY_JSON_VALUES = 50_000;
/** The same for a notification batch (POST /api/notifications or a mail-notifications message): 50,000 recipients. */
export const MAX_BATCH_JSON_VALUES = 1_000_000;
/** A reported path shows at most this much of each key: keys are caller input and may be huge. */
export const MAX_PATH_KEY_CHARS = 40;
/** Problem lists are cut here (the last entry counts the rest), so that one request cannot make a huge answer. */
export const MAX_REPORTED_PROBLEMS = 100;

export interface JsonLimits {
  /** Default MAX_JSON_DEPTH. */
  maxDepth?: number;
  maxValues: number;
}

const QUOTE = 0x22;
const BACKSLASH = 0x5c;
const COMMA = 0x2c;
const OPEN_BRACKET = 0x5b;
const CLOSE_BRACKET = 0x5d;
const OPEN_BRACE = 0x7b;
const CLOSE_BRACE = 0x7d;

/** One step of a field path: a key, or an array index. */
export type PathSegment = string | number;

function shownKey(key: string): string {
  return key.length > MAX_PATH_KEY_CHARS ? `${key.slice(0, MAX_PATH_KEY_CHARS)}…` : key;
}

/**
 * A field path as every error names it: `to[1]`, `data.order.items[3].sku`. `root` goes first (`data` for the
 * preview's `?data=`); an empty path is `(body)`.
 */
export function formatPath(segments: readonly PathSegment[], root = ''): string {
  let out = root;
  for (const segment of segments) {
    if (typeof segment === 'number') out += `[${segment}]`;
    else out += out ? `.${shownKey(segment)}` : shownKey(segment);
  }
  return out || '(body)';
}

const depthMessage = (maxDepth: number) =>
  `nests arrays and objects more than ${maxDepth} levels deep: flatten it (at most ${maxDepth} levels)`;
const valuesMessage = (maxValues: number) =>
  `holds more than ${maxValues} values (array entries, object members, arrays and objects): split or shorten it`;

/**
 * Scans JSON text before JSON.parse sees it: returns a problem naming the path of the first container nested deeper
 * than `maxDepth`, or of the container in which the count of values passes `maxValues`; undefined otherwise. It
 * does not validate the syntax (JSON.parse does, afterwards); an unterminated string simply ends the scan.
 *
 * Linear: every character is looked at a bounded number of times. Strings are skipped with indexOf (one search for
 * the closing quote; backslash positions are searched forwards only, so each character is searched once overall),
 * and a string with escapes is walked once, char by char, from its first backslash.
 */
export function scanJsonText(text: string, limits: JsonLimits, root = ''): FieldProblem | undefined {
  const maxDepth = limits.maxDepth ?? MAX_JSON_DEPTH;
  // The open containers: whether each is an array, the index of its current entry, and for objects where the
  // current member's key is in the text. At most maxDepth of them.
  const isArray: boolean[] = [];
  const index: number[] = [];
  const keyStart: number[] = [];
  const keyEnd: number[] = [];
  let depth = 0;
  let expectKey = false;
  let values = 0;
  let backslash = -2; // the next backslash at or after the current string, -1 when there is none, -2 not searched
  const n = text.length;

  // The segment by which the current entry of container k sits in it: its index, or its key.
  const segmentOf = (k: number): PathSegment => {
    if (isArray[k]) return index[k] as number;
    const start = keyStart[k] as number;
    if (start < 0) return '?';
    const raw = text.slice(start, (keyEnd[k] as number) + 1);
    try {
      return JSON.parse(raw) as string;
    } catch {
      return raw.slice(1, -1);
    }
  };
  // The path of the container at nesting level `level` (0 is the outermost), or of the next one to open there.
  const pathAt = (level: number): string => {
    const segments: PathSegment[] = [];
    for (let k = 0; k < level; k++) segments.push(segmentOf(k));
    return formatPath(segments, root);
  };

  for (let i = 0; i < n; i++) {
    const c = text.charCodeAt(i);
    if (c === QUOTE) {
      const start = i;
      let end = text.indexOf('"', i + 1);
      if (end === -1) return undefined;
      if (backslash !== -1 && backslash <= i) backslash = text.indexOf('\\', i + 1);
      if (backslash !== -1 && backslash < end) {
        // Escapes before the first quote: walk from the first backslash, skipping each escaped character.
        let j = backslash;
        while (j < n) {
          const d = text.charCodeAt(j);
          if (d === BACKSLASH) j += 2;
          else if (d === QUOTE) break;
          else j++;
        }
        if (j >= n) return undefined;
        end = j;
      }
      if (depth > 0 && expectKey) {
        keyStart[depth - 1] = start;
        keyEnd[depth - 1] = end;
        expectKey = false;
      }
      i = end;
    } else if (c === OPEN_BRACKET || c === OPEN_BRACE) {
      values++;
      if (depth >= maxDepth) return { path: pathAt(depth), message: depthMessage(maxDepth) };
      if (values > limits.maxValues)
        return { path: pathAt(Math.max(0, depth - 1)), message: valuesMessage(limits.maxValues) };
      isArray[depth] = c === OPEN_BRACKET;
      index[depth] = 0;
      keyStart[depth] = -1;
      keyEnd[depth] = -1;
      depth++;
      expectKey = c === OPEN_BRACE;
    } else if (c === CLOSE_BRACKET || c === CLOSE_BRACE) {
      if (depth > 0) depth--;
      expectKey = false;
    } else if (c === COMMA) {
      values++;
      if (values > limits.maxValues)
        return { path: pathAt(Math.max(0, depth - 1)), message: valuesMessage(limits.maxValues) };
      if (depth > 0) {
        if (isArray[depth - 1]) index[depth - 1] = (index[depth - 1] as number) + 1;
        else expectKey = true;
      }
    }
  }
  return undefined;
}

/** A plain array or object: what JSON.parse makes. Anything else (a Buffer, a Date) is a leaf here. */
export function isContainer(value: unknown): value is Record<string, unknown> | unknown[] {
  if (value === null || typeof value !== 'object') return false;
  if (Array.isArray(value)) return true;
  const proto = Object.getPrototypeOf(value) as unknown;
  return proto === Object.prototype || proto === null;
}

export interface JsonInspection {
  /** The first container nested too deep, or the container where the value count passed its bound. */
  problem?: FieldProblem;
  /** The JSON text length of the value, in characters (escapes not counted); only complete without a problem. */
  chars: number;
  /** The first string (value or key) longer than `maxStringChars`, if one was asked for. */
  longString?: { path: string; length: number };
}

/**
 * Walks an already parsed value (a queue message the host decoded, template data, a body built in code) without
 * recursion: depth and value count as scanJsonText checks them on text, plus its JSON size and its longest string.
 * Stops at the first depth or count problem. Linear in the size of the value.
 */
export function inspectJson(
  value: unknown,
  limits: JsonLimits & { maxStringChars?: number },
  root = '',
): JsonInspection {
  const maxDepth = limits.maxDepth ?? MAX_JSON_DEPTH;
  const maxString = limits.maxStringChars ?? Infinity;
  let chars = 0;
  let values = 1; // the outer container, as the text scan counts it
  let longString: JsonInspection['longString'];
  const leaf = (v: unknown, at: () => string) => {
    if (typeof v === 'string') {
      chars += v.length + 2;
      if (v.length > maxString && !longString) longString = { path: at(), length: v.length };
    } else if (typeof v === 'number' || typeof v === 'boolean') chars += String(v).length;
    else chars += 4; // null, and what JSON would drop or turn into null
  };
  if (!isContainer(value)) {
    leaf(value, () => formatPath([], root));
    return { chars, ...(longString ? { longString } : {}) };
  }
  interface Frame {
    container: Record<string, unknown> | unknown[];
    keys: string[] | undefined;
    next: number;
    segment: PathSegment | undefined;
  }
  const frameOf = (container: Record<string, unknown> | unknown[], segment: PathSegment | undefined): Frame => ({
    container,
    keys: Array.isArray(container) ? undefined : Object.keys(container),
    next: 0,
    segment,
  });
  const stack: Frame[] = [frameOf(value, undefined)];
  const pathTo = (extra?: PathSegment): string => {
    const segments: PathSegment[] = [];
    for (const frame of stack) if (frame.segment !== undefined) segments.push(frame.segment);
    if (extra !== undefined) segments.push(extra);
    return formatPath(segments, root);
  };
  chars += 2;
  if (maxDepth < 1) return { problem: { path: pathTo(), message: depthMessage(maxDepth) }, chars };
  while (stack.length > 0) {
    const frame = stack[stack.length - 1] as Frame;
    const length = frame.keys ? frame.keys.length : (frame.container as unknown[]).length;
    if (frame.next >= length) {
      stack.pop();
      continue;
    }
    const i = frame.next++;
    const segment: PathSegment = frame.keys ? (frame.keys[i] as string) : i;
    const child = frame.keys
      ? (frame.container as Record<string, unknown>)[segment as string]
      : (frame.container as unknown[])[i];
    // Counted as scanJsonText counts on text: each container, and each comma between entries.
    if (i > 0) values++;
    if (isContainer(child)) values++;
    if (values > limits.maxValues) {
      return { problem: { path: pathTo(), message: valuesMessage(limits.maxValues) }, chars };
    }
    if (i > 0) chars += 1; // the comma
    if (frame.keys) {
      leaf(segment, () => pathTo(segment)); // the key, and its colon
      chars += 1;
    }
    if (isContainer(child)) {
      if (stack.length >= maxDepth) {
        return { problem: { path: pathTo(segment), message: depthMessage(maxDepth) }, chars };
      }
      chars += 2;
      stack.push(frameOf(child, segment));
    } else {
      leaf(child, () => pathTo(segment));
    }
  }
  return { chars, ...(longString ? { longString } : {}) };
}

/** MailError INVALID_MESSAGE for `problems`, cut to MAX_REPORTED_PROBLEMS (see capProblems). */
export function invalidInput(what: string, problems: FieldProblem[]): MailError {
  const details = capProblems(problems);
  const shown = details.slice(0, 10).map((d) => `${d.path}: ${d.message}`);
  const more = details.length > 10 ? ` (and ${problems.length - 10} more)` : '';
  return new MailError('INVALID_MESSAGE', `${what}: ${shown.join('; ')}${more}`, { details });
}

/**
 * The first MAX_REPORTED_PROBLEMS - 1 problems and one that counts the rest, when there are more: a body of
 * 50,000 bad entries gets a short answer, and still the first fields to fix.
 */
export function capProblems(problems: FieldProblem[]): FieldProblem[] {
  if (problems.length <= MAX_REPORTED_PROBLEMS) return problems;
  const kept = problems.slice(0, MAX_REPORTED_PROBLEMS - 1);
  const rest = problems.length - kept.length;
  return [...kept, { path: '(body)', message: `and ${rest} more problems of the same kind, not listed` }];
}

/**
 * JSON.parse behind scanJsonText: throws MailError INVALID_MESSAGE naming the too-deep (or too-full) field before
 * parsing; a syntax error is thrown as JSON.parse throws it (a SyntaxError), for the caller to word.
 */
export function parseBoundedJson(text: string, limits: JsonLimits, root = '', what = 'Invalid request body'): unknown {
  const problem = scanJsonText(text, limits, root);
  if (problem) throw invalidInput(what, [problem]);
  const value = JSON.parse(text) as unknown;
  if (value !== null && typeof value === 'object') {
    scanned.set(value, { maxDepth: limits.maxDepth ?? MAX_JSON_DEPTH, maxValues: limits.maxValues });
  }
  return value;
}

/**
 * Values parseBoundedJson returned, with the bounds their text was scanned against: walking them again (parse
 * functions bound what they are given, whoever calls them) would cost as much as the scan did, for nothing.
 */
const scanned = new WeakMap<object, { maxDepth: number; maxValues: number }>();

/**
 * The depth or size problem of a value a parse function was handed, or undefined: nothing when parseBoundedJson
 * already scanned it within these bounds, else inspectJson's walk.
 */
export function boundsProblem(value: unknown, limits: JsonLimits, root = ''): FieldProblem | undefined {
  if (value !== null && typeof value === 'object') {
    const done = scanned.get(value);
    if (done && done.maxDepth <= (limits.maxDepth ?? MAX_JSON_DEPTH) && done.maxValues <= limits.maxValues) {
      return undefined;
    }
  }
  return inspectJson(value, limits, root).problem;
}

/** `value` without its trailing slashes; a loop, since /\/+$/ retries every start inside a long run of slashes. */
export function trimTrailingSlashes(value: string): string {
  let end = value.length;
  while (end > 0 && value.charCodeAt(end - 1) === 0x2f) end--;
  return value.slice(0, end);
}
