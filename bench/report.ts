// Turns per-repetition results into records (medians, paired ratios), latest.json and latest.md.
import type { WorkloadResult, RepResult } from './runner.js';
import { PATHS } from './lib/paths.js';
import { median, pairedRatios, round } from './lib/stats.js';
import { rdmaVsHost, rdmaVsHostMarkdown } from './rdma-vs-host.js';

export interface BenchRecord {
  workload: string;
  metric: string;
  unit: string;
  better: 'higher' | 'lower';
  scope: 'cross-host' | 'same-host';
  host?: number | null;
  overlay?: number | null;
  bridge?: number | null;
  loopback?: number | null;
  freeflow: number | null;
  freeflow_vs_host?: number | null;
  freeflow_vs_overlay?: number | null;
  freeflow_vs_loopback?: number | null;
  /** per-repetition paired ratios behind the freeflow_vs_* medians */
  ratio_reps: Record<string, number[]>;
  /** per repetition: value per path (null: failed or not verified) */
  reps: Record<string, number | null>[];
  valid: boolean; // every FreeFlow repetition verifiably took the FreeFlow path
  invalid_reasons?: string[];
  errors?: string[];
}

export interface Meta {
  date: string;
  mode: 'quick' | 'full';
  reps: number;
  machine: { kernel: string; cpu: string; nproc: number };
  testbed: string;
  duration_s?: number;
  notes: string[];
}

export interface Output {
  meta: Meta;
  records: BenchRecord[];
  errors: { workload: string; error: string }[];
  /** per workload, path and repetition: what the runner saw (CPU window, VXLAN bytes, router counter growth) */
  runs: Record<string, unknown>[];
  /** RDMA figures against the host network's TCP figures and the RDMA targets */
  rdma_vs_host?: ReturnType<typeof rdmaVsHost>;
}

const COMPARE: Record<string, [string, string][]> = {
  'cross-host': [['freeflow_vs_host', 'host'], ['freeflow_vs_overlay', 'overlay']],
  'same-host': [['freeflow_vs_loopback', 'loopback']],
};

function valueOf(r: RepResult, key: string | 'cpu'): number | null {
  if (!r.sample || !r.valid) return null;
  const v = key === 'cpu' ? r.cpuValue : r.sample.values[key];
  return v != null && Number.isFinite(v) ? v : null;
}

export function runDetails(results: WorkloadResult[]): Output['runs'] {
  return results.flatMap((res) =>
    res.reps.map((r) => ({
      workload: res.workload.name,
      path: r.path,
      rep: r.rep,
      values: r.sample?.values,
      work: r.sample?.work,
      cpu_value: round(r.cpuValue, 4),
      busy_cpu_s: round(r.cpu?.busySec, 4),
      foreign_cpu_s: round(r.cpu?.foreignSec, 4),
      steal_cpu_s: round(r.cpu?.stealSec, 4),
      wall_s: round(r.cpu?.wallSec, 4),
      vxlan_bytes: r.vxlanBytes,
      router_cpu_s: round(r.routerCpuSec, 4),
      router_connects: r.routerConnects,
      router_counter_deltas: r.routerDeltas,
      valid: r.valid,
      invalid_reason: r.invalidReason,
      error: r.error,
    })),
  );
}

export function buildRecords(results: WorkloadResult[], reps: number): { records: BenchRecord[]; errors: Output['errors'] } {
  const records: BenchRecord[] = [];
  const errors: Output['errors'] = [];
  for (const res of results) {
    const w = res.workload;
    if (res.error) errors.push({ workload: w.name, error: res.error });
    const metrics = [...w.metrics.map((m) => ({ ...m })), ...(w.cpu ? [{ key: 'cpu', metric: w.cpu.metric, unit: w.cpu.unit, better: 'lower' as const }] : [])];
    for (const scope of ['cross-host', 'same-host'] as const) {
      const paths = PATHS.filter((p) => p.scope === scope);
      const series: Record<string, (number | null)[]> = {};
      for (const m of metrics) {
        const rec: BenchRecord = { workload: w.name, metric: m.metric, unit: m.unit, better: m.better, scope, freeflow: null, ratio_reps: {}, reps: [], valid: true };
        for (const p of paths) series[p.name] = [];
        const repsOut: Record<string, number | null>[] = [];
        for (let i = 1; i <= reps; i++) {
          const row: Record<string, number | null> = { rep: i };
          for (const p of paths) {
            const r = res.reps.find((x) => x.rep === i && x.path === p.id);
            const v = r ? valueOf(r, m.key) : null;
            row[p.name] = v == null ? null : round(v, 4);
            series[p.name].push(v);
            if (r && p.name === 'freeflow' && !r.valid && !r.error) {
              rec.valid = false;
              (rec.invalid_reasons ??= []).push(`rep ${i}: ${r.invalidReason}`);
            }
            if (r?.error && m === metrics[0]) (rec.errors ??= []).push(`${p.name} rep ${i}: ${r.error.split('\n')[0]}`);
          }
          repsOut.push(row);
        }
        for (const p of paths) (rec as any)[p.name] = round(median(series[p.name].filter((x): x is number => x != null)), 4);
        for (const [key, base] of COMPARE[scope]) {
          const ratios = pairedRatios(series.freeflow, series[base]);
          rec.ratio_reps[key] = ratios.map((x) => round(x, 4)!);
          (rec as any)[key] = round(median(ratios), 4);
        }
        rec.reps = repsOut;
        if (!rec.errors?.length) delete rec.errors;
        records.push(rec);
      }
    }
  }
  return { records, errors };
}

