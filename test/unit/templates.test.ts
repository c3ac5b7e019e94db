import { execFile } from 'node:child_process';
import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { build, type Plugin } from 'esbuild';
import { afterAll, describe, expect, it } from 'vitest';
import { embeddedModule, templatesPlugin } from '../../scripts/templatesPlugin';
import { MailError } from '../../src/errors';
import * as devTemplateBundle from '../../src/templates/templateBundle';
import { templateBundle, templateBundleOrigin } from '../../src/templates/templateBundle';
import { TEMPLATES_DIR, loadTemplateBundle } from '../../src/templates/templateLoader';
import fc from 'fast-check';
import {
  escapeHtml,
  foldSubject,
  MAX_RENDERED_SUBJECT_CHARS,
  MAX_TEMPLATE_DATA_CHARS,
  MAX_TEMPLATE_STRING_CHARS,
  TemplateRenderer,
  type TemplateBundle,
} from '../../src/templates/templateRenderer';

/**
 * One-sided bound for the linear-time regressions: the backtracking they guard against took minutes; a loaded two-core
 * machine must not make a linear run fail.
 */
const LINEAR_BOUND_MS = 5_000;

const renderer = new TemplateRenderer(templateBundle());

interface OrderData {
  customer: { name: string };
  order: {
    id: string | null;
    items: Array<{ name: string; sku?: string; quantity: number; price: string }>;
    total: string;
  };
  shipment: { trackingUrl: string; carrier: string };
}

function orderSample(): OrderData {
  return renderer.sample('order-shipped') as OrderData;
}

/** The MailError that `fn` throws. */
function thrown(fn: () => unknown): MailError {
  try {
    fn();
  } catch (error) {
    expect(error).toBeInstanceOf(MailError);
    return error as MailError;
  }
  throw new Error('expected a MailError');
}

/** A bundle of small templates over the shipped layouts and partials. */
function bundleWith(templates: TemplateBundle['templates']): TemplateBundle {
  const shipped = templateBundle();
  return { templates, layouts: shipped.layouts, partials: shipped.partials };
}

