// redis-server (single-threaded) and redis-benchmark -q -c 50, GET and SET with a fixed -n.
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import type { Workload } from './types.js';
import { startServer, client } from './common.js';

let workdir = '';
export function setRedisDir(dir: string): void {
  workdir = dir;
}

export function parseRedisBenchmark(out: string): Record<string, number> {
  const rps: Record<string, number> = {};
  for (const line of out.split(/[\r\n]+/)) {
    const m = /^\s*(SET|GET): ([\d.]+) requests per second/.exec(line);
    if (m) rps[m[1]] = Number(m[2]);
  }
  return rps;
}

export const redis: Workload = {
  name: 'redis',
  metrics: [
    { key: 'get', metric: 'redis-benchmark GET -c 50', unit: 'kreq/s', better: 'higher' },
    { key: 'set', metric: 'redis-benchmark SET -c 50', unit: 'kreq/s', better: 'higher' },
  ],
  cpu: { metric: 'redis CPU per request', unit: 'CPU-us/req', scale: 1e6 },
  startServer(tb, path, port) {
    const d = join(workdir, `redis-${port}`);
    mkdirSync(d, { recursive: true });
    const cmd = ['redis-server', '--port', String(port), '--save', '', '--appendonly', 'no', '--protected-mode', 'no', '--bind', path.addr === '127.0.0.1' ? '127.0.0.1' : '0.0.0.0', '--dir', d, '--logfile', ''];
    return startServer(tb, path, port, cmd, /Ready to accept connections/);
  },
  async runClient(tb, path, port, s) {
    // At ~120 kreq/s, 50 000 requests were 0.4 s per test: single repetitions swung 0.86-1.06
    // FreeFlow/host; 200 000 (about 1.6 s) average over the VM's scheduling blips.
    const n = s.quick ? 20000 : 200000;
    const r = await client(tb, path, ['redis-benchmark', '-h', path.addr, '-p', String(port), '-q', '-n', String(n), '-c', '50', '-t', 'set,get'], 120_000);
    const rps = parseRedisBenchmark(r.stdout);
    if (!rps.SET || !rps.GET) throw new Error(`redis-benchmark output: ${r.stdout.slice(-300)}`);
    return {
      values: { get: rps.GET / 1000, set: rps.SET / 1000 },
      work: 2 * n,
      connections: 100,
      note: `GET ${(rps.GET / 1000).toFixed(1)} SET ${(rps.SET / 1000).toFixed(1)} kreq/s`,
    };
  },
};
