// What a workload provides to the runner: how to start its server on a path, how to run one
// measured client repetition, and which metrics it yields.
import type { Testbed } from '../lib/testbed.js';
import type { Path } from '../lib/paths.js';
import type { Started } from '../lib/proc.js';
import type { CpuWindowHandle } from '../lib/cpu.js';

export interface MetricDef {
  key: string; // key in Sample.values
  metric: string; // human label, e.g. "iperf3 1 stream cubic"
  unit: string;
  better: 'higher' | 'lower';
}

export interface Sample {
  values: Record<string, number>; // metric key -> value
  /** Units of work done in this repetition, for CPU cost per unit (GB, requests, round trips). */
  work: number;
  /** Application payload bytes moved (for the VXLAN-share check), if known. */
  appBytes?: number;
  /** Fresh connections the client made (the router counter must grow by at least this). */
  connections: number;
  note?: string; // short progress text
}

export interface CpuMetricDef {
  metric: string;
  unit: string;
  /** value = CPU-seconds / work * scale */
  scale: number;
}

export interface Settings {
  quick: boolean;
  reps: number;
}

export interface Workload {
  name: string;
  /** Path ids this workload runs on (default: all of them). */
  paths?: string[];
  metrics: MetricDef[];
  cpu?: CpuMetricDef;
  /** Starts (and waits for) this workload's server for one path on `port`. */
  startServer(tb: Testbed, path: Path, port: number, s: Settings): Promise<Started>;
  /** One measured client run. Throws on failure (recorded as an error for that repetition).
   * The runner's CPU window is open around the call; `cpu.start()` / `cpu.stop()` narrow it. */
  runClient(tb: Testbed, path: Path, port: number, s: Settings, cpu: CpuWindowHandle): Promise<Sample>;
}
