import { XMLParser, XMLValidator } from 'fast-xml-parser';
import { describe, expect, it } from 'vitest';
import { pacingChartSvg, type PacingSend } from '../../bench/pacingChart';

type Node = Record<string, unknown>;
const parser = new XMLParser({
  ignoreAttributes: false,
  attributeNamePrefix: '@',
  isArray: (_name, _path, _leaf, isAttribute) => !isAttribute,
});

function parse(svg: string): Node {
  const valid = XMLValidator.validate(svg);
  expect(valid, JSON.stringify(valid)).toBe(true);
  return (parser.parse(svg) as { svg: Node[] }).svg[0] as Node;
}

const groups = (svg: Node, cls: string) =>
  ((svg.g ?? []) as Node[]).filter((g) => String(g['@class']).split(' ').includes(cls));
const texts = (node: Node): string[] =>
  ((node.text ?? []) as Array<{ '#text'?: string | number } | string>).map((t) =>
    typeof t === 'string' ? t : String(t['#text'] ?? ''),
  );

/** `count` sends spread evenly over `seconds`, round-robin over `instances`. */
function evenSends(count: number, seconds: number, instances: number): PacingSend[] {
  return Array.from({ length: count }, (_, i) => ({
    at: 1_000_000 + (i * seconds * 1000) / count,
    instance: i % instances,
  }));
}

describe('pacingChartSvg', () => {
  it('is well-formed SVG with a title, axis labels, one series per instance and the limit line', () => {
    const svg = parse(
      pacingChartSvg({
        sends: evenSends(600, 60, 3),
        instances: 3,
        ratePerWindow: 300,
        windowMs: 30_000,
        subtitle: 'npm run bench -- --only=pacing, 2026-12-01 <test> & "quotes"',
      }),
    );
    expect(svg['@xmlns']).toBe('http://www.w3.org/2000/svg');
    const all = [...texts(svg), ...((svg.g ?? []) as Node[]).flatMap((g) => texts(g))];
    expect(all).toContain('Sends per second by instance');
    expect(all).toContain('npm run bench -- --only=pacing, 2026-12-01 <test> & "quotes"');
    expect(all).toContain('seconds since the first send');
    expect(all.some((t) => t.startsWith('sends per second'))).toBe(true);

    const series = groups(svg, 'series');
    expect(series.map((g) => g['@data-instance'])).toEqual(['1', '2', '3']);
    // 600 sends in 2 s bars over 60 s: every bar of every instance is there.
    for (const g of series) expect((g.rect as Node[]).length).toBe(30);
    expect(new Set(series.map((g) => g['@fill'])).size).toBe(3);

    const limit = groups(svg, 'limit')[0]!;
    const line = (limit.line as Node[])[0]!;
    expect(line['@y1']).toBe(line['@y2']);
    const legend = texts(groups(svg, 'legend')[0]!);
    expect(legend).toEqual(['instance 1', 'instance 2', 'instance 3', 'allowed: 10/s', '(300 per 30 s)']);
  });

  it('stacks the instances: at a steady 10 sends a second, the bars reach the allowed-rate line', () => {
    const svg = parse(
      pacingChartSvg({ sends: evenSends(600, 60, 3), instances: 3, ratePerWindow: 300, windowMs: 30_000 }),
    );
    const limitY = Number(((groups(svg, 'limit')[0]!.line as Node[])[0] as Node)['@y1']);
    const series = groups(svg, 'series');
    // The top of the stack in the first bar is the last series' rect; its top edge is the limit's height.
    const topRect = (series[2]!.rect as Node[])[0]!;
    expect(Math.abs(Number(topRect['@y']) - limitY)).toBeLessThan(0.2);
    // And the first series sits on the x axis.
    const bottomRect = (series[0]!.rect as Node[])[0]!;
    const axis = groups(svg, 'x-axis')[0]!;
    const axisY = Number(((axis.line as Node[])[0] as Node)['@y1']);
    expect(Math.abs(Number(bottomRect['@y']) + Number(bottomRect['@height']) - axisY)).toBeLessThan(0.2);
  });

  it('keeps an instance that sent nothing in the legend, and shows sends of no known instance apart', () => {
    const sends: PacingSend[] = [
      ...evenSends(100, 20, 1),
      { at: 1_005_000, instance: undefined },
      { at: 1_006_000, instance: undefined },
    ];
    const svg = parse(pacingChartSvg({ sends, instances: 2, ratePerWindow: 300, windowMs: 30_000 }));
    const series = groups(svg, 'series');
    expect(series.map((g) => g['@data-instance'])).toEqual(['1', '2', 'unknown']);
    expect(series[1]!.rect).toBeUndefined();
    expect((series[2]!.rect as Node[]).length).toBeGreaterThanOrEqual(1);
    expect(texts(groups(svg, 'legend')[0]!)).toContain('instance not known');
  });
});
