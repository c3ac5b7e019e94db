/** HTTP route templates as the Functions host reads them (ASP.NET style): `messages/{id}`, `{id:guid}`, `{id?}`, `{*rest}`. */

export interface CompiledRoute {
  template: string;
  /** Per-segment ranks (0 literal … 3 catch-all), compared to pick the most specific match as ASP.NET routing does. */
  rank: number[];
  match(path: string): Record<string, string> | undefined;
}

interface Param {
  name: string;
  optional: boolean;
  catchAll: boolean;
  constraints: string[];
  defaultValue: string | undefined;
}

const GUID = /^[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}$|^[({][0-9a-f-]{36}[)}]$/i;

function numberArgs(constraint: string): number[] {
  return (/\(([^)]*)\)/.exec(constraint)?.[1] ?? '').split(',').map(Number);
}

/** The inline constraints the host (ASP.NET Core routing) supports; unknown ones are accepted as-is. */
function satisfies(value: string, constraint: string): boolean {
  const name = constraint.replace(/\(.*$/, '').toLowerCase();
  const [a = NaN, b = NaN] = numberArgs(constraint);
  switch (name) {
    case 'int':
      return /^-?\d+$/.test(value) && Math.abs(Number(value)) <= 2 ** 31;
    case 'long':
      return /^-?\d+$/.test(value);
    case 'decimal':
    case 'double':
    case 'float':
      return value.trim() !== '' && Number.isFinite(Number(value));
    case 'bool':
      return /^(true|false)$/i.test(value);
    case 'guid':
      return GUID.test(value);
    case 'datetime':
      return !Number.isNaN(Date.parse(value));
    case 'alpha':
      return /^[a-z]+$/i.test(value);
    case 'minlength':
      return value.length >= a;
    case 'maxlength':
      return value.length <= a;
    case 'length':
      return Number.isNaN(b) ? value.length === a : value.length >= a && value.length <= b;
    case 'min':
      return Number(value) >= a;
    case 'max':
      return Number(value) <= a;
    case 'range':
      return Number(value) >= a && Number(value) <= b;
    case 'regex': {
      const source = /^regex\((.*)\)$/i.exec(constraint)?.[1];
      return source === undefined || new RegExp(source, 'i').test(value);
    }
    default:
      return true;
  }
}

function parseParam(body: string): Param {
  let text = body;
  const catchAll = text.startsWith('*');
  text = text.replace(/^\*{1,2}/, '');
  let defaultValue: string | undefined;
  const eq = text.indexOf('=');
  if (eq >= 0) {
    defaultValue = text.slice(eq + 1);
    text = text.slice(0, eq);
  }
  const optional = text.endsWith('?');
  if (optional) text = text.slice(0, -1);
  // Constraints are separated by ':' but a regex(...) argument may contain ':' itself.
  const parts = text.match(/(?:[^:(]+(?:\([^)]*\))?)/g) ?? [text];
  const [name = '', ...constraints] = parts;
  return { name, optional, catchAll, constraints, defaultValue };
}

const escapeRegExp = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

/** Compiles a route template (without the route prefix). */
export function compileRoute(template: string): CompiledRoute {
  const segments = template
    .replace(/^\/+|\/+$/g, '')
    .split('/')
    .filter(Boolean);
  const params: Param[] = [];
  const rank: number[] = [];
  let pattern = '^';
  for (const segment of segments) {
    const pieces = segment.split(/(\{[^}]*\})/).filter(Boolean);
    const only = pieces.length === 1 && pieces[0]?.startsWith('{') ? parseParam(pieces[0].slice(1, -1)) : undefined;
    if (only?.catchAll) {
      params.push(only);
      rank.push(3);
      pattern += '(?:/(.*))?';
      continue;
    }
    if (only && (only.optional || only.defaultValue !== undefined)) {
      params.push(only);
      rank.push(2);
      pattern += '(?:/([^/]+))?';
      continue;
    }
    pattern += '/';
    let segmentRank = 0;
    for (const piece of pieces) {
      if (piece.startsWith('{')) {
        const param = parseParam(piece.slice(1, -1));
        params.push(param);
        segmentRank = Math.max(segmentRank, param.constraints.length > 0 ? 1 : 2);
        pattern += '([^/]+?)';
      } else {
        pattern += escapeRegExp(piece);
      }
    }
    rank.push(segmentRank);
  }
  const regex = new RegExp(`${pattern}/?$`, 'i');
  return {
    template,
    rank,
    match(path: string) {
      const found = regex.exec(path === '/' ? '' : path);
      if (!found) return undefined;
      const values: Record<string, string> = {};
      for (const [i, param] of params.entries()) {
        const raw = found[i + 1];
        if (raw === undefined || raw === '') {
          if (param.defaultValue !== undefined) values[param.name] = param.defaultValue;
          else if (!param.optional && !param.catchAll) return undefined;
          continue;
        }
        let value: string;
        try {
          value = param.catchAll ? raw : decodeURIComponent(raw);
        } catch {
          return undefined;
        }
        if (!param.constraints.every((c) => satisfies(value, c))) return undefined;
        values[param.name] = value;
      }
      return values;
    },
  };
}

/** Orders routes most specific first: literal segments win over parameters, constrained over free, free over catch-all. */
export function compareRoutes(a: CompiledRoute, b: CompiledRoute): number {
  for (let i = 0; i < Math.max(a.rank.length, b.rank.length); i++) {
    const x = a.rank[i] ?? -1;
    const y = b.rank[i] ?? -1;
    if (x !== y) return x - y;
  }
  return 0;
}
