// The host-network endpoints of this router's accelerated listeners. The application's library
// accepts host connections itself and admits those announced in the listener's admission table;
// the native acceptor thread (native/acceptor.cc) fills that table, parks connections that came
// before their announcement and refuses what nobody announced. This class registers listeners
// with it, feeds it announcements and keeps the directory in step.
import type { Logger } from '../log.js';
import { native } from '../native.js';
import type { Directory, ListenerRecord } from './directory.js';

export interface EndpointInfo {
  hostPort: number;
  records: ListenerRecord[];
  owner: number; // the network namespace (container) that asked for it, for its per-container cap
}

export interface AcceptStats {
  delivered: number;
  admitted: number;
  refused: number;
  announced: number;
  parked: number;
  recent: { atMs: number; src: string; dst: string; host: string }[];
}

export class HostEndpoints {
  private readonly byPort = new Map<number, EndpointInfo>();

  constructor(private readonly directory: Directory, private readonly log: Logger) {
    native.acceptor.start(() => this.reapClosed());
  }

  /** chanFd now belongs to the acceptor; records go into the directory. Returns the admission
   * table's memfd for the application (the caller closes it), or -errno (chanFd is closed). */
  add(chanFd: number, hostPort: number, records: ListenerRecord[], owner: number): number {
    const table = native.acceptor.addListener(chanFd, hostPort);
    if (table < 0) return table;
    this.byPort.set(hostPort, { hostPort, records, owner });
    for (const r of records) this.directory.publish(r);
    return table;
  }

  /** Announcement records (wire format, back to back): made by this router for same-host
   * connections, or received from the peer router at senderIp. Each record names the host its
   * connection comes from; only the sender's own are taken. */
  expect(records: Buffer, senderIp: string): void {
    native.acceptor.announce(records, senderIp);
  }

  list(): EndpointInfo[] {
    return [...this.byPort.values()];
  }

  countOwnedBy(owner: number): number {
    let n = 0;
    for (const e of this.byPort.values()) if (e.owner === owner) n++;
    return n;
  }

  stats(): AcceptStats {
    return native.acceptor.stats();
  }

  closeAll(): void {
    for (const port of [...this.byPort.keys()]) native.acceptor.removeListener(port);
    this.reapClosed();
  }

  private reapClosed(): void {
    for (const port of native.acceptor.takeClosed()) {
      const info = this.byPort.get(port);
      if (!info) continue;
      this.byPort.delete(port);
      for (const r of info.records) this.directory.withdraw(r);
      this.log.info({ listeners: info.records.map((r) => `${r.overlayIp}:${r.port}`) }, 'listener closed');
    }
  }
}
