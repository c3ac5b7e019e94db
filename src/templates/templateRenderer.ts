/** Renders email templates: Handlebars in strict mode, HTML escaped, the subject as one header line, a text part always. */
import Handlebars from 'handlebars';
import { compile as compileHtmlToText } from 'html-to-text';
import { MailError, ensureError, type FieldProblem } from '../errors';
import { inspectJson, MAX_BODY_JSON_VALUES } from '../inputBounds';
import { MAX_SUBJECT_CHARS } from '../message';

/**
 * The most template data rendered at once: its size as JSON text, in characters. Rendering (escaping above all) and
 * the text part cost time in proportion to it, so it is bounded before any of that runs.
 */
export const MAX_TEMPLATE_DATA_CHARS = 256 * 1024;
/** The longest string (value or key) in template data. */
export const MAX_TEMPLATE_STRING_CHARS = 64 * 1024;
/** The rendered subject is bounded before it is folded onto one line; folded, it must fit MAX_SUBJECT_CHARS. */
export const MAX_RENDERED_SUBJECT_CHARS = 4 * MAX_SUBJECT_CHARS;
/** The longest URL the link helper emits. */
export const MAX_LINK_CHARS = 2048;
/** The schemes the link helper emits; anything else (javascript:, data:, http:) is refused. */
export const LINK_SCHEMES: readonly string[] = ['https:', 'mailto:'];

/** A template's name is its folder under templates/. */
export const TEMPLATE_NAME = /^[a-z0-9][a-z0-9-]{0,63}$/;
/** Names of layouts (templates/_layouts/<name>.hbs) and partials (templates/_partials/<name>.hbs). */
export const PARTIAL_NAME = /^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$/;

/** One template folder: `templates/<name>/{subject,html,text}.hbs` and `sample.json`. */
export interface TemplateSource {
  name: string;
  subject: string;
  html: string;
  /** When absent, the text part is generated from the rendered HTML. */
  text?: string;
  /** The parsed sample.json: realistic data for previews and tests. */
  sample?: unknown;
}

/** Every template of a deployment, with the layouts and partials they share. Plain JSON, so the build can embed it. */
export interface TemplateBundle {
  templates: Record<string, TemplateSource>;
  layouts: Record<string, string>;
  partials: Record<string, string>;
}

export interface RenderedTemplate {
  /** One line, never HTML-escaped, never containing CR or LF. */
  subject: string;
  html: string;
  text: string;
}

type Part = 'subject' | 'html' | 'text';
type Delegate = Handlebars.TemplateDelegate<unknown>;

/** HTML is escaped by default; a missing variable throws instead of rendering as "". */
const HTML_OPTIONS = { strict: true } as const;
/** subject.hbs and text.hbs are plain text: escaping them would put "&amp;" into a header or a text body. */
const TEXT_OPTIONS = { strict: true, noEscape: true } as const;

/** How a Handlebars strict-mode failure reads: `"id" not defined in [object Object] - 3:14`. */
const STRICT_MISS = /^"([^"]+)" not defined in /;
/** A run of whitespace and control characters (one class, so matching it is linear). */
const SUBJECT_SPACE_RUN = /[\s\u0000-\u001f\u007f\u0085]+/g;
/** A line break or another control character: a run holding one becomes a single space. */
const SUBJECT_BREAK = /[\u0000-\u001f\u007f\u0085\u2028\u2029]/;
/** Whitespace and control characters a URL must not hold (a URL parser would drop some of them silently). */
const URL_SPACE = /[\s\u0000-\u001f\u007f]/;

/**
 * Folds a rendered subject onto one header line: every run of whitespace that holds a line break or another control
 * character becomes one space; runs of plain spaces stay. Linear: the runs are found by a single-class regex, and each
 * is tested once (the old `\s*[breaks]+\s*` retried every start inside a long run of spaces).
 */
