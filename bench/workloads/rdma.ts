// RDMA figures hook — SLOT FOR ANOTHER ENGINEER. Not implemented by the TCP bench.
//
// To add RDMA figures (e.g. ib_write_bw / ib_send_lat from perftest over FreeFlow's RDMA mode
// vs. the same programs on the host), implement `rdmaWorkloads()` to return Workload objects
// (see ./types.ts): startServer / runClient on the paths in ../lib/paths.ts (or a path list of
// your own), with metrics declared in `metrics`. bench/run.ts appends whatever this returns to
// the workload list, so records, the Markdown table and the chart pick them up unchanged.
import type { Workload } from './types.js';

export function rdmaWorkloads(): Workload[] {
  return []; // TODO(rdma): perftest figures (bandwidth, latency) through FreeFlow's RDMA mode
}
