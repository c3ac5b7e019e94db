/**
 * Hostile requests: the validation time of each hostile POST /api/messages body against a normal body of the same
 * byte size, in process and side by side; then through the dev host over HTTP, normal POSTs before and right after
 * the hostile ones.
 */
import { execFileSync } from 'node:child_process';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { startDevHost } from '../dev/host';
import { Progress } from '../dev/progress';
import { loadConfig } from '../src/config';
import { MailError } from '../src/errors';
import { MAX_BODY_JSON_VALUES, parseBoundedJson } from '../src/inputBounds';
import { Outbox, payloadHash, type OutboxDeps } from '../src/outbox/outbox';
import { parseSendRequest } from '../src/outbox/sendRequest';
import { templateBundle } from '../src/templates/templateBundle';
import { TemplateRenderer } from '../src/templates/templateRenderer';

const ROOT = path.resolve(__dirname, '..');
/** No hostile request may cost more than this many times a normal one of its size. */
export const TARGET_RATIO = 5;
/** Normal POSTs right after the hostile ones must be answered about as fast as before: p50 within this factor. */
export const TARGET_AFTER_RATIO = 1.5;

type Kind = 'literal' | 'template';

interface Shape {
  name: string;
  /** What a normal request of the same size is: a literal message (text body) or a notification template request. */
  normal: Kind;
  body: string;
}

export interface ShapeFigures {
  shape: string;
  bytes: number;
  normal: Kind;
  outcome: 'accepted' | 'refused';
  hostileMedianMs: number;
  hostileWorstMs: number;
  normalMedianMs: number;
  ratio: number;
  verdict: 'PASS' | 'FALLS SHORT';
}

export interface HostileFigures {
  reps: number;
  target: number;
  shapes: ShapeFigures[];
  worstRatio: number;
  http: {
    requests: number;
    beforeP50Ms: number;
    beforeP99Ms: number;
    firstAfterMs: number;
    afterP50Ms: number;
    afterP99Ms: number;
    ratioP50: number;
    hostileAnswers: Array<{ shape: string; status: number; ms: number }>;
    verdict: 'PASS' | 'FALLS SHORT';
  };
}

const PROSE = 'The quarterly report is attached; figures are final unless noted otherwise. ';
const round = (n: number, digits = 2) => Math.round(n * 10 ** digits) / 10 ** digits;
const bytesOf = (text: string) => Buffer.byteLength(text);

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 ? (sorted[mid] as number) : ((sorted[mid - 1] as number) + (sorted[mid] as number)) / 2;
}

function percentile(values: number[], p: number): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)] as number;
}

/** `body` with `filler` grown until the JSON is exactly `bytes` bytes (ASCII filler, so one character is one byte). */
function padded(bytes: number, make: (filler: string) => unknown): string {
  const empty = bytesOf(JSON.stringify(make('')));
  const count = Math.max(0, bytes - empty);
  return JSON.stringify(make(PROSE.repeat(Math.ceil(count / PROSE.length)).slice(0, count)));
}

/** A normal request of `bytes` bytes: a literal message whose text fills it, or a notification with prose paragraphs. */
function normalBody(kind: Kind, bytes: number): string {
  if (kind === 'literal') return padded(bytes, (text) => ({ to: 'a@example.com', subject: 'Normal', text }));
  // Paragraphs of at most 60,000 characters each, as ordinary template data is (strings are bounded at 64 KiB).
  return padded(bytes, (text) => {
    const paragraphs: string[] = [];
    for (let i = 0; i < text.length; i += 60_000) paragraphs.push(text.slice(i, i + 60_000));
    return { to: 'a@example.com', template: 'notification', data: { title: 'Normal title', paragraphs } };
  });
}

