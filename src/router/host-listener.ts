// The host-network endpoint of one accelerated listener: a host TCP listener the router owns,
// and the accept channel (a SOCK_SEQPACKET pair) whose other end sits beside the application's
// listening socket. Connections accepted here are passed through the channel, fd attached,
// once the pairing has matched them with their announcement.
import type { Logger } from '../log.js';
import { native, DISCONNECT, EAGAIN, READABLE, WRITABLE, errnoText } from '../native.js';
import { emptyMsg, encode, ipv4ToWire, MsgType } from '../protocol/codec.js';
import type { Announcement, ListenerRecord } from './directory.js';
import type { Pairing } from './pairing.js';
import type { ConnectionLog } from './status.js';

export interface PendingConn {
  fd: number;
  listener: HostListener;
}

const MAX_QUEUED = 4096;

export class HostListener {
  private listenWatch = 0;
  private chanWatch = 0;
  private readonly queue: { buf: Buffer; fd: number }[] = [];
  private closed = false;

  constructor(
    readonly listenFd: number,
    readonly hostPort: number,
    private readonly chanFd: number,
    readonly records: ListenerRecord[],
    private readonly deps: {
      pairing: Pairing<PendingConn>;
      log: Logger;
      connections: ConnectionLog;
      onClosed: (l: HostListener) => void;
    },
  ) {}

  start(): void {
    this.listenWatch = native.watch(this.listenFd, READABLE, () => this.acceptAll());
    this.chanWatch = native.watch(this.chanFd, READABLE, (_status, events) => this.onChannel(events));
  }

  /** Sends one matched connection to the application side. */
  deliver(fd: number, ann: Announcement): void {
    if (this.closed) {
      native.close(fd);
      return;
    }
    const m = emptyMsg(MsgType.ACCEPTED);
    m.local_addr = ipv4ToWire(ann.dstIp);
    m.local_port = ann.dstPort;
    m.remote_addr = ipv4ToWire(ann.srcIp);
    m.remote_port = ann.srcPort;
    this.queue.push({ buf: encode(m), fd });
    this.deps.connections.add({
      role: 'accept',
      path: 'host-network',
      src: `${ann.srcIp}:${ann.srcPort}`,
      dst: `${ann.dstIp}:${ann.dstPort}`,
      host: `${ann.clientHostIp}:${ann.clientHostPort}`,
    });
    this.flush();
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    native.unwatch(this.listenWatch);
    native.unwatch(this.chanWatch);
    native.close(this.listenFd);
    native.close(this.chanFd);
    for (const q of this.queue.splice(0)) native.close(q.fd);
    this.deps.onClosed(this);
  }

  private acceptAll(): void {
    for (;;) {
      const r = native.tcpAccept(this.listenFd);
      if (typeof r === 'number') {
        if (r !== -EAGAIN) this.deps.log.warn({ port: this.hostPort, error: errnoText(r) }, 'host accept failed');
        return;
      }
      this.deps.pairing.arrived({ fd: r.fd, listener: this }, r.address, r.port, this.hostPort);
    }
  }

  private flush(): void {
    while (this.queue.length) {
      const q = this.queue[0];
      const n = native.sendMsg(this.chanFd, q.buf, [q.fd]);
      if (n === -EAGAIN) {
        // The application is not accepting fast enough: wait for room, within reason.
        if (this.queue.length > MAX_QUEUED) native.close(this.queue.pop()!.fd);
        native.rewatch(this.chanWatch, READABLE | WRITABLE);
        return;
      }
      this.queue.shift();
      native.close(q.fd);
      if (n < 0) {
        this.deps.log.info({ port: this.hostPort, error: errnoText(n) }, 'accept channel gone');
        this.close();
        return;
      }
    }
    native.rewatch(this.chanWatch, READABLE);
  }

  private onChannel(events: number): void {
    if (events & WRITABLE) this.flush();
    if (events & (READABLE | DISCONNECT)) {
      // The application never writes here: readable means every copy of its end is closed.
      const r = native.recvMsg(this.chanFd, 256);
      if (r === 0 || (typeof r === 'number' && r !== -EAGAIN)) this.close();
      else if (typeof r !== 'number') for (const fd of r.fds) native.close(fd);
    }
  }
}
