/** The pacing run as an SVG chart: sends per second over time, stacked by the instance that sent them, against the allowed rate. */

/** One message the sandbox's Exchange accepted: when (epoch ms) and which instance sent it (undefined: not known). */
export interface PacingSend {
  at: number;
  instance: number | undefined;
}

export interface PacingChartInput {
  sends: PacingSend[];
  instances: number;
  /** The limit: `ratePerWindow` sends in any `windowMs`. */
  ratePerWindow: number;
  windowMs: number;
  /** Width of one bar (milliseconds); default 2,000. */
  binMs?: number;
  title?: string;
  /** A line under the title: the command and date that produced the run. */
  subtitle?: string;
}

const WIDTH = 900;
const HEIGHT = 420;
const MARGIN = { top: 64, right: 180, bottom: 56, left: 64 };
/** Colour-blind safe (Okabe–Ito); the grey is for sends whose instance is not known. */
const COLOURS = ['#0072B2', '#E69F00', '#009E73', '#CC79A7', '#56B4E9', '#D55E00', '#F0E442'];
const UNKNOWN_COLOUR = '#999999';
const LIMIT_COLOUR = '#C00000';

const XML_ESCAPES: Record<string, string> = { '<': '&lt;', '>': '&gt;', '&': '&amp;', '"': '&quot;', "'": '&apos;' };

