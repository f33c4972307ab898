// Parses the output of edge.c's `timing` mode (test/apps/edge.c, t_timing): how long each
// connect() call took in the client, and what it returned.
export interface ConnectTime {
  us: number;
  rc: number;
  errno: string;
}

export interface Timing {
  nonblock: ConnectTime[];
  /** The fields of the "timing-nonblock" line: n, einprogress, first_us, max_us, writable_at_once. */
  summary?: Record<string, number>;
  blocking?: ConnectTime;
  out: string;
}

export function parseTiming(out: string): Timing {
  const nonblock = [...out.matchAll(/^time nonblock i=\d+ us=(\d+) rc=(-?\d+) errno=(\S+)/gm)].map((m) => ({ us: Number(m[1]), rc: Number(m[2]), errno: m[3] }));
  const s = /^(?:ok|FAIL) timing-nonblock (.*)$/m.exec(out);
  const summary = s ? Object.fromEntries(s[1].split(' ').map((kv) => kv.split('=')).map(([k, v]) => [k, Number(v)])) : undefined;
  const b = /^time blocking us=(\d+) rc=(-?\d+) errno=(\S+)/m.exec(out);
  return { nonblock, summary, blocking: b ? { us: Number(b[1]), rc: Number(b[2]), errno: b[3] } : undefined, out };
}

/** The slowest connect() of a run, in microseconds (Infinity if none was timed). */
export function slowestConnect(tm: Timing): number {
  return tm.nonblock.length ? Math.max(...tm.nonblock.map((c) => c.us)) : Infinity;
}