function fmt(x: number | null | undefined): string {
  if (x == null) return '–';
  const a = Math.abs(x);
  return a >= 100 ? x.toFixed(0) : a >= 10 ? x.toFixed(1) : a >= 1 ? x.toFixed(2) : x.toFixed(3);
}

function ratioCell(r: BenchRecord, key: string): string {
  const v = (r as any)[key] as number | null | undefined;
  const reps = r.ratio_reps[key] ?? [];
  if (v == null) return '–';
  const range = reps.length > 1 ? ` [${fmt(Math.min(...reps))}–${fmt(Math.max(...reps))}]` : '';
  return `**${v.toFixed(2)}**${range}`;
}

export function markdown(o: Output): string {
  const m = o.meta;
  const L: string[] = [];
  L.push(`# FreeFlow bench — ${m.date}`);
  L.push('');
  L.push(`${m.mode} run, ${m.reps} interleaved repetitions per path; ${m.machine.cpu}, ${m.machine.nproc} CPUs, kernel ${m.machine.kernel}${m.duration_s ? `; took ${Math.round(m.duration_s)} s` : ''}.`);
  L.push('Values are medians over repetitions; ratios are medians of per-repetition paired ratios [min–max].');
  L.push('For rates, a ratio above 1 means FreeFlow is faster; for latency and CPU cost, below 1 means FreeFlow is better.');
  L.push('');
  const scopes: [string, string, string[], string[]][] = [
    ['Cross-host (h1 → h2)', 'cross-host', ['host', 'overlay', 'freeflow'], ['freeflow_vs_host', 'freeflow_vs_overlay']],
    ['Same host (h1)', 'same-host', ['bridge', 'loopback', 'freeflow'], ['freeflow_vs_loopback']],
  ];
  for (const [title, scope, cols, ratios] of scopes) {
    L.push(`## ${title}`);
    L.push('');
    L.push(`| metric | unit | ${cols.join(' | ')} | ${ratios.map((r) => r.replace('freeflow_vs_', 'freeflow/')).join(' | ')} | path check |`);
    L.push(`|---|---|${cols.map(() => '---:').join('|')}|${ratios.map(() => '---:').join('|')}|---|`);
    for (const r of o.records.filter((x) => x.scope === scope)) {
      const check = r.valid ? 'ok' : `INVALID (${r.invalid_reasons?.length ?? 0} reps)`;
      L.push(`| ${r.metric} | ${r.unit} (${r.better} is better) | ${cols.map((c) => fmt((r as any)[c])).join(' | ')} | ${ratios.map((k) => ratioCell(r, k)).join(' | ')} | ${check}${r.errors ? `; ${r.errors.length} errors` : ''} |`);
    }
    L.push('');
  }
  L.push(...rdmaVsHostMarkdown(rdmaVsHost(o.records)));
  const errs = [...o.errors.map((e) => `- ${e.workload}: ${e.error}`), ...o.records.flatMap((r) => (r.errors ?? []).map((e) => `- ${r.workload} (${r.scope}) ${e}`))];
  const inval = o.records.flatMap((r) => (r.invalid_reasons ?? []).map((e) => `- ${r.workload} (${r.scope}) ${e}`));
  if (errs.length) L.push('## Errors', '', ...[...new Set(errs)], '');
  if (inval.length) L.push('## FreeFlow runs that did not verifiably take the FreeFlow path (excluded)', '', ...[...new Set(inval)], '');
  if (m.notes.length) L.push('## Notes', '', ...m.notes.map((n) => `- ${n}`), '');
  return L.join('\n');
}