function escapeXml(text: string): string {
  return text.replace(/[<>&"']/g, (c) => XML_ESCAPES[c] ?? c);
}

const fixed = (n: number) => (Math.round(n * 10) / 10).toString();

/** A round step for an axis spanning `span` with about `ticks` ticks. */
function niceStep(span: number, ticks: number): number {
  const raw = span / Math.max(1, ticks);
  const magnitude = 10 ** Math.floor(Math.log10(raw));
  for (const m of [1, 2, 2.5, 5, 10]) if (raw <= m * magnitude) return m * magnitude;
  return 10 * magnitude;
}

/**
 * Renders the chart. Every instance gets a series (a group of bars, one colour, a legend entry) even if it sent
 * nothing; the allowed rate (ratePerWindow per windowMs, as sends per second) is a horizontal line.
 */
export function pacingChartSvg(input: PacingChartInput): string {
  const binMs = input.binMs ?? 2_000;
  const times = input.sends.map((s) => s.at);
  const start = times.length > 0 ? Math.min(...times) : 0;
  const end = times.length > 0 ? Math.max(...times) : 0;
  const bins = Math.max(1, Math.ceil((end - start + 1) / binMs));
  const series = Array.from({ length: input.instances }, (_, i) => ({
    name: `instance ${i + 1}`,
    colour: COLOURS[i % COLOURS.length] as string,
    counts: new Array<number>(bins).fill(0),
  }));
  const unknown = { name: 'instance not known', colour: UNKNOWN_COLOUR, counts: new Array<number>(bins).fill(0) };
  for (const send of input.sends) {
    const bin = Math.min(bins - 1, Math.floor((send.at - start) / binMs));
    const target = send.instance !== undefined ? series[send.instance] : undefined;
    (target ?? unknown).counts[bin] = ((target ?? unknown).counts[bin] ?? 0) + 1;
  }
  if (unknown.counts.some((c) => c > 0)) series.push(unknown);

  const perSecond = (count: number) => count / (binMs / 1000);
  const limitPerSecond = input.ratePerWindow / (input.windowMs / 1000);
  const totals = Array.from({ length: bins }, (_, b) => series.reduce((sum, s) => sum + (s.counts[b] ?? 0), 0));
  const yMax = Math.max(limitPerSecond * 1.25, ...totals.map(perSecond)) || 1;
  const yStep = niceStep(yMax, 6);
  const yTop = Math.ceil(yMax / yStep) * yStep;
  const plotW = WIDTH - MARGIN.left - MARGIN.right;
  const plotH = HEIGHT - MARGIN.top - MARGIN.bottom;
  const spanS = (bins * binMs) / 1000;
  const x = (seconds: number) => MARGIN.left + (seconds / spanS) * plotW;
  const y = (rate: number) => MARGIN.top + plotH - (rate / yTop) * plotH;

  const out: string[] = [];
  out.push(
    `<svg xmlns="http://www.w3.org/2000/svg" width="${WIDTH}" height="${HEIGHT}" viewBox="0 0 ${WIDTH} ${HEIGHT}" font-family="sans-serif" font-size="12">`,
  );
  const title = input.title ?? 'Sends per second by instance';
  out.push(`<title>${escapeXml(title)}</title>`);
  out.push(`<rect x="0" y="0" width="${WIDTH}" height="${HEIGHT}" fill="#ffffff"/>`);
  out.push(`<text x="${MARGIN.left}" y="24" font-size="16" font-weight="bold">${escapeXml(title)}</text>`);
  if (input.subtitle) out.push(`<text x="${MARGIN.left}" y="44" fill="#444444">${escapeXml(input.subtitle)}</text>`);

  // Grid and y axis.
  out.push('<g class="axis y-axis">');
  for (let v = 0; v <= yTop + 1e-9; v += yStep) {
    out.push(
      `<line x1="${MARGIN.left}" x2="${MARGIN.left + plotW}" y1="${fixed(y(v))}" y2="${fixed(y(v))}" stroke="#e5e5e5"/>`,
      `<text x="${MARGIN.left - 8}" y="${fixed(y(v) + 4)}" text-anchor="end">${fixed(v)}</text>`,
    );
  }
  out.push(
    `<text transform="translate(18 ${fixed(MARGIN.top + plotH / 2)}) rotate(-90)" text-anchor="middle">sends per second (${fixed(binMs / 1000)} s bars)</text>`,
  );
  out.push('</g>');

  // X axis.
  const xStep = niceStep(spanS, 10);
  out.push('<g class="axis x-axis">');
  out.push(
    `<line x1="${MARGIN.left}" x2="${MARGIN.left + plotW}" y1="${MARGIN.top + plotH}" y2="${MARGIN.top + plotH}" stroke="#333333"/>`,
  );
  for (let s = 0; s <= spanS + 1e-9; s += xStep) {
    out.push(
      `<line x1="${fixed(x(s))}" x2="${fixed(x(s))}" y1="${MARGIN.top + plotH}" y2="${MARGIN.top + plotH + 5}" stroke="#333333"/>`,
      `<text x="${fixed(x(s))}" y="${MARGIN.top + plotH + 18}" text-anchor="middle">${fixed(s)}</text>`,
    );
  }
  out.push(
    `<text x="${fixed(MARGIN.left + plotW / 2)}" y="${HEIGHT - 12}" text-anchor="middle">seconds since the first send</text>`,
  );
  out.push('</g>');

  // Stacked bars, one group per series.
  const stacked = new Array<number>(bins).fill(0);
  const barW = plotW / bins;
  for (const [i, s] of series.entries()) {
    const instance = s === unknown ? 'unknown' : String(i + 1);
    out.push(`<g class="series" data-instance="${instance}" fill="${s.colour}">`);
    out.push(`<title>${escapeXml(s.name)}</title>`);
    for (let b = 0; b < bins; b++) {
      const count = s.counts[b] ?? 0;
      if (count === 0) continue;
      const base = stacked[b] ?? 0;
      const top = base + count;
      stacked[b] = top;
      const y0 = y(perSecond(base));
      const y1 = y(perSecond(top));
      out.push(
        `<rect x="${fixed(MARGIN.left + b * barW)}" y="${fixed(y1)}" width="${fixed(Math.max(0.5, barW - 1))}" height="${fixed(y0 - y1)}"/>`,
      );
    }
    out.push('</g>');
  }

  // The allowed rate.
  const ly = fixed(y(limitPerSecond));
  out.push('<g class="limit">');
  out.push(
    `<line x1="${MARGIN.left}" x2="${MARGIN.left + plotW}" y1="${ly}" y2="${ly}" stroke="${LIMIT_COLOUR}" stroke-width="2"/>`,
  );
  out.push('</g>');

  // Legend.
  const lx = MARGIN.left + plotW + 16;
  out.push('<g class="legend">');
  series.forEach((s, i) => {
    const ty = MARGIN.top + 8 + i * 20;
    out.push(
      `<rect x="${lx}" y="${ty - 10}" width="12" height="12" fill="${s.colour}"/>`,
      `<text x="${lx + 18}" y="${ty}">${escapeXml(s.name)}</text>`,
    );
  });
  const limitY = MARGIN.top + 8 + series.length * 20;
  out.push(
    `<line x1="${lx}" x2="${lx + 12}" y1="${limitY - 4}" y2="${limitY - 4}" stroke="${LIMIT_COLOUR}" stroke-width="2"/>`,
    `<text x="${lx + 18}" y="${limitY}">allowed: ${fixed(limitPerSecond)}/s</text>`,
    `<text x="${lx + 18}" y="${limitY + 16}" fill="#444444">(${input.ratePerWindow} per ${fixed(input.windowMs / 1000)} s)</text>`,
  );
  out.push('</g>');
  out.push('</svg>');
  return `${out.join('\n')}\n`;
}
