// Connection setup: connect-to-first-byte time of fresh connections (bench/tools/connlat.c),
// N sequential connections per repetition; the server closes first (TIME_WAIT on the server).
import type { Workload } from './types.js';
import { startServer, client } from './common.js';
import { CONNLAT } from '../lib/paths.js';

export const connlat: Workload = {
  name: 'connlat',
  metrics: [
    { key: 'p50', metric: 'connect-to-first-byte p50', unit: 'us', better: 'lower' },
    { key: 'p99', metric: 'connect-to-first-byte p99', unit: 'us', better: 'lower' },
  ],
  cpu: { metric: 'connlat CPU per connection', unit: 'CPU-us/conn', scale: 1e6 },
  startServer: (tb, path, port) => startServer(tb, path, port, [CONNLAT, 'server', String(port)], /listening/),
  async runClient(tb, path, port, s) {
    const n = s.quick ? 1000 : 3000;
    const r = await client(tb, path, [CONNLAT, 'client', path.addr, String(port), String(n)], 120_000);
    const m = /ok=(\d+) .*p50_us=([\d.]+) p99_us=([\d.]+)/.exec(r.stdout);
    if (!m) throw new Error(`connlat output: ${r.stdout}`);
    const p50 = Number(m[2]);
    const p99 = Number(m[3]);
    return { values: { p50, p99 }, work: Number(m[1]), connections: n, note: `p50 ${p50.toFixed(0)} us p99 ${p99.toFixed(0)} us (${n} conns)` };
  },
};
