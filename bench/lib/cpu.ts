// CPU cost of a measured window: all busy CPU time from /proc/stat (user, nice, system, irq,
// softirq — everything but idle, iowait and steal: steal is time the hypervisor gave to another
// VM, large on this machine, and not work done here), minus the CPU time of processes that are not
// ours. "Ours" = any process in one of this run's testbed network namespaces (servers, clients,
// routers). Kernel work on behalf of our traffic (softirq) is not attributed to any process and
// stays in the figure; processes of other tenants that start and end inside the window cannot be
// seen, so the figure can only err on the high side.
import { readFileSync, readdirSync, readlinkSync, statSync } from 'node:fs';

const HZ = 100; // USER_HZ on Linux

function ticks(): { busy: number; steal: number } {
  const line = readFileSync('/proc/stat', 'utf8').split('\n')[0];
  const f = line.trim().split(/\s+/).slice(1).map(Number);
  // user nice system idle iowait irq softirq steal (guest is already in user)
  return { busy: f[0] + f[1] + f[2] + f[5] + f[6], steal: f[7] ?? 0 };
}

/** CPU ticks per pid of every process not in one of `ours` (net namespace inodes). */
function foreignTicks(ours: Set<string>): Map<number, number> {
  const m = new Map<number, number>();
  for (const d of readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    try {
      const ns = readlinkSync(`/proc/${d}/ns/net`);
      if (ours.has(ns)) continue;
      const st = readFileSync(`/proc/${d}/stat`, 'utf8');
      const f = st.slice(st.lastIndexOf(')') + 2).split(' ');
      m.set(Number(d), Number(f[11]) + Number(f[12])); // utime stime
    } catch {
      /* gone */
    }
  }
  return m;
}

export interface CpuWindow {
  busySec: number; // all busy CPU
  foreignSec: number; // other processes' CPU (seen at both ends of the window)
  ownSec: number; // busy - foreign, >= 0
  stealSec: number; // CPU the hypervisor took away during the window (not counted as busy)
  wallSec: number;
}

export class CpuMeter {
  private readonly ours: Set<string>;
  constructor(netnsNames: string[]) {
    this.ours = new Set(
      netnsNames.flatMap((n) => {
        try {
          return [`net:[${statSync(`/run/netns/${n}`).ino}]`];
        } catch {
          return [];
        }
      }),
    );
  }

  /** A measuring window: start() (re)starts it, stop() ends it (first call wins). Workloads
   * whose programs print when the measured phase begins and ends can narrow the window. */
  window(): CpuWindowHandle {
    let f0: Map<number, number> | null = null;
    let b0 = { busy: 0, steal: 0 };
    let t0 = 0n;
    let res: CpuWindow | null = null;
    const h: CpuWindowHandle = {
      start: () => {
        if (res) return;
        f0 = foreignTicks(this.ours);
        b0 = ticks();
        t0 = process.hrtime.bigint();
      },
      stop: () => {
        if (res || !f0) return;
        const t1 = process.hrtime.bigint();
        const b1 = ticks();
        const f1 = foreignTicks(this.ours);
        let foreign = 0;
        for (const [pid, t] of f1) {
          const before = f0.get(pid);
          if (before !== undefined && t >= before) foreign += t - before;
        }
        const busySec = (b1.busy - b0.busy) / HZ;
        const foreignSec = foreign / HZ;
        res = { busySec, foreignSec, ownSec: Math.max(0, busySec - foreignSec), stealSec: (b1.steal - b0.steal) / HZ, wallSec: Number(t1 - t0) / 1e9 };
      },
      result: () => res,
    };
    return h;
  }
}

export interface CpuWindowHandle {
  start(): void;
  stop(): void;
  result(): CpuWindow | null;
}
