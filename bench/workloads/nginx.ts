// nginx (Debian nginx-light) serving a small static file to wrk: keep-alive (req/s, p50 latency)
// and 'Connection: close' (a fresh connection per request: connection-setup throughput).
// One worker process: on a 2-core machine the server gets CPU 1 and wrk (one thread) CPU 0, so
// neither side gets more cores on one path than on another. Each variant starts its own nginx
// per path (fresh per workload, reused across its repetitions).
import { chmodSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Testbed } from '../lib/testbed.js';
import type { Path } from '../lib/paths.js';
import type { Sample, Settings, Workload } from './types.js';
import { startServer, client } from './common.js';
import { writeNginxConfig } from '../../test/lib/nginx-config.js';

let workdir = '';
export function setNginxDir(dir: string): void {
  workdir = dir;
}

function conf(port: number): { conf: string; dir: string } {
  const d = join(workdir, `nginx-${port}`);
  mkdirSync(d, { recursive: true, mode: 0o755 });
  const www = join(workdir, 'www');
  mkdirSync(www, { recursive: true, mode: 0o755 });
  chmodSync(workdir, 0o755);
  writeFileSync(join(www, 'small.txt'), 'x'.repeat(100) + '\n', { mode: 0o644 });
  const c = writeNginxConfig({ dir: d, port, root: www, workers: 1, workerConnections: 4096, keepaliveRequests: 1000000, backlog: 4096 });
  return { conf: c, dir: d };
}

function startNginx(tb: Testbed, path: Path, port: number) {
  const { conf: c, dir } = conf(port);
  const ready = async () => {
    try {
      return /start worker process \d+/.test(readFileSync(join(dir, 'error.log'), 'utf8'));
    } catch {
      return false;
    }
  };
  return startServer(tb, path, port, ['nginx', '-p', dir, '-e', join(dir, 'error.log'), '-c', c], ready);
}

/** wrk's latency figures: "50%  123.45us" -> microseconds. */
function toUs(v: string, unit: string): number {
  return Number(v) * ({ us: 1, ms: 1e3, s: 1e6 } as Record<string, number>)[unit];
}

export function parseWrk(out: string): { rps: number; requests: number; p50us: number | null; errors: number } {
  const rps = /Requests\/sec:\s+([\d.]+)/.exec(out);
  const req = /(\d+) requests in/.exec(out);
  if (!rps || !req) throw new Error(`wrk output: ${out.slice(-400)}`);
  const p50 = /^\s*50%\s+([\d.]+)(us|ms|s)\s*$/m.exec(out);
  const sock = /Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)/.exec(out);
  const non2xx = /Non-2xx or 3xx responses: (\d+)/.exec(out);
  const errors = (sock ? sock.slice(1).reduce((a, b) => a + Number(b), 0) : 0) + (non2xx ? Number(non2xx[1]) : 0);
  return { rps: Number(rps[1]), requests: Number(req[1]), p50us: p50 ? toUs(p50[1], p50[2]) : null, errors };
}

async function wrk(tb: Testbed, path: Path, port: number, s: Settings, close: boolean): Promise<Sample & { errors: number }> {
  const secs = s.quick ? 1 : 3;
  const args = ['wrk', '-t1', '-c50', `-d${secs}s`, '--latency', ...(close ? ['-H', 'Connection: close'] : []), `http://${path.addr}:${port}/small.txt`];
  const r = await client(tb, path, args, (secs + 30) * 1000);
  const w = parseWrk(r.stdout + r.stderr);
  if (w.errors > w.requests / 100) throw new Error(`wrk: ${w.errors} errors for ${w.requests} requests`);
  return {
    values: { rps: w.rps / 1000, ...(w.p50us != null ? { p50: w.p50us } : {}) },
    work: w.requests,
    connections: close ? Math.floor(w.requests * 0.9) : 50,
    errors: w.errors,
    note: `${(w.rps / 1000).toFixed(1)} kreq/s${w.p50us != null ? ` p50 ${w.p50us.toFixed(0)} us` : ''}${w.errors ? ` (${w.errors} errors)` : ''}`,
  };
}

export const nginxKeepAlive: Workload = {
  name: 'nginx-keepalive',
  metrics: [
    { key: 'rps', metric: 'nginx+wrk keep-alive', unit: 'kreq/s', better: 'higher' },
    { key: 'p50', metric: 'nginx+wrk keep-alive latency p50', unit: 'us', better: 'lower' },
  ],
  cpu: { metric: 'nginx keep-alive CPU per request', unit: 'CPU-us/req', scale: 1e6 },
  startServer: startNginx,
  runClient: (tb, path, port, s) => wrk(tb, path, port, s, false),
};

export const nginxClose: Workload = {
  name: 'nginx-close',
  metrics: [{ key: 'rps', metric: 'nginx+wrk Connection: close', unit: 'kreq/s', better: 'higher' }],
  cpu: { metric: 'nginx close CPU per request', unit: 'CPU-us/req', scale: 1e6 },
  startServer: startNginx,
  runClient: (tb, path, port, s) => wrk(tb, path, port, s, true),
};
