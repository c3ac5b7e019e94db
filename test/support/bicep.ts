/**
 * A Bicep reader for the offline checks of infra/ (the Bicep compiler cannot be installed where this project is
 * built): a tokenizer (comments, interpolated and multi-line strings, brackets), the top-level declarations, and
 * name resolution. It is not the compiler: types, property names of resource bodies and expressions' meaning are
 * left to `az bicep build`, which the CI workflow runs.
 */
import { readFileSync } from 'node:fs';

/** One token. Strings keep their raw text; `parts` are the literal pieces of a string without interpolation. */
export interface Token {
  kind: 'ident' | 'number' | 'string' | 'punct' | 'newline';
  text: string;
  line: number;
  /** For strings: the string's value when it has no interpolation. */
  value?: string;
  /** For strings with `${…}`: each interpolated expression's tokens. */
  interpolations?: Token[][];
}

/** A Bicep syntax problem, with the file and line. */
export class BicepSyntaxError extends Error {}

const PUNCT = ['?.', '??', '==', '!=', '<=', '>=', '&&', '||', '=>', '::', '.?'];

/** Splits Bicep source into tokens; throws BicepSyntaxError on an unterminated string or comment, or a bad bracket. */
export function tokenize(source: string, file = '<bicep>', firstLine = 1): Token[] {
  const tokens: Token[] = [];
  const stack: Array<{ open: string; line: number }> = [];
  let i = 0;
  let line = firstLine;
  const fail = (message: string, at = line): never => {
    throw new BicepSyntaxError(`${file}:${at}: ${message}`);
  };
  const pairs: Record<string, string> = { '(': ')', '[': ']', '{': '}' };

  /** Reads a '…' string starting at source[i] === "'" (interpolation allowed). */
  const readString = (): Token => {
    const start = line;
    let j = i + 1;
    let value = '';
    const interpolations: Token[][] = [];
    for (;;) {
      if (j >= source.length) fail('unterminated string', start);
      const c = source[j]!;
      if (c === '\n') fail('a single-quoted string cannot span lines (use a multi-line string)', start);
      if (c === '\\') {
        const next = source[j + 1];
        const escapes: Record<string, string> = { "'": "'", '\\': '\\', n: '\n', r: '\r', t: '\t', $: '$' };
        if (next === undefined || !(next in escapes)) fail(`unknown escape \\${next ?? ''}`, start);
        value += escapes[next as string];
        j += 2;
        continue;
      }
      if (c === "'") break;
      if (c === '$' && source[j + 1] === '{') {
        // The interpolated expression ends at the matching brace; strings inside it are tokenized recursively.
        let depth = 1;
        let k = j + 2;
        while (depth > 0) {
          if (k >= source.length) fail('unterminated ${…} in a string', start);
          const d = source[k]!;
          if (d === "'") {
            // A string inside the expression: skip to its closing quote (escapes included).
            k += 1;
            while (k < source.length && source[k] !== "'") k += source[k] === '\\' ? 2 : 1;
            if (k >= source.length) fail('unterminated string inside ${…}', start);
            k += 1;
            continue;
          }
          if (d === '{') depth += 1;
          if (d === '}') depth -= 1;
          k += 1;
        }
        interpolations.push(tokenize(source.slice(j + 2, k - 1), file, start).filter((t) => t.kind !== 'newline'));
        value += '\u0000';
        j = k;
        continue;
      }
      value += c;
      j += 1;
    }
    const text = source.slice(i, j + 1);
    return interpolations.length
      ? { kind: 'string', text, line: start, interpolations }
      : { kind: 'string', text, line: start, value };
  };

  while (i < source.length) {
    const c = source[i]!;
    if (c === '\n') {
      tokens.push({ kind: 'newline', text: '\n', line });
      line += 1;
      i += 1;
    } else if (c === ' ' || c === '\t' || c === '\r') {
      i += 1;
    } else if (c === '#' && (i === 0 || source[i - 1] === '\n')) {
      // A pragma (`#disable-next-line rule`) runs to the end of its line.
      while (i < source.length && source[i] !== '\n') i += 1;
    } else if (source.startsWith('//', i)) {
      while (i < source.length && source[i] !== '\n') i += 1;
    } else if (source.startsWith('/*', i)) {
      const end = source.indexOf('*/', i + 2);
      if (end < 0) fail('unterminated /* comment');
      line += source.slice(i, end).split('\n').length - 1;
      i = end + 2;
    } else if (source.startsWith("'''", i)) {
      const end = source.indexOf("'''", i + 3);
      if (end < 0) fail('unterminated multi-line string');
      const text = source.slice(i, end + 3);
      tokens.push({ kind: 'string', text, line, value: text.slice(3, -3) });
      line += text.split('\n').length - 1;
      i = end + 3;
    } else if (c === "'") {
      const token = readString();
      tokens.push(token);
      i += token.text.length;
    } else if (/[A-Za-z_]/.test(c)) {
      const m = /^[A-Za-z_][A-Za-z0-9_]*/.exec(source.slice(i))![0];
      tokens.push({ kind: 'ident', text: m, line });
      i += m.length;
    } else if (/[0-9]/.test(c)) {
      const m = /^[0-9]+(\.[0-9]+)?/.exec(source.slice(i))![0];
      tokens.push({ kind: 'number', text: m, line });
      i += m.length;
    } else {
      const two = source.slice(i, i + 2);
      const text = PUNCT.includes(two) ? two : c;
      if (!/^[-+*/%!<>=?:.,;@&|(){}[\]]+$/.test(text)) fail(`unexpected character ${JSON.stringify(c)}`);
      if (text in pairs) stack.push({ open: text, line });
      if (text === ')' || text === ']' || text === '}') {
        const open = stack.pop();
        if (!open || pairs[open.open] !== text)
          fail(`unbalanced ${text}${open ? ` (opened ${open.open} at line ${open.line})` : ''}`);
      }
      tokens.push({ kind: 'punct', text, line });
      i += text.length;
    }
  }
  const open = stack.pop();
  if (open) fail(`${open.open} opened here is never closed`, open.line);
  return tokens;
}

