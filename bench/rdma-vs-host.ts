// RDMA figures read against the host network's TCP figures of the same run (the RDMA issue's
// targets): cross-host ib_write_bw as a fraction of iperf3 host-to-host (paired, interleaved
// repetitions), ib_write_lat minus the host TCP round trip (both RTT/2, medians of the same
// interleaved run), and the same-host figures against their absolute targets.
import type { BenchRecord } from './report.js';

/** The RDMA issue's cross-host targets against the host network's TCP (also drawn in the chart). */
export const RDMA_BW_VS_HOST_MIN = 0.8; // ib_write_bw / iperf3 host to host
export const RDMA_LAT_OVER_HOST_MAX_US = 5; // ib_write_lat - host TCP half round trip

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
  // The cross-host records carry their host-network TCP reference in the host column (iperf3,
  // sockperf), measured interleaved with the perftest runs.
  const bw = pick(records, 'cross-host', 'RDMA ib_write_bw 64 KiB');
  const lat = pick(records, 'cross-host', 'RDMA ib_write_lat 64 B typical (RTT/2)');
  const bwS = pick(records, 'same-host', 'RDMA ib_write_bw 64 KiB')?.freeflow;
  const latS = pick(records, 'same-host', 'RDMA ib_write_lat 64 B typical (RTT/2)')?.freeflow;
  if (bw?.freeflow_vs_host != null) {
    const v = bw.freeflow_vs_host;
    out.push({ what: 'cross-host ib_write_bw / iperf3 host (median of paired ratios)', value: v, unit: 'x', target: `>= ${RDMA_BW_VS_HOST_MIN}`, met: v >= RDMA_BW_VS_HOST_MIN });
  }
  if (lat?.freeflow != null && lat.host != null) {
    const v = lat.freeflow - lat.host;
    out.push({ what: 'cross-host ib_write_lat - sockperf host p50', value: v, unit: 'us', delta: true, target: `<= +${RDMA_LAT_OVER_HOST_MAX_US}`, met: v <= RDMA_LAT_OVER_HOST_MAX_US });
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
