// sockperf ping-pong, TCP, 64-byte messages, as fast as the pair can go. sockperf reports
// latency as half the round trip (RTT/2); we report its figures unchanged.
import type { Workload } from './types.js';
import { startServer, client } from './common.js';

export function parseSockperf(out: string): { p50: number; p99: number; avg: number; messages: number } {
  const num = (re: RegExp) => {
    const m = re.exec(out);
    if (!m) throw new Error(`sockperf output lacks ${re}: ${out.slice(-400)}`);
    return Number(m[1]);
  };
  return {
    p50: num(/percentile 50\.000 =\s*([\d.]+)/),
    p99: num(/percentile 99\.000 =\s*([\d.]+)/),
    avg: num(/avg-latency=([\d.]+)/),
    messages: num(/\[Valid Duration\].*ReceivedMessages=(\d+)/),
  };
}

export const sockperf: Workload = {
  name: 'sockperf',
  metrics: [
    { key: 'p50', metric: 'sockperf TCP 64B latency p50 (RTT/2)', unit: 'us', better: 'lower' },
    { key: 'p99', metric: 'sockperf TCP 64B latency p99 (RTT/2)', unit: 'us', better: 'lower' },
  ],
  cpu: { metric: 'sockperf CPU per round trip', unit: 'CPU-us/round trip', scale: 1e6 },
  startServer: (tb, path, port) => startServer(tb, path, port, ['sockperf', 'sr', '--tcp', '-i', path.addr, '-p', String(port)], /[Ll]isten|waiting|sockperf: \[SERVER\]|Warmup|IP = /),
  async runClient(tb, path, port, s, cpu) {
    const secs = s.quick ? 1 : 3;
    // CPU window = sockperf's timed phase only (between its "Starting test" and "Test end").
    const onOutput = (all: string) => {
      if (/Test end/.test(all)) cpu.stop();
      else if (/Starting test/.test(all)) cpu.start();
    };
    const args = ['sockperf', 'pp', '--tcp', '--dontwarmup', '-i', path.addr, '-p', String(port), '-m', '64', '-t', String(secs)];
    const r = await client(tb, path, args, (secs + 30) * 1000, onOutput);
    const p = parseSockperf(r.stdout + r.stderr);
    // The window spans the whole timed run (its first 400 ms are sockperf's unrecorded warm-up),
    // so the work is the whole run's round trips.
    const total = /\[Total Run\].*ReceivedMessages=(\d+)/.exec(r.stdout + r.stderr);
    const work = total ? Number(total[1]) : p.messages;
    return { values: { p50: p.p50, p99: p.p99 }, work, connections: 1, note: `p50 ${p.p50.toFixed(1)} us p99 ${p.p99.toFixed(1)} us` };
  },
};
