// `npm run bench [-- --quick]`: testbed up, routers on both hosts, every workload on every path
// interleaved, then bench/results/latest.{json,md,svg}. The testbed is always torn down (also on
// Ctrl-C); exit code is non-zero only if the run itself broke (not when one workload fails).
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { cpus, tmpdir } from 'node:os';
import { join } from 'node:path';
import { Testbed } from './lib/testbed.js';
import { ROOT } from './lib/paths.js';
import { runWorkload, type WorkloadResult } from './runner.js';
import { buildRecords, markdown, runDetails, type Output } from './report.js';
import { rdmaVsHost } from './rdma-vs-host.js';
import { chartSvg } from './chart.js';
import { median } from './lib/stats.js';
import { iperf3 } from './workloads/iperf3.js';
import { sockperf } from './workloads/sockperf.js';
import { connlat } from './workloads/connlat.js';
import { nginxKeepAlive, nginxClose, setNginxDir } from './workloads/nginx.js';
import { redis, setRedisDir } from './workloads/redis.js';
import { rdmaWorkloads } from './workloads/rdma.js';
import type { Workload } from './workloads/types.js';

const args = process.argv.slice(2);
const quick = args.includes('--quick');
const only = args.find((a) => a.startsWith('--only='))?.slice(7).split(',');
const repsArg = args.find((a) => a.startsWith('--reps='));
const reps = repsArg ? Math.max(3, Number(repsArg.slice(7))) : quick ? 3 : 5;
const outDir = args.find((a) => a.startsWith('--out='))?.slice(6) ?? join(ROOT, 'bench/results');

const log = (l: string) => console.log(l);

function machine() {
  const cpuModel = (() => {
    try {
      return /model name\s*:\s*(.*)/.exec(readFileSync('/proc/cpuinfo', 'utf8'))?.[1]?.trim() ?? cpus()[0]?.model ?? 'unknown';
    } catch {
      return cpus()[0]?.model ?? 'unknown';
    }
  })();
  return { kernel: execFileSync('uname', ['-r'], { encoding: 'utf8', timeout: 5000 }).trim(), cpu: cpuModel, nproc: cpus().length };
}

async function main(): Promise<number> {
  const t0 = Date.now();
  const tb = new Testbed();
  const work = mkdtempSync(join(tmpdir(), 'ffbench-'));
  let interrupted = false;
  const onSignal = (sig: string) => {
    if (interrupted) return;
    interrupted = true;
    console.error(`\nbench: ${sig}: tearing the testbed down`);
    tb.downSync();
    rmSync(work, { recursive: true, force: true });
    process.exit(130);
  };
  process.on('SIGINT', () => onSignal('SIGINT'));
  process.on('SIGTERM', () => onSignal('SIGTERM'));
  setNginxDir(work);
  setRedisDir(work);

  let workloads: Workload[] = [iperf3, sockperf, connlat, nginxKeepAlive, nginxClose, redis, ...rdmaWorkloads()];
  if (only) workloads = workloads.filter((w) => only.includes(w.name));
  const results: WorkloadResult[] = [];
  const meta: Output['meta'] = {
    date: new Date().toISOString(),
    mode: quick ? 'quick' : 'full',
    reps,
    machine: machine(),
    testbed: '',
    notes: [
      'Server pinned to CPU 1, client to CPU 0 (taskset); routers unpinned. nginx: 1 worker (inherits CPU 1).',
      'Cross-host: host = h1 -> h2 over the veth link; overlay = c11 -> c21 over VXLAN; freeflow = c11 -> c21 both preloaded with libfsocket.so.',
      'Same host: bridge = c11 -> c12 over br0; loopback = inside h1 over 127.0.0.1; freeflow = c11 -> c12 preloaded (the router pairs them with an AF_UNIX stream pair; TCP options emulated).',
      'CPU = busy time from /proc/stat (user+nice+system+irq+softirq; not steal) during the client run minus CPU of processes outside this testbed\'s namespaces (other tenants); includes the routers and kernel softirq.',
      'sockperf latency is its own figure: half the round trip (RTT/2).',
      'RDMA rows: the cross-host host column is the host network\'s TCP reference run interleaved with perftest (iperf3 for ib_write_bw, sockperf p50/p99 for ib_write_lat); there is no RDMA path on the host network or the overlay here.',
      'A FreeFlow repetition counts only if the h1 router counter (connect:host-network / connect:same-host-unix + connect:same-host) grew by the connections made and VXLAN carried < max(64 KiB, 1% of payload).',
    ],
  };
  let broke = false;
  try {
    log(`bench: ${meta.mode} run, ${reps} reps, workloads: ${workloads.map((w) => w.name).join(', ')}`);
    await tb.up();
    meta.testbed = tb.prefix;
    log(`bench: testbed ${tb.prefix} up, routers on h1 and h2 connected`);
    const settings = { quick, reps };
    for (const [i, w] of workloads.entries()) {
      if (interrupted) break;
      const ws = Date.now();
      results.push(await runWorkload(tb, w, 7100 + i * 10, settings, log));
      log(`bench: ${w.name} done in ${((Date.now() - ws) / 1000).toFixed(1)} s`);
    }
  } catch (err) {
    broke = true;
    console.error(`bench: run broke: ${(err as Error).stack ?? err}`);
  } finally {
    await tb.down().catch((e) => console.error(`bench: teardown: ${e}`));
    rmSync(work, { recursive: true, force: true });
  }
  if (!results.length) return 1;

  meta.duration_s = (Date.now() - t0) / 1000;
  const { records, errors } = buildRecords(results, reps);
  const runs = runDetails(results);
  const perWall = (k: string) => median(runs.filter((r) => r.wall_s).map((r) => Number(r[k] ?? 0) / Number(r.wall_s)));
  meta.notes.push(`Machine load during the measured windows (median over runs): other tenants ${perWall('foreign_cpu_s')?.toFixed(2)} cores, hypervisor steal ${perWall('steal_cpu_s')?.toFixed(2)} cores (of ${meta.machine.nproc}).`);
  const out: Output = { meta, records, errors, runs, rdma_vs_host: rdmaVsHost(records) };
  mkdirSync(outDir, { recursive: true });
  writeFileSync(join(outDir, 'latest.json'), JSON.stringify(out, null, 2) + '\n');
  const md = markdown(out);
  writeFileSync(join(outDir, 'latest.md'), md);
  try {
    writeFileSync(join(outDir, 'latest.svg'), await chartSvg(out));
  } catch (err) {
    console.error(`bench: chart failed: ${(err as Error).stack}`);
    broke = true;
  }
  console.log('\n' + md);
  console.log(`bench: wrote ${outDir}/latest.{json,md,svg} in ${Math.round(meta.duration_s)} s`);
  return broke ? 1 : 0;
}

main().then(
  (code) => process.exit(code),
  (err) => {
    console.error(err);
    process.exit(1);
  },
);
