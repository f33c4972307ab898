// Matches host connections accepted on a listener's host endpoint with the announcements the
// connecting routers sent. A connection is handed to the application only when an announcement
// for exactly its source address and port arrived: that is what pairs every accepted connection
// with the peer that made it, and what keeps host processes that dial the endpoint directly
// away from containers (their connections are never announced and get closed).
import type { Announcement } from './directory.js';

// Longer than libfsocket keeps a prefetched socket (FF_POOL_FRESH_NS, 5 s) before using it.
export const ANNOUNCE_TTL_MS = 30_000;
export const UNANNOUNCED_TIMEOUT_MS = 3_000;

export interface Parked<T> {
  conn: T;
  timer: NodeJS.Timeout;
}

function key(srcIp: string, srcPort: number, listenerPort: number): string {
  return `${srcIp}:${srcPort}>${listenerPort}`;
}

export class Pairing<T> {
  private readonly announced = new Map<string, { ann: Announcement; expires: number }>();
  private readonly parked = new Map<string, Parked<T>>();
  private sweepTimer: NodeJS.Timeout;

  /**
   * @param deliver called once a connection and its announcement have met
   * @param reject called for a connection nobody announced in time
   */
  constructor(
    private readonly deliver: (conn: T, ann: Announcement) => void,
    private readonly reject: (conn: T) => void,
  ) {
    this.sweepTimer = setInterval(() => this.sweep(), ANNOUNCE_TTL_MS).unref();
  }

  /** An announcement from a connecting router (remote or ourselves). */
  expect(ann: Announcement): void {
    const k = key(ann.clientHostIp, ann.clientHostPort, ann.listenerHostPort);
    const p = this.parked.get(k);
    if (p) {
      this.parked.delete(k);
      clearTimeout(p.timer);
      this.deliver(p.conn, ann);
      return;
    }
    this.announced.set(k, { ann, expires: Date.now() + ANNOUNCE_TTL_MS });
  }

  /** A host connection accepted on listenerPort from srcIp:srcPort. */
  arrived(conn: T, srcIp: string, srcPort: number, listenerPort: number): void {
    const k = key(srcIp, srcPort, listenerPort);
    const a = this.announced.get(k);
    if (a) {
      this.announced.delete(k);
      this.deliver(conn, a.ann);
      return;
    }
    const old = this.parked.get(k);
    if (old) {
      clearTimeout(old.timer);
      this.reject(old.conn);
    }
    const timer = setTimeout(() => {
      this.parked.delete(k);
      this.reject(conn);
    }, UNANNOUNCED_TIMEOUT_MS);
    this.parked.set(k, { conn, timer });
  }

  counts(): { announced: number; parked: number } {
    return { announced: this.announced.size, parked: this.parked.size };
  }

  close(): void {
    clearInterval(this.sweepTimer);
    for (const p of this.parked.values()) {
      clearTimeout(p.timer);
      this.reject(p.conn);
    }
    this.parked.clear();
    this.announced.clear();
  }

  private sweep(): void {
    const now = Date.now();
    for (const [k, a] of this.announced) if (a.expires < now) this.announced.delete(k);
  }
}