export function foldSubject(subject: string): string {
  return subject.replace(SUBJECT_SPACE_RUN, (run) => (SUBJECT_BREAK.test(run) ? ' ' : run)).trim();
}

/** The characters Handlebars escapes in HTML output, and what it writes for each. */
const ESCAPED = /[&<>"'`=]/;
const ENTITIES = ['', '&amp;', '&lt;', '&gt;', '&quot;', '&#x27;', '&#x60;', '&#x3D;'];
/** Code unit (below 128) → index in ENTITIES, 0 for characters written as they are: a typed array, no hash lookups. */
const ENTITY_OF = new Uint8Array(128);
['&', '<', '>', '"', "'", '`', '='].forEach((char, index) => (ENTITY_OF[char.charCodeAt(0)] = index + 1));
const handlebarsEscape = Handlebars.Utils.escapeExpression;

/**
 * Handlebars' own HTML escaping, character for character, at about a third of its cost on text that is all special
 * characters (data of `<&>"` is hostile input: Handlebars runs a callback per character). Text with nothing to escape
 * is returned after one native test, as before; anything that is not a string goes to Handlebars' own function.
 */
export function escapeHtml(value: unknown): string {
  if (typeof value !== 'string') return handlebarsEscape(value as string);
  if (!ESCAPED.test(value)) return value;
  let out = '';
  let copied = 0;
  for (let i = 0; i < value.length; i++) {
    const unit = value.charCodeAt(i);
    const entity = unit < 128 ? (ENTITY_OF[unit] as number) : 0;
    if (entity === 0) continue;
    if (i > copied) out += value.slice(copied, i);
    out += ENTITIES[entity];
    copied = i + 1;
  }
  return copied < value.length ? out + value.slice(copied) : out;
}
// Compiled templates take the escape function from Handlebars.Utils when they are built; this app is the only user of
// Handlebars in its process, and the output is the same (test/unit/templates.test.ts compares them).
Handlebars.Utils.escapeExpression = escapeHtml;

/** Why the link helper refused a value: rendered as a 400 naming the data field it came from. */
class LinkError extends Error {
  constructor(
    readonly value: unknown,
    readonly reason: string,
  ) {
    super(`link: ${reason}`);
  }
}

/** The reason `value` may not be a link, or undefined when it may (an https: or mailto: URL). */
function linkProblem(value: unknown): string | undefined {
  const scheme = LINK_SCHEMES.map((s) => s.replace(':', '')).join(' or ');
  if (typeof value !== 'string' || value === '') return `must be an ${scheme} URL`;
  if (value.length > MAX_LINK_CHARS) return `must be a URL of at most ${MAX_LINK_CHARS} characters`;
  if (URL_SPACE.test(value)) return 'must be a URL without spaces or control characters';
  let url: URL;
  try {
    url = new URL(value);
  } catch {
    return `must be an absolute ${scheme} URL`;
  }
  if (!LINK_SCHEMES.includes(url.protocol)) return `must be an ${scheme} URL (not ${url.protocol})`;
  return undefined;
}

/**
 * The text part of templates without text.hbs: links as "text [url]", data tables as aligned columns. Compiled on
 * first use: compiling the selectors takes tens of milliseconds, which a cold start spends only if it renders such a
 * template.
 */
let compiledHtmlToText: ((html: string) => string) | undefined;
const htmlToText = (html: string): string => (compiledHtmlToText ??= compileHtmlToTextOptions())(html);

const compileHtmlToTextOptions = () =>
  compileHtmlToText({
    wordwrap: 78,
    selectors: [
      // The preheader is the inbox preview line of the HTML part; in a text part it would be a stray first line.
      { selector: '.preheader', format: 'skip' },
      // HTML-only content, such as the "if the button does not work" line under a button whose link is already in the text.
      { selector: '.no-text', format: 'skip' },
      { selector: 'img', format: 'skip' },
      { selector: 'a', options: { hideLinkHrefIfSameAsText: true } },
      { selector: 'h1', options: { uppercase: false } },
      { selector: 'h2', options: { uppercase: false } },
      { selector: 'h3', options: { uppercase: false } },
      { selector: 'table.data-table', format: 'dataTable', options: { uppercaseHeaderCells: false } },
    ],
  });

interface Compiled {
  subject: Delegate;
  html: Delegate;
  text?: Delegate;
}

/** A variable reference in a template source, with the data path it resolves to where that can be told statically. */
interface LocatedPath {
  line: number;
  column: number;
  tail: string;
  path: string | undefined;
}

/**
 * Renders the templates of one bundle. Create one per process: each template is compiled once, on first use.
 *
 * Layouts and partials live in one Handlebars environment of their own (not the global one). A template selects its
 * layout with a partial block, `{{#> base}}…{{/base}}`, and fills the layout's optional slots with inline partials
 * (`{{#*inline "preheader"}}…{{/inline}}`).
 */
export class TemplateRenderer {
  readonly #bundle: TemplateBundle;
  readonly #hbs = Handlebars.create();
  readonly #compiled = new Map<string, Compiled>();
  readonly #paths = new Map<string, LocatedPath[]>();
  /** The probe of the render in progress (rendering is synchronous), for the link helper's error. */
  #probe: AccessProbe | undefined;

  constructor(bundle: TemplateBundle) {
    this.#bundle = bundle;
    this.#hbs.registerHelper('link', (value: unknown) => this.#link(value));
    for (const name of Object.keys(bundle.templates)) {
      if (!TEMPLATE_NAME.test(name)) throw new Error(`Template name "${name}" must match ${TEMPLATE_NAME}`);
    }
    const shared = { ...bundle.partials };
    for (const [name, source] of Object.entries(bundle.layouts)) {
      if (Object.hasOwn(shared, name)) throw new Error(`"${name}" is both a layout and a partial: rename one of them`);
      shared[name] = source;
    }
    for (const [name, source] of Object.entries(shared)) {
      if (!PARTIAL_NAME.test(name)) throw new Error(`Layout or partial name "${name}" must match ${PARTIAL_NAME}`);
      // Compiled here, with the template options, rather than left to Handlebars to compile with whichever options
      // the first caller had.
      this.#hbs.registerPartial(name, this.#hbs.compile(source, HTML_OPTIONS));
    }
  }

  /** The template names, sorted. */
  names(): string[] {
    return Object.keys(this.#bundle.templates).sort();
  }

  has(name: string): boolean {
    return TEMPLATE_NAME.test(name) && Object.hasOwn(this.#bundle.templates, name);
  }

  /** A copy of the template's sample.json, or undefined when it has none. Throws TEMPLATE_NOT_FOUND. */
  sample(name: string): unknown {
    const sample = this.#source(name).sample;
    return sample === undefined ? undefined : structuredClone(sample);
  }

  /**
   * Renders `name` with `data`.
   * Throws MailError TEMPLATE_NOT_FOUND (details path "template") for an unknown name, and INVALID_MESSAGE when the
   * data does not fit: a missing variable is reported as `data.<path>`, e.g. `data.order.items[1].sku`.
   */
  render(name: string, data: unknown): RenderedTemplate {
    const compiled = this.#compile(name);
    if (data === null || typeof data !== 'object' || Array.isArray(data)) {
      throw invalid(`Template "${name}" needs an object as data`, [{ path: 'data', message: 'must be an object' }]);
    }
    checkData(name, data);
    const probe = new AccessProbe();
    const context = probe.wrap(data, '');
    const raw = this.#run(name, 'subject', compiled.subject, context, probe);
    if (raw.length > MAX_RENDERED_SUBJECT_CHARS) {
      throw invalid(`Template "${name}" rendered a subject of ${raw.length} characters`, [
        { path: 'data', message: `the rendered subject must be at most ${MAX_SUBJECT_CHARS} characters` },
      ]);
    }
    const subject = foldSubject(raw);
    if (subject.length > MAX_SUBJECT_CHARS) {
      throw invalid(`Template "${name}" rendered a subject of ${subject.length} characters`, [
        { path: 'data', message: `the rendered subject must be at most ${MAX_SUBJECT_CHARS} characters` },
      ]);
    }
    const html = this.#run(name, 'html', compiled.html, context, probe);
    const text = compiled.text ? this.#run(name, 'text', compiled.text, context, probe) : htmlToText(html);
    return { subject, html, text };
  }

  #source(name: string): TemplateSource {
    const source = this.has(name) ? this.#bundle.templates[name] : undefined;
    if (!source) {
      const shown = JSON.stringify(name.length > 80 ? `${name.slice(0, 80)}…` : name);
      throw new MailError('TEMPLATE_NOT_FOUND', `Unknown template ${shown}`, {
        details: [{ path: 'template', message: `unknown template ${shown}` }],
      });
    }
    return source;
  }

  #compile(name: string): Compiled {
    let compiled = this.#compiled.get(name);
    if (!compiled) {
      const source = this.#source(name);
      compiled = {
        subject: this.#hbs.compile(source.subject, TEXT_OPTIONS),
        html: this.#hbs.compile(source.html, HTML_OPTIONS),
        ...(source.text !== undefined ? { text: this.#hbs.compile(source.text, TEXT_OPTIONS) } : {}),
      };
      this.#compiled.set(name, compiled);
    }
    return compiled;
  }

  #run(name: string, part: Part, template: Delegate, context: unknown, probe: AccessProbe): string {
    probe.lastMiss = undefined;
    this.#probe = probe;
    try {
      return template(context);
    } catch (error) {
      throw this.#renderError(name, part, ensureError(error), probe);
    } finally {
      this.#probe = undefined;
    }
  }

  /**
   * `{{link url}}`: emits `url` (escaped, as every `{{…}}`) when it is an https: or mailto: URL, and otherwise fails
   * the render with a 400 naming the data field the value came from. Every href built from data goes through it, so
   * no `javascript:` or `data:` link can be sent.
   */
  #link(value: unknown): string {
    const reason = linkProblem(value);
    if (reason !== undefined) throw new LinkError(value, reason);
    return value as string;
  }

  /** Turns a render failure into INVALID_MESSAGE, naming the missing variable's full data path where it can. */
  #renderError(name: string, part: Part, error: Error, probe: AccessProbe): MailError {
    if (error instanceof LinkError) {
      const path = probe.pathOf(error.value);
      const field = path ? `data.${path}` : 'data';
      // A missing value reads as it did before the link helper: a missing variable.
      const reason = error.value == null && path ? `missing template variable "${path}"` : error.reason;
      return invalid(`Template "${name}" (${part}.hbs): ${field} ${reason}`, [{ path: field, message: reason }]);
    }
    const variable = STRICT_MISS.exec(error.message)?.[1];
    if (variable === undefined) {
      return invalid(
        `Template "${name}" could not be rendered with this data (${part}): ${error.message}`,
        [{ path: 'data', message: `template "${name}" could not be rendered with this data: ${error.message}` }],
        error,
      );
    }
    // The parent object was in the data: the probe saw exactly where the lookup failed, array indices included.
    // Otherwise (the parent itself is missing) the expression at the error's position in the source tells the path.
    const path =
      (probe.lastMiss?.key === variable ? probe.lastMiss.path : undefined) ??
      this.#pathAt(name, part, error, variable) ??
      variable;
    return invalid(
      `Template "${name}" needs data.${path} (${part}.hbs)`,
      [{ path: `data.${path}`, message: `missing template variable "${path}"` }],
      error,
    );
  }

  #pathAt(name: string, part: Part, error: Error, variable: string): string | undefined {
    const { lineNumber: line, column } = error as Error & { lineNumber?: number; column?: number };
    if (line === undefined || column === undefined) return undefined;
    const source = this.#source(name);
    // html.hbs runs the layouts and partials too; subject.hbs and text.hbs are on their own.
    const sources =
      part === 'html'
        ? [source.html, ...Object.values(this.#bundle.partials), ...Object.values(this.#bundle.layouts)]
        : [part === 'subject' ? source.subject : (source.text ?? '')];
    const found = new Set<string>();
    for (const text of sources) {
      for (const p of this.#pathsOf(text)) {
        if (p.line === line && p.column === column && p.tail === variable && p.path) found.add(p.path);
      }
    }
    return found.size === 1 ? [...found][0] : undefined;
  }

  #pathsOf(source: string): LocatedPath[] {
    let paths = this.#paths.get(source);
    if (!paths) {
      paths = collectPaths(this.#hbs.parse(source));
      this.#paths.set(source, paths);
    }
    return paths;
  }
}

function invalid(message: string, details: { path: string; message: string }[], cause?: Error): MailError {
  return new MailError('INVALID_MESSAGE', message, { details, ...(cause ? { cause } : {}) });
}

/**
 * What is wrong with `data` as template data, without rendering it: depth (the probe and Handlebars recurse), total
 * size (MAX_TEMPLATE_DATA_CHARS) and the longest string (MAX_TEMPLATE_STRING_CHARS). The total comes first, as the
 * field to fix is then the data as a whole. Paths start with `root`.
 */
export function templateDataProblems(data: unknown, root = 'data'): FieldProblem[] {
  const found = inspectJson(data, { maxValues: MAX_BODY_JSON_VALUES, maxStringChars: MAX_TEMPLATE_STRING_CHARS }, root);
  const problems: FieldProblem[] = [];
  if (found.problem) problems.push(found.problem);
  else if (found.chars > MAX_TEMPLATE_DATA_CHARS) {
    problems.push({
      path: root,
      message: `the template data must not exceed ${MAX_TEMPLATE_DATA_CHARS} characters as JSON (it has about ${found.chars})`,
    });
  }
  if (found.longString) {
    problems.push({
      path: found.longString.path,
      message: `is ${found.longString.length} characters; a template data string may have at most ${MAX_TEMPLATE_STRING_CHARS}`,
    });
  }
  return problems;
}

/** Throws INVALID_MESSAGE naming the field when `data` is too deep or too large to render (templateDataProblems). */
function checkData(name: string, data: object): void {
  const problems = templateDataProblems(data);
  if (problems.length) {
    throw invalid(
      `Template "${name}" data is too large: ${problems.map((p) => `${p.path}: ${p.message}`).join('; ')}`,
      problems,
    );
  }
}

/**
 * Wraps the data in proxies that remember the path of every object handed to the template, so that a strict-mode
 * miss (`"sku" not defined`) can be reported as `order.items[1].sku`. Strict lookups test `name in parent`, which
 * reaches the `has` trap just before Handlebars throws.
 */
class AccessProbe {
  lastMiss: { key: string; path: string } | undefined;
  /** The last property read, and where each string value was read: helpers get values, not their paths. */
  lastRead: { path: string; value: unknown } | undefined;
  readonly #stringPaths = new Map<string, string>();
  readonly #proxies = new WeakMap<object, object>();

  /**
   * The data path `value` was read from: the last read when it returned this value (a helper's argument is read just
   * before the helper runs), else where this string was first read (an argument passed on through a partial's hash).
   */
  pathOf(value: unknown): string | undefined {
    if (this.lastRead && Object.is(this.lastRead.value, value)) return this.lastRead.path;
    return typeof value === 'string' ? this.#stringPaths.get(value) : undefined;
  }

  wrap(value: unknown, path: string): unknown {
    if (!isPlainData(value)) return value;
    const known = this.#proxies.get(value);
    if (known) return known;
    const proxy = new Proxy(value, {
      has: (target, key) => {
        let found = Reflect.has(target, key);
        if (typeof key !== 'string') return found;
        // null counts as missing: `"id": null` must fail like an absent id, not render an empty order number.
        const descriptor = Object.getOwnPropertyDescriptor(target, key);
        if (descriptor?.configurable && descriptor.value == null && !descriptor.get) found = false;
        this.lastMiss = found ? undefined : { key, path: joinPath(path, key, target) };
        return found;
      },
      get: (target, key, receiver) => {
        const result: unknown = Reflect.get(target, key, receiver);
        if (typeof key !== 'string') return result;
        const at = joinPath(path, key, target);
        this.lastRead = { path: at, value: result };
        if (typeof result === 'string' && !this.#stringPaths.has(result)) this.#stringPaths.set(result, at);
        // A proxy must return a non-writable, non-configurable property as it is.
        const descriptor = Object.getOwnPropertyDescriptor(target, key);
        if (!descriptor || (!descriptor.writable && !descriptor.configurable)) return result;
        return this.wrap(result, at);
      },
    });
    this.#proxies.set(value, proxy);
    return proxy;
  }
}

function isPlainData(value: unknown): value is object {
  if (value === null || typeof value !== 'object') return false;
  if (Array.isArray(value)) return true;
  const proto = Object.getPrototypeOf(value) as unknown;
  return proto === Object.prototype || proto === null;
}

function joinPath(path: string, key: string, parent: object): string {
  if (Array.isArray(parent) && /^\d+$/.test(key)) return `${path}[${key}]`;
  return path ? `${path}.${key}` : key;
}

/**
 * Every variable reference in a parsed template, with the data path it reads: `{{order.id}}` → "order.id",
 * `{{name}}` inside `{{#each order.items}}` → "order.items[].name". Helper names and @data variables have no path.
 */
function collectPaths(program: hbs.AST.Program): LocatedPath[] {
  const out: LocatedPath[] = [];
  const resolve = (node: hbs.AST.PathExpression, scopes: string[]): string | undefined => {
    if (node.data) return node.parts[0] === 'root' && node.parts.length > 1 ? node.parts.slice(1).join('.') : undefined;
    const base = scopes[scopes.length - 1 - node.depth];
    if (base === undefined) return undefined;
    const rest = node.parts.join('.');
    return base && rest ? `${base}.${rest}` : base || rest || undefined;
  };
  const visit = (node: unknown, scopes: string[]): void => {
    if (Array.isArray(node)) {
      for (const child of node) visit(child, scopes);
      return;
    }
    if (node === null || typeof node !== 'object' || !('type' in node)) return;
    const typed = node as hbs.AST.Node;
    if (typed.type === 'PathExpression') {
      const path = typed as hbs.AST.PathExpression;
      const tail = path.parts[path.parts.length - 1];
      if (tail !== undefined) {
        out.push({ line: path.loc.start.line, column: path.loc.start.column, tail, path: resolve(path, scopes) });
      }
      return;
    }
    if (typed.type === 'BlockStatement') {
      const block = typed as hbs.AST.BlockStatement;
      visit(block.params, scopes);
      visit(block.hash, scopes);
      const helper = block.path.type === 'PathExpression' ? block.path.original : '';
      const param = block.params[0];
      const target = param?.type === 'PathExpression' ? resolve(param as hbs.AST.PathExpression, scopes) : undefined;
      // each and with change the context of their block; if, unless and the rest do not.
      const inner =
        helper === 'each' && target !== undefined
          ? [...scopes, `${target}[]`]
          : helper === 'with' && target !== undefined
            ? [...scopes, target]
            : scopes;
      visit(block.program, inner);
      visit(block.inverse, scopes);
      return;
    }
    for (const [key, value] of Object.entries(node)) if (key !== 'loc') visit(value, scopes);
  };
  visit(program, ['']);
  return out;
}
