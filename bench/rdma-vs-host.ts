// RDMA figures read against the host network's TCP figures of the same run (the RDMA issue's
// targets): cross-host ib_write_bw as a fraction of iperf3 host-to-host, ib_write_lat minus the
// host TCP round trip (both RTT/2), and the same-host figures against their absolute targets.
import type { BenchRecord } from './report.js';

export interface RdmaTarget {
  what: string;
  value: number | null;
  unit: string;
  /** a difference (printed with its sign), not a level */
  delta?: boolean;
  target: string;
  met: boolean | null;
}

function pick(records: BenchRecord[], scope: string, metric: string): BenchRecord | undefined {
  return records.find((r) => r.scope === scope && r.metric === metric);
}

export function rdmaVsHost(records: BenchRecord[]): RdmaTarget[] {
  const out: RdmaTarget[] = [];
  const bwX = pick(records, 'cross-host', 'RDMA ib_write_bw 64 KiB')?.freeflow;
  const iperfHost = pick(records, 'cross-host', 'iperf3 1 stream cubic')?.host;
  const latX = pick(records, 'cross-host', 'RDMA ib_write_lat 64 B typical (RTT/2)')?.freeflow;
  const tcpHost = pick(records, 'cross-host', 'sockperf TCP 64B latency p50 (RTT/2)')?.host;
  const bwS = pick(records, 'same-host', 'RDMA ib_write_bw 64 KiB')?.freeflow;
  const latS = pick(records, 'same-host', 'RDMA ib_write_lat 64 B typical (RTT/2)')?.freeflow;
  const both = (a: number | null | undefined, b: number | null | undefined) => a != null && b != null;
  if (both(bwX, iperfHost)) {
    const v = bwX! / iperfHost!;
    out.push({ what: 'cross-host ib_write_bw / iperf3 host', value: v, unit: 'x', target: '>= 0.8', met: v >= 0.8 });
  }
  if (both(latX, tcpHost)) {
    const v = latX! - tcpHost!;
    out.push({ what: 'cross-host ib_write_lat - sockperf host p50', value: v, unit: 'us', delta: true, target: '<= +5', met: v <= 5 });
  }
  if (bwS != null) {
    const v = bwS / 8;
    out.push({ what: 'same-host ib_write_bw 64 KiB', value: v, unit: 'GB/s', target: '>= 5', met: v >= 5 });
  }
  if (latS != null) out.push({ what: 'same-host ib_write_lat typical', value: latS, unit: 'us', target: '<= 5', met: latS <= 5 });
  const sendS = pick(records, 'same-host', 'RDMA ib_send_lat 64 B typical (RTT/2)')?.freeflow;
  if (sendS != null) out.push({ what: 'same-host ib_send_lat typical', value: sendS, unit: 'us', target: '<= 5', met: sendS <= 5 });
  return out;
}

export function rdmaVsHostMarkdown(rows: RdmaTarget[]): string[] {
  if (!rows.length) return [];
  const L = ['## RDMA against the host network (same run)', '', '| figure | value | target | met |', '|---|---:|---|---|'];
  for (const r of rows) {
    const v = r.value == null ? '–' : `${r.delta && r.value >= 0 ? '+' : ''}${r.value.toFixed(2)} ${r.unit}`;
    L.push(`| ${r.what} | ${v} | ${r.target} | ${r.met == null ? '–' : r.met ? 'yes' : 'no'} |`);
  }
  L.push('');
  return L;
}