/** A top-level declaration. */
export interface Declaration {
  keyword: 'targetScope' | 'param' | 'var' | 'resource' | 'module' | 'output' | 'metadata' | 'type' | 'func' | 'import';
  name: string;
  line: number;
  /** Decorators before it, by name, with the raw tokens of their arguments. */
  decorators: Map<string, Token[]>;
  /** param/output: the declared type; resource: 'Type@apiVersion'; module: the path. */
  typeOrPath?: string | undefined;
  /** Whether it is `existing` (resources). */
  existing?: boolean;
  /** The tokens after `=` (the default, value or body); empty for a param without default. */
  body: Token[];
}

const KEYWORDS = new Set([
  'targetScope',
  'param',
  'var',
  'resource',
  'module',
  'output',
  'metadata',
  'type',
  'func',
  'import',
]);

/** A parsed Bicep file. */
export interface BicepFile {
  file: string;
  tokens: Token[];
  declarations: Declaration[];
}

/** Reads and parses `file`; throws BicepSyntaxError naming the file and line. */
export function parseBicep(file: string, source = readFileSync(file, 'utf8')): BicepFile {
  const tokens = tokenize(source, file);
  const declarations: Declaration[] = [];
  let depth = 0;
  let current: Declaration | undefined;
  let pending = new Map<string, Token[]>();
  for (let i = 0; i < tokens.length; i++) {
    const t = tokens[i]!;
    const atLineStart = i === 0 || tokens[i - 1]!.kind === 'newline';
    if (depth === 0 && atLineStart && t.kind === 'punct' && t.text === '@') {
      // A decorator: @name or @name(args) or @sys.name(args).
      let j = i + 1;
      let name = tokens[j]?.text ?? '';
      if (tokens[j + 1]?.text === '.') {
        j += 2;
        name = tokens[j]?.text ?? '';
      }
      const args: Token[] = [];
      if (tokens[j + 1]?.text === '(') {
        let d = 0;
        for (j = j + 1; j < tokens.length; j++) {
          const a = tokens[j]!;
          if (a.text === '(' || a.text === '[' || a.text === '{') d += 1;
          if (a.text === ')' || a.text === ']' || a.text === '}') d -= 1;
          args.push(a);
          if (d === 0) break;
        }
      }
      pending.set(name, args.slice(1, -1));
      i = j;
      continue;
    }
    if (depth === 0 && atLineStart && t.kind === 'ident' && KEYWORDS.has(t.text)) {
      const keyword = t.text as Declaration['keyword'];
      const decl: Declaration = { keyword, name: '', line: t.line, decorators: pending, body: [] };
      pending = new Map();
      let j = i + 1;
      if (keyword === 'targetScope') {
        decl.name = 'targetScope';
      } else {
        decl.name = tokens[j]?.text ?? '';
        j += 1;
        if (keyword === 'param' || keyword === 'output') {
          const typeTokens: string[] = [];
          while (j < tokens.length && tokens[j]!.text !== '=' && tokens[j]!.kind !== 'newline') {
            typeTokens.push(tokens[j]!.text);
            j += 1;
          }
          decl.typeOrPath = typeTokens.join('');
        } else if (keyword === 'resource' || keyword === 'module') {
          decl.typeOrPath = tokens[j]?.value;
          j += 1;
          if (tokens[j]?.text === 'existing') {
            decl.existing = true;
            j += 1;
          }
        }
      }
      if (tokens[j]?.text === '=') j += 1;
      else if (keyword !== 'param') {
        throw new BicepSyntaxError(`${file}:${t.line}: ${keyword} ${decl.name} has no "="`);
      }
      declarations.push(decl);
      current = decl;
      i = j - 1;
      continue;
    }
    if (t.kind === 'punct' && (t.text === '(' || t.text === '[' || t.text === '{')) depth += 1;
    if (t.kind === 'punct' && (t.text === ')' || t.text === ']' || t.text === '}')) depth -= 1;
    if (current && !(depth === 0 && t.kind === 'newline')) current.body.push(t);
    if (depth === 0 && t.kind === 'newline') current = undefined;
  }
  return { file, tokens, declarations };
}