/** The hostile shapes, each at the size the issue reported (about 1.7 MB) or at the largest its field allows. */
export function hostileShapes(): Shape[] {
  const SIZE = 1_700_000;
  const literal = (extra: Record<string, unknown>) =>
    JSON.stringify({ to: 'a@example.com', subject: 's', text: 't', ...extra });
  const template = (data: Record<string, unknown>) =>
    JSON.stringify({ to: 'a@example.com', template: 'notification', data: { title: 't', paragraphs: [], ...data } });
  const thousand = (entry: unknown) => Array.from({ length: 1_000 }, () => entry);
  const deep = Math.floor((SIZE - 100) / 2);
  const base64Lines = Buffer.alloc(900_000, 7).toString('base64').replace(/.{76}/g, '$&\r\n');
  return [
    {
      name: 'to[]: 1,000 × 575 ideographic spaces + a letter',
      normal: 'literal',
      body: JSON.stringify({ to: thousand(`${'\u3000'.repeat(575)}a`), subject: 's', text: 't' }),
    },
    {
      name: 'to[]: 1,000 × 575 spaces + a letter',
      normal: 'literal',
      body: JSON.stringify({ to: thousand(`${' '.repeat(575)}a`), subject: 's', text: 't' }),
    },
    {
      name: 'to[]: 1,000 × a@ + 317 dots + !',
      normal: 'literal',
      body: JSON.stringify({ to: thousand(`a@${'.'.repeat(317)}!`), subject: 's', text: 't' }),
    },
    {
      name: 'to[0].address: a@ + 1.7 M dots',
      normal: 'literal',
      body: JSON.stringify({ to: [{ address: `a@${'.'.repeat(SIZE)}` }], subject: 's', text: 't' }),
    },
    {
      name: 'to[]: 1,000 names of 560 quotes',
      normal: 'literal',
      body: JSON.stringify({ to: thousand(`${'"'.repeat(560)} <a@b.co>`), subject: 's', text: 't' }),
    },
    {
      name: 'to[]: 1,000 × 566 "<" + address',
      normal: 'literal',
      body: JSON.stringify({ to: thousand(`${'<'.repeat(566)}a@b.co>`), subject: 's', text: 't' }),
    },
    {
      name: 'contentBase64: 1.7 M line breaks + !',
      normal: 'literal',
      body: literal({ attachments: [{ filename: 'a', contentBase64: `${'\n'.repeat(SIZE / 2)}!` }] }),
    },
    {
      name: 'contentBase64: valid, CRLF every 76 (accepted)',
      normal: 'literal',
      body: literal({ attachments: [{ filename: 'a.bin', contentBase64: base64Lines }] }),
    },
    { name: 'text: 850 k escaped quotes (accepted)', normal: 'literal', body: literal({ text: '"'.repeat(SIZE / 2) }) },
    {
      name: 'subject via data: 3,990 chars of space/tab/LF runs',
      normal: 'template',
      body: template({ title: `a${`${' '.repeat(60)}\t\n`.repeat(63)}b` }),
    },
    {
      name: 'subject via data: 60,000 spaces + LF',
      normal: 'template',
      body: template({ title: `a${' '.repeat(60_000)}\nb` }),
    },
    {
      name: 'data strings: 180 k "<&>\\"" to escape',
      normal: 'template',
      body: template({ paragraphs: Array.from({ length: 3 }, () => '<&>"'.repeat(15_000)) }),
    },
    {
      name: 'data: arrays nested 850 k deep',
      normal: 'literal',
      body: `{"to":"a@example.com","template":"notification","data":{"x":${'['.repeat(deep)}${']'.repeat(deep)}}}`,
    },
    {
      name: 'data: objects nested 5,000 deep',
      normal: 'literal',
      body: `{"to":"a@example.com","template":"notification","data":{"x":${'{"a":'.repeat(5_000)}1${'}'.repeat(5_000)}}}`,
    },
    {
      name: 'attachments: 850 k numbers',
      normal: 'literal',
      body: `{"to":"a@example.com","subject":"s","text":"t","attachments":[${'0,'.repeat(SIZE / 2)}0]}`,
    },
    {
      name: 'to: 190 k short addresses',
      normal: 'literal',
      body: JSON.stringify({ to: Array.from({ length: 190_000 }, () => 'a@b.co'), subject: 's', text: 't' }),
    },
    {
      name: 'body: 140 k unknown fields',
      normal: 'literal',
      body: `{"to":"a@example.com","subject":"s","text":"t",${Array.from({ length: 140_000 }, (_, i) => `"k${i}":0`).join(',')}}`,
    },
    {
      name: 'headers: 2,000',
      normal: 'literal',
      body: literal({ headers: Object.fromEntries(Array.from({ length: 2_000 }, (_, i) => [`X-H${i}`, 'v'])) }),
    },
  ];
}

/** What POST /api/messages does with a body before storage: decode, scan and parse, validate, render, hash. */
function validator(env: Record<string, string>): (bytes: Buffer) => 'accepted' | 'refused' {
  const config = loadConfig(env);
  const outbox = new Outbox({ config, renderer: new TemplateRenderer(templateBundle()) } as unknown as OutboxDeps);
  const decoder = new TextDecoder('utf-8', { fatal: true });
  return (bytes) => {
    try {
      const body = parseBoundedJson(decoder.decode(bytes), { maxValues: MAX_BODY_JSON_VALUES });
      const request = parseSendRequest(body);
      outbox.render(request);
      payloadHash(request);
      return 'accepted';
    } catch (error) {
      if (error instanceof MailError) return 'refused';
      throw error;
    }
  };
}

function time(run: () => unknown): number {
  const started = performance.now();
  run();
  return performance.now() - started;
}

