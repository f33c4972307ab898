// RDMA mode figures: unmodified perftest (ib_write_bw, ib_write_lat) between containers through
// FreeFlow's virtual NIC, same host and across hosts. There is no RDMA path on the host network
// or the plain overlay of this machine (no RDMA hardware, no kernel RDMA), so these run on the
// FreeFlow paths only; the same run's iperf3 and sockperf rows give the host network's TCP
// figures to read them against (the targets: ib_write_bw >= 0.8x iperf3 host,
// latency <= host TCP round trip + 5 us; perftest and sockperf both report half round trips).
import { join } from 'node:path';
import { ROOT, SERVER_CPU, type Path } from '../lib/paths.js';
import type { Testbed } from '../lib/testbed.js';
import type { Started } from '../lib/proc.js';
import type { Settings, Workload } from './types.js';
import { client } from './common.js';

const VERBS = join(ROOT, 'build/verbs');
const ONLY_FREEFLOW = ['cross-host/freeflow', 'same-host/freeflow'];

function perftest(prog: string, port: number, extra: string[]): string[] {
  return ['env', `LD_LIBRARY_PATH=${VERBS}`, prog, '-d', 'ffvnic0', '-x', '0', '-p', String(port), ...extra];
}

/** perftest's server serves one test and exits, so every repetition starts its own. The
 * runner's per-path "server" is only a placeholder process it can stop. */
function placeholder(tb: Testbed, path: Path): Promise<Started> {
  return Promise.resolve(tb.spawn(path.server, ['sleep', '3600'], { preload: false, cpu: SERVER_CPU }));
}

async function listening(tb: Testbed, path: Path, port: number, srv: Started): Promise<void> {
  const end = Date.now() + 15_000;
  for (;;) {
    const r = await tb.exec(path.server, ['ss', '-Hltn', `sport = :${port}`], { preload: false, cpu: SERVER_CPU, timeoutMs: 5000 });
    if (r.stdout.trim()) return;
    if (srv.proc.exitCode !== null || Date.now() > end) throw new Error(`perftest server not listening: ${srv.output().slice(-500)}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

async function runPair(tb: Testbed, path: Path, port: number, args: string[]): Promise<string> {
  const srv = tb.spawn(path.server, perftest(args[0], port, args.slice(1)), { preload: false, cpu: SERVER_CPU });
  try {
    await listening(tb, path, port, srv);
    const r = await client(tb, path, [...perftest(args[0], port, args.slice(1)), path.addr], 120_000);
    return r.stdout;
  } finally {
    await srv.stop();
  }
}

let nextPort = 19000;

const writeBw: Workload = {
  name: 'rdma-write-bw',
  paths: ONLY_FREEFLOW,
  metrics: [{ key: 'gbps', metric: 'RDMA ib_write_bw 64 KiB', unit: 'Gbit/s', better: 'higher' }],
  startServer: (tb, path) => placeholder(tb, path),
  async runClient(tb, path, _port, s: Settings) {
    // A fixed duration, not an iteration count: 5000 x 64 KiB take ~10 ms at same-host speed,
    // too short to measure (such runs came out anywhere between 40 and 290 Gbit/s).
    const secs = s.quick ? 1 : 3;
    const out = await runPair(tb, path, nextPort++, ['ib_write_bw', '-s', '65536', '-D', String(secs), '--report_gbits']);
    const m = /^\s*65536\s+(\d+)\s+[\d.]+\s+([\d.]+)/m.exec(out);
    if (!m) throw new Error(`ib_write_bw output: ${out.slice(-400)}`);
    const gbps = Number(m[2]);
    return { values: { gbps }, work: 0, connections: 0, note: `${gbps.toFixed(2)} Gbit/s` };
  },
};

/** perftest latency (typical = median, and p99; RTT/2) of 64-byte messages. */
function latency(prog: 'ib_write_lat' | 'ib_send_lat'): Workload {
  const op = prog.slice(3, prog.indexOf('_lat'));
  return {
    name: `rdma-${op}-lat`,
    paths: ONLY_FREEFLOW,
    metrics: [
      { key: 'p50', metric: `RDMA ${prog} 64 B typical (RTT/2)`, unit: 'us', better: 'lower' },
      { key: 'p99', metric: `RDMA ${prog} 64 B p99 (RTT/2)`, unit: 'us', better: 'lower' },
    ],
    startServer: (tb, path) => placeholder(tb, path),
    async runClient(tb, path, _port, s: Settings) {
      // Iterations take ~5 us (same host) to ~100 us (cross host) here; these counts keep a
      // repetition around a second.
      const n = s.quick ? 2000 : 10000;
      const out = await runPair(tb, path, nextPort++, [prog, '-s', '64', '-n', String(n)]);
      // #bytes #iterations t_min t_max t_typical t_avg t_stdev 99% 99.9%
      const m = /^\s*64\s+\d+\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)/m.exec(out);
      if (!m) throw new Error(`${prog} output: ${out.slice(-400)}`);
      const p50 = Number(m[3]);
      const p99 = Number(m[6]);
      return { values: { p50, p99 }, work: 0, connections: 0, note: `typical ${p50} us p99 ${p99} us` };
    },
  };
}

export function rdmaWorkloads(): Workload[] {
  return [writeBw, latency('ib_write_lat'), latency('ib_send_lat')];
}