/** Bicep's built-in functions and namespaces this project may use (the `sys` and `az` namespaces). */
export const BUILT_INS = new Set([
  'sys',
  'az',
  'any',
  'array',
  'bool',
  'int',
  'json',
  'string',
  'concat',
  'contains',
  'empty',
  'first',
  'last',
  'length',
  'take',
  'skip',
  'union',
  'intersection',
  'items',
  'filter',
  'map',
  'reduce',
  'sort',
  'toLower',
  'toUpper',
  'trim',
  'uniqueString',
  'guid',
  'format',
  'replace',
  'split',
  'substring',
  'startsWith',
  'endsWith',
  'indexOf',
  'lastIndexOf',
  'base64',
  'uri',
  'environment',
  'subscription',
  'resourceGroup',
  'tenant',
  'deployment',
  'deployer',
  'resourceId',
  'subscriptionResourceId',
  'tenantResourceId',
  'extensionResourceId',
  'reference',
  'loadJsonContent',
  'loadTextContent',
  'min',
  'max',
  'range',
  'coalesce',
  'padLeft',
  'objectKeys',
]);

/** Words that are syntax, not names. */
const SYNTAX = new Set([
  'true',
  'false',
  'null',
  'if',
  'for',
  'in',
  'existing',
  'string',
  'int',
  'bool',
  'object',
  'array',
]);

/** Every declared name (params, vars, resources, modules, imports, functions, types). */
export function declaredNames(bicep: BicepFile): Set<string> {
  return new Set(bicep.declarations.filter((d) => d.keyword !== 'output').map((d) => d.name));
}

/**
 * Names used in expressions that nothing declares: not a declaration, a loop or lambda variable, a built-in, a
 * property key (`key:` at the start of an object entry) or a property access (`.name`). Each as `name (line N)`.
 */
