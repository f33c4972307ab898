// iperf3, one stream, cubic chosen per socket (-C cubic: the VM default is BBR, which caps every
// path alike). Receiver bitrate in Gbit/s; CPU cost per GB received.
import type { Workload } from './types.js';
import { startServer, client } from './common.js';

export const iperf3: Workload = {
  name: 'iperf3',
  metrics: [{ key: 'gbps', metric: 'iperf3 1 stream cubic', unit: 'Gbit/s', better: 'higher' }],
  cpu: { metric: 'iperf3 CPU per GB', unit: 'CPU-s/GB', scale: 1 },
  startServer: (tb, path, port) => startServer(tb, path, port, ['iperf3', '-s', '--forceflush', '-p', String(port)], /Server listening/),
  async runClient(tb, path, port, s) {
    const secs = s.quick ? 1 : 5;
    const r = await client(tb, path, ['iperf3', '-J', '-c', path.addr, '-p', String(port), '-t', String(secs), '-C', 'cubic'], (secs + 30) * 1000);
    const j = JSON.parse(r.stdout);
    if (j.error) throw new Error(`iperf3: ${j.error}`);
    const sum = j.end.sum_received;
    const gbps = sum.bits_per_second / 1e9;
    return { values: { gbps }, work: sum.bytes / 1e9, appBytes: sum.bytes, connections: 2, note: `${gbps.toFixed(2)} Gbit/s` };
  },
};
