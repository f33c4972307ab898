// Runs one workload on every path, interleaved (A B C ... A B C ...), with CPU accounting and
// path verification for the FreeFlow runs, and returns the per-repetition samples.
import type { Testbed } from './lib/testbed.js';
import { PATHS, type Path } from './lib/paths.js';
import { CpuMeter, type CpuWindow } from './lib/cpu.js';
import type { Sample, Settings, Workload } from './workloads/types.js';
import type { Started } from './lib/proc.js';

export interface RepResult {
  rep: number;
  path: string; // path id
  sample?: Sample;
  cpuValue?: number; // workload's CPU metric for this rep
  cpu?: CpuWindow;
  vxlanBytes: number; // h1 flannel.1 (VXLAN) tx+rx during the run
  routerCpuSec?: number; // CPU both routers used during the run (whole client run, not the narrowed window)
  routerDeltas?: Record<string, number>; // growth of every router counter (h1:…, h2:…) during the run
  routerConnects?: number; // growth of the path's router counter on h1 (FreeFlow paths)
  valid: boolean;
  invalidReason?: string;
  error?: string;
}

export interface WorkloadResult {
  workload: Workload;
  reps: RepResult[];
  error?: string; // the workload as a whole broke (e.g. a server did not start)
}

const VXLAN_NOISE = 64 * 1024; // ARP floods and re-probes are ~100 bytes each

function fmtLabel(w: Workload, p: Path, rep: number, reps: number): string {
  const pathLabel = p.name === 'freeflow' ? `freeflow ${p.scope}` : p.name;
  return `[${w.name} | ${pathLabel} | rep ${rep}/${reps}]`;
}

export async function runWorkload(tb: Testbed, w: Workload, basePort: number, s: Settings, log: (l: string) => void): Promise<WorkloadResult> {
  const servers = new Map<string, { srv: Started; port: number }>();
  const result: WorkloadResult = { workload: w, reps: [] };
  const meter = new CpuMeter(tb.netnsNames());
  const paths = PATHS.filter((p) => !w.paths || w.paths.includes(p.id));
  try {
    for (const [i, p] of paths.entries()) {
      const port = basePort + i;
      try {
        servers.set(p.id, { srv: await w.startServer(tb, p, port, s), port });
      } catch (err) {
        log(`${fmtLabel(w, p, 0, s.reps)} server failed: ${(err as Error).message.split('\n')[0]}`);
        for (let r = 1; r <= s.reps; r++) result.reps.push({ rep: r, path: p.id, vxlanBytes: 0, valid: false, error: `server: ${(err as Error).message.slice(0, 500)}` });
      }
    }
    if (!servers.size) throw new Error('no server started on any path');
    for (let rep = 1; rep <= s.reps; rep++) {
      // Still interleaved, but each repetition starts one path later, so no path always runs
      // first or right after another one (a position effect would otherwise bias its ratios).
      const k = (rep - 1) % paths.length;
      for (const p of [...paths.slice(k), ...paths.slice(0, k)]) {
        const sv = servers.get(p.id);
        if (!sv) continue;
        result.reps.push(await oneRep(tb, w, p, sv.port, rep, s, meter, log));
      }
    }
  } catch (err) {
    result.error = (err as Error).message.slice(0, 1000);
    log(`[${w.name}] ERROR ${result.error}`);
  } finally {
    for (const { srv } of servers.values()) await srv.stop();
  }
  return result;
}