/** Each shape against its normal body, interleaved `reps` times after one warm-up of each. */
function inProcess(env: Record<string, string>, shapes: Shape[], reps: number): ShapeFigures[] {
  const validate = validator(env);
  const progress = new Progress({
    label: 'hostile: bodies against normal ones, in process',
    total: shapes.length,
    unit: 'shapes',
  });
  const figures = shapes.map((shape): ShapeFigures => {
    const hostile = Buffer.from(shape.body);
    const normal = Buffer.from(normalBody(shape.normal, hostile.length));
    const outcome = validate(hostile);
    if (validate(normal) !== 'accepted') throw new Error(`the normal body for "${shape.name}" was refused`);
    const hostileMs: number[] = [];
    const normalMs: number[] = [];
    for (let i = 0; i < reps; i++) {
      hostileMs.push(time(() => validate(hostile)));
      normalMs.push(time(() => validate(normal)));
    }
    const ratio = median(hostileMs) / median(normalMs);
    progress.tick(1, shape.name);
    return {
      shape: shape.name,
      bytes: hostile.length,
      normal: shape.normal,
      outcome,
      hostileMedianMs: round(median(hostileMs)),
      hostileWorstMs: round(Math.max(...hostileMs)),
      normalMedianMs: round(median(normalMs)),
      ratio: round(ratio),
      verdict: ratio <= TARGET_RATIO ? 'PASS' : 'FALLS SHORT',
    };
  });
  progress.done();
  return figures;
}

/** The dev host on the built bundle: normal POSTs, then the hostile ones, then normal POSTs sent right after. */
async function overHttp(
  env: Record<string, string>,
  shapes: Shape[],
  requests: number,
): Promise<HostileFigures['http']> {
  execFileSync(process.execPath, [path.join(ROOT, 'scripts/build.mjs')], { cwd: ROOT, stdio: 'inherit' });
  const host = await startDevHost({ entry: path.join(ROOT, 'dist/functions/index.js'), env, port: 0, log: () => {} });
  try {
    const url = `${host.url}/api/messages?code=${host.functionKey}`;
    const post = async (body: string) => {
      const started = performance.now();
      const response = await fetch(url, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: new Uint8Array(Buffer.from(body)),
      });
      await response.arrayBuffer();
      return { status: response.status, ms: performance.now() - started };
    };
    let n = 0;
    // Scheduled a day ahead, so that delivery does not compete for the CPU (as bench/httpAccept.ts).
    const normal = () =>
      JSON.stringify({
        to: `normal${n++}@example.com`,
        subject: 'Normal',
        text: 'Accept latency next to hostile requests.',
        sendAt: new Date(Date.now() + 86_400_000).toISOString(),
      });
    const sequence = async (count: number) => {
      const ms: number[] = [];
      for (let i = 0; i < count; i++) {
        const answer = await post(normal());
        if (answer.status !== 202) throw new Error(`a normal POST answered ${answer.status}`);
        ms.push(answer.ms);
      }
      return ms;
    };
    const phases = new Progress({ label: 'hostile: over HTTP', total: 2, unit: 'phases', rate: false });
    await sequence(20); // warm-up: storage resources, JIT
    phases.update(0, `${requests} normal POSTs`);
    const before = await sequence(requests);
    phases.update(1, `${shapes.length} hostile bodies and ${requests} normal POSTs behind them`);
    // The hostile bodies all at once, and the normal POSTs right behind them, without waiting for their answers.
    // The accepted ones are scheduled a day ahead too: what is measured is accepting them, not sending them.
    const later = `{"sendAt":"${new Date(Date.now() + 86_400_000).toISOString()}",`;
    const hostile = Promise.all(
      shapes.map(async (shape) => ({ shape: shape.name, ...(await post(later + shape.body.slice(1))) })),
    );
    const after = await sequence(requests);
    const answers = await hostile;
    phases.update(2);
    phases.done();
    for (const answer of answers) {
      if (answer.status >= 500) throw new Error(`"${answer.shape}" answered ${answer.status}`);
    }
    const ratio = median(after) / median(before);
    return {
      requests,
      beforeP50Ms: round(median(before), 1),
      beforeP99Ms: round(percentile(before, 99), 1),
      firstAfterMs: round(after[0] as number, 1),
      afterP50Ms: round(median(after), 1),
      afterP99Ms: round(percentile(after, 99), 1),
      ratioP50: round(ratio),
      hostileAnswers: answers.map((a) => ({ shape: a.shape, status: a.status, ms: round(a.ms, 1) })),
      verdict: ratio <= TARGET_AFTER_RATIO ? 'PASS' : 'FALLS SHORT',
    };
  } finally {
    await host.stop();
  }
}

/** Runs both halves with the app settings `env` (the sandbox's, with Azurite as AzureWebJobsStorage). */
export async function runHostileBench(
  env: Record<string, string>,
  options: { reps?: number; requests?: number } = {},
): Promise<HostileFigures> {
  const reps = options.reps ?? 9;
  const shapes = hostileShapes();
  const figures = inProcess(env, shapes, reps);
  const http = await overHttp(env, shapes, options.requests ?? 50);
  return {
    reps,
    target: TARGET_RATIO,
    shapes: figures,
    worstRatio: Math.max(...figures.map((f) => f.ratio)),
    http,
  };
}
