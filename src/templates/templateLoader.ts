/** Reads a templates/ folder into a TemplateBundle. Build and dev/test time only: the deployed app never reads templates from disk. */
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import Handlebars from 'handlebars';
import { PARTIAL_NAME, TEMPLATE_NAME, type TemplateBundle, type TemplateSource } from './templateRenderer';

/** The repository's templates/ folder. */
export const TEMPLATES_DIR = path.resolve(__dirname, '..', '..', 'templates');

const TEMPLATE_FILES = new Set(['subject.hbs', 'html.hbs', 'text.hbs', 'sample.json']);

/**
 * Reads `dir`: one folder per template (`subject.hbs`, `html.hbs`, optional `text.hbs` and `sample.json`) plus the
 * shared `_layouts/*.hbs` and `_partials/*.hbs`. Every .hbs is parsed, so a syntax error fails here (at build time)
 * naming its file. Throws on unknown files, so that a misnamed `text.hbs` is not silently ignored.
 */
export function loadTemplateBundle(dir: string): TemplateBundle {
  if (!existsSync(dir)) throw new Error(`Templates folder ${dir} does not exist`);
  const bundle: TemplateBundle = { templates: {}, layouts: {}, partials: {} };
  const entries = readdirSync(dir, { withFileTypes: true }).sort((a, b) => a.name.localeCompare(b.name));
  for (const entry of entries) {
    const where = path.join(dir, entry.name);
    if (entry.name.startsWith('.')) continue;
    if (!entry.isDirectory()) throw new Error(`${where}: only folders belong in the templates folder`);
    if (entry.name === '_layouts' || entry.name === '_partials') {
      Object.assign(entry.name === '_layouts' ? bundle.layouts : bundle.partials, readShared(where));
      continue;
    }
    if (!TEMPLATE_NAME.test(entry.name)) {
      throw new Error(`${where}: a template folder name must match ${TEMPLATE_NAME} (or be _layouts or _partials)`);
    }
    bundle.templates[entry.name] = readTemplate(entry.name, where);
  }
  return bundle;
}

function readTemplate(name: string, dir: string): TemplateSource {
  for (const file of readdirSync(dir)) {
    if (!TEMPLATE_FILES.has(file)) {
      throw new Error(`${path.join(dir, file)}: a template folder holds only ${[...TEMPLATE_FILES].join(', ')}`);
    }
  }
  const read = (file: string): string | undefined => {
    const where = path.join(dir, file);
    return existsSync(where) ? parsed(where, readFileSync(where, 'utf8')) : undefined;
  };
  const subject = read('subject.hbs');
  const html = read('html.hbs');
  if (subject === undefined || html === undefined) throw new Error(`${dir}: subject.hbs and html.hbs are required`);
  const text = read('text.hbs');
  const samplePath = path.join(dir, 'sample.json');
  let sample: unknown;
  if (existsSync(samplePath)) {
    try {
      sample = JSON.parse(readFileSync(samplePath, 'utf8')) as unknown;
    } catch (error) {
      throw new Error(`${samplePath}: invalid JSON (${error instanceof Error ? error.message : String(error)})`);
    }
  }
  return { name, subject, html, ...(text !== undefined ? { text } : {}), ...(sample !== undefined ? { sample } : {}) };
}

function readShared(dir: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const file of readdirSync(dir).sort()) {
    const where = path.join(dir, file);
    const name = file.replace(/\.hbs$/, '');
    if (name === file || !PARTIAL_NAME.test(name))
      throw new Error(`${where}: expected <name>.hbs with a name matching ${PARTIAL_NAME}`);
    out[name] = parsed(where, readFileSync(where, 'utf8'));
  }
  return out;
}

/** Returns `source` once Handlebars has parsed it; a syntax error names the file. */
function parsed(file: string, source: string): string {
  try {
    Handlebars.parse(source);
  } catch (error) {
    throw new Error(`${file}: ${error instanceof Error ? error.message : String(error)}`);
  }
  return source;
}