async function oneRep(tb: Testbed, w: Workload, p: Path, port: number, rep: number, s: Settings, meter: CpuMeter, log: (l: string) => void): Promise<RepResult> {
  const label = fmtLabel(w, p, rep, s.reps);
  const out: RepResult = { rep, path: p.id, vxlanBytes: 0, valid: true };
  try {
    const before = p.preload ? await routerCounters(tb) : null;
    const fastPath = (c: Record<string, number>) => (p.routerCounter ?? []).reduce((n, k) => n + (c[k] ?? 0), 0);
    const c0 = p.routerCounter ? fastPath(before!.h1) : 0;
    const v0 = await tb.vxlanBytes('h1');
    const r0 = tb.routerCpuSec();
    let sample: Sample;
    let cpu: CpuWindow;
    for (let attempt = 1; ; attempt++) {
      const win = meter.window();
      win.start();
      try {
        sample = await w.runClient(tb, p, port, s, win);
      } catch (err) {
        if (attempt >= 2) throw err;
        log(`${label} retrying once: ${(err as Error).message.split('\n')[0].slice(0, 200)}`);
        continue;
      }
      win.stop();
      cpu = win.result()!;
      break;
    }
    const v1 = await tb.vxlanBytes('h1');
    out.routerCpuSec = tb.routerCpuSec() - r0;
    out.sample = sample;
    out.cpu = cpu;
    out.vxlanBytes = v1 - v0;
    if (w.cpu && sample.work > 0) out.cpuValue = (cpu.ownSec / sample.work) * w.cpu.scale;
    if (p.routerCounter) {
      const after = await routerCounters(tb);
      out.routerConnects = fastPath(after.h1) - c0;
      out.routerDeltas = diffCounters(before!, after);
      const vxLimit = Math.max(VXLAN_NOISE, (sample.appBytes ?? 0) / 100);
      if (out.routerConnects < sample.connections) {
        out.valid = false;
        out.invalidReason = `router ${p.routerCounter.join('+')} grew by ${out.routerConnects}, expected >= ${sample.connections}`;
      } else if (out.vxlanBytes > vxLimit) {
        out.valid = false;
        out.invalidReason = `VXLAN carried ${out.vxlanBytes} bytes (limit ${Math.round(vxLimit)})`;
      }
    }
    if (!out.valid) out.invalidReason += await fallbackReasons(tb);
    const cpuTxt = out.cpuValue != null ? `  cpu ${out.cpuValue.toFixed(out.cpuValue < 10 ? 2 : 1)} ${w.cpu!.unit}` : '';
    const foreign = cpu.foreignSec / cpu.wallSec;
    const pathTxt = p.routerCounter ? `  router +${out.routerConnects} vxlan ${(out.vxlanBytes / 1e3).toFixed(1)} kB ${out.valid ? 'ok' : 'INVALID: ' + out.invalidReason}` : `  vxlan ${(out.vxlanBytes / 1e6).toFixed(1)} MB`;
    const routerTxt = p.preload && out.routerCpuSec ? `  routers ${out.routerCpuSec.toFixed(2)} CPU-s` : '';
    const steal = cpu.stealSec / cpu.wallSec;
    log(`${label} ${sample.note ?? ''}${cpuTxt}${routerTxt}${foreign > 0.1 ? `  (other tenants ${foreign.toFixed(2)} cores)` : ''}${steal > 0.1 ? `  (steal ${steal.toFixed(2)} cores)` : ''}${pathTxt}`);
  } catch (err) {
    out.valid = false;
    out.error = (err as Error).message.slice(0, 600);
    log(`${label} ERROR ${out.error.split('\n')[0]}`);
  }
  return out;
}

async function routerCounters(tb: Testbed): Promise<{ h1: Record<string, number>; h2: Record<string, number> }> {
  const [a, b] = await Promise.all([tb.status('h1'), tb.status('h2')]);
  return { h1: a.counters ?? {}, h2: b.counters ?? {} };
}

function diffCounters(a: { h1: Record<string, number>; h2: Record<string, number> }, b: typeof a): Record<string, number> {
  const d: Record<string, number> = {};
  for (const h of ['h1', 'h2'] as const)
    for (const [k, v] of Object.entries(b[h])) if (v !== (a[h][k] ?? 0)) d[`${h}:${k}`] = v - (a[h][k] ?? 0);
  return d;
}

/** Why the router sent connections over the overlay (from its recent-connections log). */
async function fallbackReasons(tb: Testbed): Promise<string> {
  try {
    const s = await tb.status('h1');
    const reasons = new Map<string, number>();
    for (const c of s.connections ?? []) if (c.path !== 'host-network' && c.path !== 'same-host' && c.path !== 'same-host-unix') reasons.set(`${c.role} ${c.path}: ${c.reason ?? '?'}`, (reasons.get(`${c.role} ${c.path}: ${c.reason ?? '?'}`) ?? 0) + 1);
    return reasons.size ? `; h1 router's recent fallbacks: ${[...reasons].map(([r, n]) => `${r} (x${n})`).join(', ')}` : '';
  } catch {
    return '';
  }
}