describe('shipped templates', () => {
  it('lists the templates folder', () => {
    expect(renderer.names()).toEqual(expect.arrayContaining(['notification', 'order-shipped']));
    expect(renderer.has('order-shipped')).toBe(true);
    expect(renderer.has('_layouts')).toBe(false);
    expect(templateBundleOrigin).toBe('templates-dir');
  });

  it('renders order-shipped with its sample: subject, order id, items table, tracking link, generated text', () => {
    const out = renderer.render('order-shipped', orderSample());
    expect(out.subject).toBe('Your order A-10492 has shipped');
    expect(out.html).toMatch(/^<!DOCTYPE html>\n<html lang="en"/);
    expect(out.html).toContain('<meta charset="utf-8">');
    expect(out.html).toContain('<strong>A-10492</strong>');
    expect(out.html).toContain('Salt &amp; Pepper grinder set');
    expect(out.html).toContain('max-width:600px');
    expect(out.html).toContain('Order A-10492 is on its way with DHL Express'); // preheader
    expect(out.html).not.toMatch(/<link|<script|<style/i);
    // The text part is generated: the items as table rows, the tracking link as "text [url]", no preheader.
    expect(out.text).toMatch(/Noise-cancelling headphones\s+1\s+€199\.00/);
    expect(out.text).toMatch(/Salt & Pepper grinder set\s+2\s+€49\.80/);
    expect(out.text).toMatch(/Total\s+€275\.65/);
    expect(out.text).toMatch(
      /Track your package\s+\[https:\/\/www\.dhl\.com\/en\/express\/tracking\.html\?AWB=JD014600003828374&brand=DHL\]/,
    );
    expect(out.text).not.toContain('is on its way with DHL Express');
    expect(out.text).not.toContain('If the button does not work');
    expect(out.text).not.toMatch(/&amp;|&#x3D;|<\w/);
  });

  it('renders notification with its sample and uses its text.hbs', () => {
    const out = renderer.render('notification', renderer.sample('notification'));
    expect(out.subject).toBe('Scheduled maintenance on Saturday 28 November');
    expect(out.html).toContain(
      '<h1 style="margin:0 0 16px 0;font-size:22px;line-height:28px;font-weight:600;color:#1f2933;">',
    );
    expect(out.html).toContain('View the status page</a>');
    expect(out.html).toContain('support &amp; billing');
    // text.hbs is plain text, so it is not HTML-escaped.
    expect(out.text).toMatch(/^Scheduled maintenance on Saturday 28 November\n\nThe customer portal/);
    expect(out.text).toContain('support & billing');
    expect(out.text).toContain(
      'View the status page: https://status.contoso.com/incidents/2026-11-28?utm_source=email&utm_medium=notification',
    );
  });

  it('leaves the action button out when the notification has none', () => {
    const out = renderer.render('notification', {
      title: 'Backup finished',
      paragraphs: ['All 12 databases were backed up.'],
    });
    expect(out.html).not.toContain('<a ');
    expect(out.text).toBe(
      'Backup finished\n\nAll 12 databases were backed up.\n\n--\nThis is an automated message. Replies to this address are not monitored.\n',
    );
  });

  it('escapes user input in the HTML part, and keeps it literal in the subject and text', () => {
    const data = orderSample();
    data.order.id = '<script>alert(1)</script>';
    data.order.items[0]!.name = '<img src=x onerror=alert(1)> "quoted"';
    const out = renderer.render('order-shipped', data);
    expect(out.html).toContain('<strong>&lt;script&gt;alert(1)&lt;/script&gt;</strong>');
    expect(out.html).toContain('&lt;img src&#x3D;x onerror&#x3D;alert(1)&gt; &quot;quoted&quot;');
    expect(out.html).not.toContain('<script>');
    expect(out.subject).toBe('Your order <script>alert(1)</script> has shipped');
    expect(out.text).toContain('<img src=x onerror=alert(1)> "quoted"');
  });

  it('shares layouts and partials between templates', () => {
    const a = renderer.render('order-shipped', orderSample()).html;
    const b = renderer.render('notification', renderer.sample('notification')).html;
    const footer = 'This is an automated message. Replies to this address are not monitored.';
    for (const html of [a, b]) {
      expect(html).toContain('<div class="preheader"'); // _layouts/base
      expect(html).toContain(footer); // _partials/footer, via the layout
      expect(html).toContain('bgcolor="#0b5cad"'); // _partials/button
    }
  });

  it('returns a copy of the sample, and undefined for a template without one', () => {
    const first = orderSample();
    first.order.id = 'changed';
    expect(orderSample().order.id).toBe('A-10492');
    const bare = new TemplateRenderer(bundleWith({ bare: { name: 'bare', subject: 'Hi', html: '<p>Hi</p>' } }));
    expect(bare.sample('bare')).toBeUndefined();
  });
});

describe('missing variables', () => {
  it.each<[string, (d: OrderData) => void, string]>([
    ['a missing parent object', (d) => delete (d as Partial<OrderData>).order, 'data.order.id'],
    ['a missing field of an object', (d) => delete (d.order as { id?: unknown }).id, 'data.order.id'],
    ['a null field', (d) => (d.order.id = null), 'data.order.id'],
    ['a field of an array element', (d) => delete d.order.items[1]!.sku, 'data.order.items[1].sku'],
    [
      'a parent used first by the layout slot',
      (d) => delete (d as Partial<OrderData>).shipment,
      'data.shipment.carrier',
    ],
  ])('names the data path of %s', (_what, change, path) => {
    const data = orderSample();
    change(data);
    const error = thrown(() => renderer.render('order-shipped', data));
    expect(error.code).toBe('INVALID_MESSAGE');
    expect(error.transient).toBe(false);
    expect(error.details).toEqual([{ path, message: `missing template variable "${path.slice('data.'.length)}"` }]);
  });

  it('names a top-level variable as data.<name>', () => {
    const error = thrown(() => renderer.render('notification', { paragraphs: ['x'] }));
    expect(error.details).toEqual([{ path: 'data.title', message: 'missing template variable "title"' }]);
  });

  it('names a field of an object passed to a partial', () => {
    const error = thrown(() =>
      renderer.render('notification', { title: 't', paragraphs: [], action: { url: 'https://x.example' } }),
    );
    expect(error.details).toEqual([{ path: 'data.action.label', message: 'missing template variable "action.label"' }]);
  });

  it('derives the path inside an each block when the parent is missing', () => {
    const r = new TemplateRenderer(
      bundleWith({ list: { name: 'list', subject: 'List', html: '{{#each rows}}<p>{{cell.value}}</p>{{/each}}' } }),
    );
    expect(r.render('list', { rows: [{ cell: { value: 1 } }] }).html).toBe('<p>1</p>');
    const error = thrown(() => r.render('list', { rows: [{ cell: { value: 1 } }, {}] }));
    expect(error.details?.[0]?.path).toBe('data.rows[].cell.value');
  });

  it('rejects data that is not an object', () => {
    for (const data of [undefined, null, 'x', [1]]) {
      expect(thrown(() => renderer.render('notification', data)).details).toEqual([
        { path: 'data', message: 'must be an object' },
      ]);
    }
  });
});

describe('unknown templates', () => {
  it.each(['nope', '../order-shipped', 'Order-Shipped', '_layouts', 'x'.repeat(200)])('rejects %j', (name) => {
    const error = thrown(() => renderer.render(name, {}));
    expect(error.code).toBe('TEMPLATE_NOT_FOUND');
    expect(error.transient).toBe(false);
    expect(error.details).toHaveLength(1);
    expect(error.details?.[0]?.path).toBe('template');
    expect(error.details?.[0]?.message).toMatch(/^unknown template "/);
    expect(error.message.length).toBeLessThan(120);
  });

  it('names the template exactly', () => {
    expect(thrown(() => renderer.sample('nope')).details).toEqual([
      { path: 'template', message: 'unknown template "nope"' },
    ]);
  });
});

describe('subject', () => {
  it('folds CR/LF from data into one space, so no header can be injected', () => {
    const out = renderer.render('notification', { title: 'Hello\r\nBcc: victim@example.com\n\n\tX', paragraphs: [] });
    expect(out.subject).toBe('Hello Bcc: victim@example.com X');
    expect(out.subject).not.toMatch(/[\r\n]/);
  });

  it('folds Unicode line separators and strips control characters', () => {
    const out = renderer.render('notification', { title: 'a\u2028b\u0085c\u0000d\u007fe', paragraphs: [] });
    expect(out.subject).toBe('a b c d e');
  });

  it('is text, not HTML: ampersands and quotes stay as they are', () => {
    const out = renderer.render('notification', { title: `Tom & Jerry's "special" <offer>`, paragraphs: [] });
    expect(out.subject).toBe(`Tom & Jerry's "special" <offer>`);
    expect(out.html).toContain('<title>Tom &amp; Jerry&#x27;s &quot;special&quot; &lt;offer&gt;</title>');
  });

  it('trims the newline that editors add to subject.hbs', () => {
    const r = new TemplateRenderer(bundleWith({ t: { name: 't', subject: '  Hello {{name}}\n', html: '<p>x</p>' } }));
    expect(r.render('t', { name: 'Ada' }).subject).toBe('Hello Ada');
  });

  it('rejects a subject over the header limit', () => {
    const error = thrown(() => renderer.render('notification', { title: 'x'.repeat(1000), paragraphs: [] }));
    expect(error.code).toBe('INVALID_MESSAGE');
    expect(error.details?.[0]?.path).toBe('data');
  });
});

describe('the link helper', () => {
  const notification = (url: unknown) => ({ title: 't', paragraphs: [], action: { label: 'Go', url } });

  it('emits https: and mailto: URLs as given (escaped), in the button and in the fallback link', () => {
    for (const url of [
      'https://status.example.com/a?b=1&c=2',
      'mailto:help@example.com?subject=Hi',
      'HTTPS://X.EXAMPLE',
    ]) {
      const html = renderer.render('notification', notification(url)).html;
      const escaped = url.replace(/&/g, '&amp;').replace(/=/g, '&#x3D;');
      expect(html.split(`href="${escaped}"`)).toHaveLength(3);
    }
  });

  it.each([
    'javascript:alert(1)',
    'JavaScript:alert(1)',
    'data:text/html,<script>alert(1)</script>',
    'http://example.com',
    'vbscript:msgbox',
    '//example.com/x',
    '/relative',
    ' https://example.com',
    'https://exa mple.com',
    'java\nscript:alert(1)',
    `https://example.com/${'a'.repeat(2048)}`,
    '',
    42,
  ])('refuses %j as a 400 naming the data field', (url) => {
    const error = thrown(() => renderer.render('notification', notification(url)));
    expect(error.code).toBe('INVALID_MESSAGE');
    expect(error.details).toEqual([{ path: 'data.action.url', message: expect.stringMatching(/URL/) as unknown }]);
  });

  it("names the field passed through a partial's hash, and a missing one as a missing variable", () => {
    const data = orderSample();
    data.shipment.trackingUrl = 'javascript:alert(1)';
    expect(thrown(() => renderer.render('order-shipped', data)).details?.[0]?.path).toBe('data.shipment.trackingUrl');
    delete (data.shipment as Partial<OrderData['shipment']>).trackingUrl;
    expect(thrown(() => renderer.render('order-shipped', data)).details).toEqual([
      { path: 'data.shipment.trackingUrl', message: 'missing template variable "shipment.trackingUrl"' },
    ]);
  });

  it('every href of the shipped templates goes through it', () => {
    const bundle = templateBundle();
    const sources = [
      ...Object.values(bundle.templates).flatMap((t) => [t.html, t.text ?? '']),
      ...Object.values(bundle.partials),
      ...Object.values(bundle.layouts),
    ];
    const hrefs = sources.flatMap((source) => [...source.matchAll(/href="([^"]*)"/g)].map((m) => m[1]));
    expect(hrefs.length).toBeGreaterThan(0);
    for (const href of hrefs) expect(href).toMatch(/^(\{\{link [^}]+\}\}|https:\/\/[^{]*|mailto:[^{]*)$/);
  });
});

describe('bounds on the data and the subject', () => {
  it(`refuses a data string over ${MAX_TEMPLATE_STRING_CHARS} characters, naming it`, () => {
    const error = thrown(() =>
      renderer.render('notification', { title: 't', paragraphs: ['ok', 'p'.repeat(MAX_TEMPLATE_STRING_CHARS + 1)] }),
    );
    expect(error.details).toEqual([
      { path: 'data.paragraphs[1]', message: expect.stringMatching(/at most 65536/) as unknown },
    ]);
  });

  it(`refuses data over ${MAX_TEMPLATE_DATA_CHARS} characters as JSON, naming data`, () => {
    const paragraphs = Array.from({ length: 5 }, () => 'p'.repeat(60_000));
    const error = thrown(() => renderer.render('notification', { title: 't', paragraphs }));
    expect(error.details).toEqual([
      { path: 'data', message: expect.stringMatching(/must not exceed 262144/) as unknown },
    ]);
  });

  it('refuses data nested deeper than 32 levels, naming the field, before rendering', () => {
    let deep: unknown = 'x';
    for (let i = 0; i < 5_000; i++) deep = { a: deep };
    const error = thrown(() => renderer.render('notification', { title: 't', paragraphs: [], deep }));
    expect(error.details?.[0]?.path).toMatch(/^data\.deep(\.a)+$/);
  });

  it(`refuses a rendered subject over ${MAX_RENDERED_SUBJECT_CHARS} characters before folding it`, () => {
    const title = `a${' \n'.repeat(MAX_RENDERED_SUBJECT_CHARS)}b`;
    expect(thrown(() => renderer.render('notification', { title, paragraphs: [] })).details).toEqual([
      { path: 'data', message: 'the rendered subject must be at most 998 characters' },
    ]);
  });

  it('folds a subject in linear time', () => {
    const started = performance.now();
    expect(foldSubject(`${' '.repeat(200_000)}x`)).toBe('x');
    expect(foldSubject(`a${' '.repeat(200_000)}\u0001${' '.repeat(200_000)}b`)).toBe('a b');
    expect(performance.now() - started).toBeLessThan(LINEAR_BOUND_MS);
  });
});

describe('text part', () => {
  it('uses text.hbs when there is one, and generates it from the HTML otherwise', () => {
    const html = '{{#> base}}<p>Hello {{name}}, see <a href="{{url}}">the docs</a>.</p>{{/base}}';
    const r = new TemplateRenderer(
      bundleWith({
        generated: { name: 'generated', subject: 'Hi', html },
        written: { name: 'written', subject: 'Hi', html, text: 'Hello {{name}} & welcome: {{url}}' },
      }),
    );
    const data = { name: 'Ada', url: 'https://docs.example.com/a?b=1&c=2' };
    expect(r.render('written', data).text).toBe('Hello Ada & welcome: https://docs.example.com/a?b=1&c=2');
    expect(r.render('generated', data).text).toContain('Hello Ada, see the docs [https://docs.example.com/a?b=1&c=2].');
  });
});

describe('loadTemplateBundle', () => {
  const dirs: string[] = [];
  afterAll(() => dirs.forEach((dir) => rmSync(dir, { recursive: true, force: true })));

  function tree(files: Record<string, string>): string {
    const dir = mkdtempSync(path.join(tmpdir(), 'm365-templates-'));
    dirs.push(dir);
    for (const [file, content] of Object.entries(files)) {
      const where = path.join(dir, file);
      rmSync(where, { force: true });
      mkdirSync(path.dirname(where), { recursive: true });
      writeFileSync(where, content);
    }
    return dir;
  }

  it('reads templates, layouts and partials', () => {
    const bundle = loadTemplateBundle(TEMPLATES_DIR);
    expect(bundle.layouts['base']).toContain('{{> @partial-block}}');
    expect(Object.keys(bundle.partials).sort()).toEqual(['button', 'footer']);
    expect(bundle.templates['order-shipped']?.text).toBeUndefined();
    expect(bundle.templates['notification']?.text).toContain('{{title}}');
    // JSON round-trip: the build embeds exactly this.
    expect(JSON.parse(JSON.stringify(bundle))).toEqual(bundle);
  });

  it.each<[string, Record<string, string>, RegExp]>([
    [
      'a syntax error, naming the file',
      { 'a/subject.hbs': 'Hi {{name', 'a/html.hbs': 'x' },
      /a[\\/]subject\.hbs: Parse error/,
    ],
    ['a missing html.hbs', { 'a/subject.hbs': 'Hi' }, /subject\.hbs and html\.hbs are required/],
    [
      'a misnamed file',
      { 'a/subject.hbs': 'Hi', 'a/html.hbs': 'x', 'a/text.txt': 'x' },
      /text\.txt: a template folder holds only/,
    ],
    ['a bad folder name', { 'Bad_Name/subject.hbs': 'Hi', 'Bad_Name/html.hbs': 'x' }, /must match/],
    [
      'invalid sample.json',
      { 'a/subject.hbs': 'Hi', 'a/html.hbs': 'x', 'a/sample.json': '{' },
      /sample\.json: invalid JSON/,
    ],
  ])('fails on %s', (_what, files, message) => {
    expect(() => loadTemplateBundle(tree(files))).toThrow(message);
  });

  it('rejects a layout and a partial of the same name', () => {
    const dir = tree({ 'a/subject.hbs': 'Hi', 'a/html.hbs': 'x', '_layouts/x.hbs': 'l', '_partials/x.hbs': 'p' });
    expect(() => new TemplateRenderer(loadTemplateBundle(dir))).toThrow(/both a layout and a partial/);
  });
});

describe('deployed bundle', () => {
  const work = mkdtempSync(path.join(tmpdir(), 'm365-bundle-'));
  afterAll(() => rmSync(work, { recursive: true, force: true }));

  it('embeds the templates: the bundled file alone renders order-shipped without reading any file', async () => {
    const outdir = path.join(work, 'build');
    const bundleProbe = (plugins: Plugin[]) =>
      build({
        stdin: {
          contents: [
            "import { templateBundle, templateBundleOrigin } from './templateBundle';",
            "import { TemplateRenderer } from './templateRenderer';",
            'export function run() {',
            '  const renderer = new TemplateRenderer(templateBundle());',
            "  return { origin: templateBundleOrigin, names: renderer.names(), rendered: renderer.render('order-shipped', renderer.sample('order-shipped')) };",
            '}',
          ].join('\n'),
          resolveDir: path.resolve(__dirname, '../..', 'src', 'templates'),
          sourcefile: 'probe.ts',
          loader: 'ts',
        },
        bundle: true,
        platform: 'node',
        target: 'node20',
        format: 'cjs',
        outfile: path.join(outdir, plugins.length ? 'probe.js' : 'control.js'),
        logLevel: 'silent',
        plugins,
      });
    await bundleProbe([templatesPlugin({ templatesDir: TEMPLATES_DIR })]);
    await bundleProbe([]);
    const bundled = readFileSync(path.join(outdir, 'probe.js'), 'utf8');
    expect(bundled).not.toContain('loadTemplateBundle');

    // The bundle alone, in a folder with no templates/ and no node_modules; every fs read after loading is recorded.
    const alone = path.join(work, 'alone');
    mkdirSync(alone);
    copyFileSync(path.join(outdir, 'probe.js'), path.join(alone, 'probe.js'));
    copyFileSync(path.join(outdir, 'control.js'), path.join(alone, 'control.js'));
    const runner = (file: string) =>
      [
        "const fs = require('node:fs');",
        `const probe = require('./${file}');`,
        'const reads = [];',
        "for (const name of ['readFileSync', 'readdirSync', 'existsSync', 'statSync', 'openSync', 'readFile', 'readdir']) {",
        '  const original = fs[name];',
        '  fs[name] = function (...args) { reads.push(name + " " + String(args[0])); return original.apply(this, args); };',
        '}',
        'let result;',
        'try { result = probe.run(); } catch (error) { result = { error: error.message }; }',
        'process.stdout.write(JSON.stringify({ ...result, reads }));',
      ].join('\n');
    const run = async (file: string) =>
      (await promisify(execFile)(process.execPath, ['-e', runner(file)], { cwd: alone })).stdout;

    // Control: without the plugin the same entry goes looking for templates/ on disk, and the recorder sees it.
    const control = JSON.parse(await run('control.js')) as { error?: string; reads: string[] };
    expect(control.error).toMatch(/Templates folder .*templates does not exist/);
    expect(control.reads).toEqual([expect.stringMatching(/^existsSync .*templates$/)]);

    const stdout = await run('probe.js');
    const result = JSON.parse(stdout) as {
      origin: string;
      names: string[];
      rendered: { subject: string; html: string; text: string };
      reads: string[];
    };
    expect(result.origin).toBe('embedded');
    expect(result.reads).toEqual([]);
    expect(result.names).toEqual(renderer.names());
    expect(result.rendered).toEqual(renderer.render('order-shipped', orderSample()));
  });

  it('exports the same API as src/templates/templateBundle.ts', () => {
    const dev = devTemplateBundle;
    const source = embeddedModule(templateBundle());
    const exported = [...source.matchAll(/^export (?:const|function) (\w+)/gm)].map((m) => m[1]).sort();
    expect(exported).toEqual(Object.keys(dev).sort());
  });

  it('fails the build when a template does not render its sample.json', async () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'm365-templates-'));
    try {
      mkdirSync(path.join(dir, 'broken'));
      writeFileSync(path.join(dir, 'broken', 'subject.hbs'), 'Order {{order.id}}');
      writeFileSync(path.join(dir, 'broken', 'html.hbs'), '<p>{{order.id}}</p>');
      writeFileSync(path.join(dir, 'broken', 'sample.json'), '{"order": {}}');
      await expect(
        build({
          stdin: {
            contents: "export { templateBundle } from './templateBundle';",
            resolveDir: path.resolve(__dirname, '../..', 'src', 'templates'),
          },
          bundle: true,
          platform: 'node',
          format: 'cjs',
          write: false,
          logLevel: 'silent',
          plugins: [templatesPlugin({ templatesDir: dir })],
        }),
      ).rejects.toThrow(/templates\/broken does not render its sample\.json: data\.order\.id/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('fails the build when nothing resolves to the module it replaces (the module moved, the import changed)', async () => {
    const built = (mustReplace?: boolean) =>
      build({
        // Imports the renderer but no template bundle: a deployed app built like this would read templates from disk.
        stdin: {
          contents: "export { TemplateRenderer } from './templateRenderer';",
          resolveDir: path.resolve(__dirname, '../..', 'src', 'templates'),
        },
        bundle: true,
        platform: 'node',
        format: 'cjs',
        write: false,
        logLevel: 'silent',
        plugins: [templatesPlugin({ templatesDir: TEMPLATES_DIR, ...(mustReplace === false ? { mustReplace } : {}) })],
      });
    await expect(built()).rejects.toThrow(/the templates were not embedded/);
    await expect(built(false)).resolves.toMatchObject({ errors: [] });
  });
});

describe('HTML escaping', () => {
  // Regression: data made of characters to escape cost Handlebars a callback per character (8.7 times a normal
  // request of its size); escapeHtml writes the same output with one pass of a loop.
  /** Handlebars' escapeExpression for strings, as Handlebars 4 writes it: one replace with a callback per character. */
  const reference = (text: string) =>
    text.replace(
      /[&<>"'`=]/g,
      (c) =>
        ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#x27;', '`': '&#x60;', '=': '&#x3D;' })[c]!,
    );

  it("escapeHtml writes exactly what Handlebars' escaping writes, for any text", () => {
    const text = fc.string({
      unit: fc.constantFrom('&', '<', '>', '"', "'", '`', '=', 'a', ' ', 'é', '\n'),
      maxLength: 200,
    });
    fc.assert(
      fc.property(fc.oneof(text, fc.string(), fc.string({ unit: 'grapheme' })), (s) => {
        expect(escapeHtml(s)).toBe(reference(s));
      }),
      {
        numRuns: 2_000,
      },
    );
    // Not strings: as Handlebars does (null and undefined render empty, numbers and booleans as text).
    expect([null, undefined, 0, 42, false, true].map((v) => escapeHtml(v))).toEqual([
      '',
      '',
      '0',
      '42',
      'false',
      'true',
    ]);
  });

  it('rendered templates use it: data is escaped in the HTML and left as is in the text part', () => {
    const renderer = new TemplateRenderer(templateBundle());
    const title = `<script>alert("x")</script> & 'q' = \`b\``;
    const out = renderer.render('notification', { title, paragraphs: ['p'] });
    expect(out.html).toContain(reference(title));
    expect(out.html).not.toContain('<script>');
    expect(out.text).toContain(title);
  });
});