export function unresolvedNames(bicep: BicepFile): string[] {
  const declared = declaredNames(bicep);
  const problems: string[] = [];
  for (const decl of bicep.declarations) {
    const locals = new Set<string>();
    const walk = (tokens: Token[]) => {
      // Loop variables (`for x in`, `for (x, i) in`) and lambda parameters (`x =>`, `(a, b) =>`) are local.
      tokens.forEach((t, i) => {
        if (t.text === 'for') {
          for (let j = i + 1; j < tokens.length && tokens[j]!.text !== 'in'; j++) {
            if (tokens[j]!.kind === 'ident') locals.add(tokens[j]!.text);
          }
        }
        if (t.text === '=>') {
          for (let j = i - 1; j >= 0; j--) {
            const p = tokens[j]!;
            if (p.kind === 'ident') locals.add(p.text);
            else if (p.text !== ',' && p.text !== ')' && p.text !== '(') break;
            if (p.text === '(') break;
          }
        }
      });
      tokens.forEach((t, i) => {
        if (t.kind === 'string') t.interpolations?.forEach(walk);
        if (t.kind !== 'ident') return;
        const previous = tokens[i - 1];
        const next = tokens[i + 1];
        if (previous && (previous.text === '.' || previous.text === '?.' || previous.text === '::')) return;
        const isKey =
          next?.text === ':' &&
          (!previous || previous.kind === 'newline' || previous.text === '{' || previous.text === ',');
        if (isKey || SYNTAX.has(t.text) || BUILT_INS.has(t.text) || declared.has(t.text) || locals.has(t.text)) return;
        problems.push(`${t.text} (line ${t.line})`);
      });
    };
    walk(decl.body);
    for (const args of decl.decorators.values()) walk(args);
  }
  return problems;
}

/** Params declared but never used in any declaration's body (Bicep's no-unused-params). */
export function unusedParams(bicep: BicepFile): string[] {
  const used = new Set<string>();
  const collect = (tokens: Token[]) =>
    tokens.forEach((t) => {
      if (t.kind === 'ident') used.add(t.text);
      t.interpolations?.forEach(collect);
    });
  for (const decl of bicep.declarations) collect(decl.body);
  return bicep.declarations.filter((d) => d.keyword === 'param' && !used.has(d.name)).map((d) => d.name);
}

/** The declaration named `name` of kind `keyword`; throws when there is none. */
export function declaration(bicep: BicepFile, keyword: Declaration['keyword'], name: string): Declaration {
  const found = bicep.declarations.find((d) => d.keyword === keyword && d.name === name);
  if (!found) throw new Error(`${bicep.file}: no ${keyword} ${name}`);
  return found;
}

/** Source-like text of tokens, for comparing expressions: single spaces between tokens, none around `.`, `(`, `)`. */
export function text(tokens: Token[]): string {
  return tokens
    .filter((t) => t.kind !== 'newline')
    .map((t) => t.text)
    .join(' ')
    .replace(/ ?([.()[\]]) ?/g, '$1')
    .replace(/! /g, '!')
    .replace(/ ,/g, ',');
}

/**
 * The entries `key: value` of the object literal that starts at `tokens[0]` (`{`), top level only, in order. Values
 * are token lists (a nested object or array whole).
 */
export function objectEntries(tokens: Token[]): Array<{ key: string; value: Token[] }> {
  if (tokens[0]?.text !== '{') throw new Error(`not an object literal: ${text(tokens.slice(0, 5))}`);
  const entries: Array<{ key: string; value: Token[] }> = [];
  let depth = 0;
  let entry: { key: string; value: Token[] } | undefined;
  for (let i = 0; i < tokens.length; i++) {
    const t = tokens[i]!;
    if (t.text === '{' || t.text === '[' || t.text === '(') depth += 1;
    if (t.text === '}' || t.text === ']' || t.text === ')') depth -= 1;
    if (depth === 0) break;
    if (depth === 1 && (t.kind === 'ident' || t.kind === 'string') && tokens[i + 1]?.text === ':') {
      const previous = tokens[i - 1]!;
      if (previous.kind === 'newline' || previous.text === '{' || previous.text === ',') {
        entry = { key: t.kind === 'string' ? (t.value ?? t.text) : t.text, value: [] };
        entries.push(entry);
        i += 1;
        continue;
      }
    }
    if (entry && !(depth === 1 && (t.kind === 'newline' || t.text === ','))) entry.value.push(t);
    else if (depth === 1) entry = undefined;
  }
  return entries;
}

/** The value of `key` in an object literal, searched at every depth (first match); undefined when absent. */
export function findProperty(tokens: Token[], key: string): Token[] | undefined {
  for (let i = 0; i < tokens.length; i++) {
    if (tokens[i]!.text !== '{') continue;
    const hit = objectEntries(tokens.slice(i)).find((e) => e.key === key);
    if (hit) return hit.value;
  }
  return undefined;
}

/** The string values of an array literal (`['a', 'b']` or one per line). */
export function stringArray(tokens: Token[]): string[] {
  return tokens.filter((t) => t.kind === 'string').map((t) => t.value ?? t.text);
}
