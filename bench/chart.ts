// SVG chart of the paired ratios (FreeFlow / baseline) per metric against 1.0 and the targets,
// rendered headless with vega + vega-lite.
import * as vega from 'vega';
import * as vl from 'vega-lite';
import type { BenchRecord, Output } from './report.js';
import { RDMA_BW_VS_HOST_MIN, RDMA_LAT_OVER_HOST_MAX_US } from './rdma-vs-host.js';

const SHORT: Record<string, string> = {
  freeflow_vs_host: 'vs host',
  freeflow_vs_overlay: 'vs overlay',
  freeflow_vs_loopback: 'same host, vs loopback',
};

const LABEL: Record<string, string> = {
  freeflow_vs_host: 'FreeFlow / host (cross-host)',
  freeflow_vs_overlay: 'FreeFlow / overlay (cross-host)',
  freeflow_vs_loopback: 'FreeFlow / loopback (same host)',
};

/** Target for a ratio: within 5% of bare metal (host / loopback); better than the overlay.
 * The cross-host RDMA rows have the RDMA targets against host TCP instead: bandwidth 0.8x,
 * typical latency at most 5 us above the host's (as a ratio of this run's host median). */
function target(r: BenchRecord, key: string): number | null {
  if (key === 'freeflow_vs_overlay') return null; // 1.0 itself is the bar
  if (r.workload.startsWith('rdma-')) {
    if (r.better === 'higher') return RDMA_BW_VS_HOST_MIN;
    return /typical/.test(r.metric) && r.host ? (r.host + RDMA_LAT_OVER_HOST_MAX_US) / r.host : null;
  }
  return r.better === 'higher' ? 0.95 : 1.05;
}

/** vega-lite warns about harmless scale-sort unions across layers; keep the terminal clean. */
function quietLogger(): any {
  const l: any = { level: () => l, warn: () => l, info: () => l, debug: () => l, error: (...a: unknown[]) => (console.error(...a), l) };
  return l;
}

export async function chartSvg(o: Output): Promise<string> {
  const reps: any[] = [];
  const meds: any[] = [];
  const targets: any[] = [];
  const rows: string[] = [];
  for (const r of o.records) {
    for (const [key, values] of Object.entries(r.ratio_reps)) {
      const cmp = LABEL[key];
      const row = `${r.metric} ${r.better === 'higher' ? '↑' : '↓'} · ${SHORT[key]}`;
      rows.push(row);
      for (const v of values) reps.push({ row, cmp, ratio: v });
      const med = (r as any)[key];
      if (med != null) meds.push({ row, cmp, ratio: med, valid: r.valid ? 'verified' : 'INVALID' });
      const t = target(r, key);
      if (t != null && med != null) targets.push({ row, cmp, ratio: t });
    }
  }
  const all = [...reps, ...meds].map((d) => d.ratio).filter((x) => x > 0);
  const lo = Math.min(0.25, ...all) * 0.9;
  const hi = Math.max(4, ...all) * 1.1;
  const x = { field: 'ratio', type: 'quantitative', title: 'FreeFlow / baseline (paired per repetition; log scale)', scale: { type: 'log', domain: [lo, hi], nice: false } };
  const y = { field: 'row', type: 'nominal', title: null, sort: rows, axis: { labelLimit: 700 } };
  const color = { field: 'cmp', type: 'nominal', title: 'ratio', legend: { labelLimit: 400, orient: 'bottom', direction: 'vertical' }, scale: { domain: Object.values(LABEL), range: ['#1f77b4', '#ff7f0e', '#2ca02c'] } };
  const m = o.meta;
  const spec: any = {
    $schema: 'https://vega.github.io/schema/vega-lite/v6.json',
    title: {
      text: `FreeFlow bench ${m.date.slice(0, 16).replace('T', ' ')} UTC — ${m.machine.cpu}, ${m.machine.nproc} CPUs, Linux ${m.machine.kernel} — ${m.mode}, ${m.reps} reps`,
      subtitle: `↑ higher is better, ↓ lower is better. Dots: repetitions; diamonds: median; black line: 1.0; red ticks: target (within 5% of host/loopback; RDMA: 0.8x host TCP bandwidth, host TCP latency + 5 us)`,
    },
    width: 560,
    config: { font: 'sans-serif', axis: { labelFontSize: 11 } },
    layer: [
      { data: { values: [{ ratio: 1 }] }, mark: { type: 'rule', color: 'black' }, encoding: { x: { field: 'ratio', type: 'quantitative' } } },
      { data: { values: reps }, mark: { type: 'point', opacity: 0.45, size: 30, filled: true }, encoding: { x, y, color } },
      { data: { values: meds }, mark: { type: 'point', shape: 'diamond', size: 110, filled: true, stroke: 'black', strokeWidth: 0.6 }, encoding: { x, y, color, tooltip: [{ field: 'ratio' }, { field: 'valid' }] } },
      { data: { values: targets }, mark: { type: 'tick', color: '#d62728', thickness: 2, size: 9 }, encoding: { x, y } },
    ],
    resolve: { scale: { x: 'shared' } },
  };
  spec.height = { step: 16 };
  const compiled = vl.compile(spec, { logger: quietLogger() }).spec;
  const view = new vega.View(vega.parse(compiled), { renderer: 'none' });
  const svg = await view.toSVG();
  view.finalize();
  return svg;
}
