// What `freeflow status` shows: counters and the most recent connection set-ups, each with the
// path it took (host network, same host over loopback TCP or an AF_UNIX pair, or the plain
// overlay and why).
export type PathTaken = 'host-network' | 'same-host' | 'same-host-unix' | 'overlay-fallback' | 'refused';

export interface ConnectionRecord {
  at: string;
  role: 'connect' | 'accept' | 'listen';
  path: PathTaken;
  src: string; // overlay ip:port
  dst: string; // overlay ip:port
  host?: string; // host-network endpoint used
  reason?: string;
  pid?: number;
  sockets?: number; // a batch of host sockets handed out at once (prefetch); counted in full
}

const KEEP = 256;

export class ConnectionLog {
  private readonly recent: ConnectionRecord[] = [];
  readonly counters: Record<string, number> = {};

  add(rec: Omit<ConnectionRecord, 'at'>): void {
    const counter = `${rec.role}:${rec.path}`;
    this.counters[counter] = (this.counters[counter] ?? 0) + (rec.sockets ?? 1);
    this.recent.push({ at: new Date().toISOString(), ...rec });
    if (this.recent.length > KEEP * 2) this.recent.splice(0, this.recent.length - KEEP);
  }

  list(): ConnectionRecord[] {
    return this.recent.slice(-KEEP);
  }
}
