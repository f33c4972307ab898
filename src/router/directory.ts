// Where accelerated listeners are: the router-to-router control plane as the rest of the router
// sees it. The embedded implementation (peer-mesh.ts) replicates entries to the --peers routers;
// a distributed backend (etcd, the orchestrator) can implement the same two interfaces.

/** An accelerated listener: overlay identity and the host endpoint that serves it. */
export interface ListenerRecord {
  overlayIp: string;
  port: number;
  hostIp: string;
  hostPort: number;
}

/** Tells the listener's router which overlay peer a host connection comes from. */
/** What the connections of one CONNECT batch have in common. Each host socket adds its own
 * host port, which is also the connection's overlay source port unless the application bound
 * one (srcPort 0 = "the host port"). */
export interface AnnouncementBatch {
  clientHostIp: string;
  listenerHostPort: number;
  srcIp: string; // overlay source of the connecting application
  srcPort: number;
  dstIp: string; // overlay destination it asked for
  dstPort: number;
}

export interface Directory {
  /** Makes a local listener findable by every router. */
  publish(rec: ListenerRecord): void;
  withdraw(rec: ListenerRecord): void;
  /** Answers from local state only: a connect() must never wait on the network. */
  lookup(overlayIp: string, port: number): ListenerRecord | undefined;
  entries(): ListenerRecord[];
}

export interface AnnouncementChannel {
  /** Sends ANNOUNCE wire records (announcementRecords()) to the router at hostIp, as one write;
   * false if that router is not reachable. */
  announce(hostIp: string, records: Buffer): boolean;
  /** Announcements for this router's listeners, as wire records back to back (they go to the
   * native acceptor as they are, in batches). */
  onAnnouncements(handler: (records: Buffer) => void): void;
}

export function listenerKey(ip: string, port: number): string {
  return `${ip}:${port}`;
}
