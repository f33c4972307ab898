// The router's answers to CONNECT, LISTEN and STATUS. Everything here is local and
// non-blocking: the directory is a local replica, host sockets are created and handed over
// unconnected, and the announcement to the listener's router is sent without waiting.
import type { Logger } from '../log.js';
import { native, errnoText } from '../native.js';
import { ConnectFlags, emptyMsg, Fallback, ipv4ToWire, Limits, MsgType, Reply, wireToIpv4, type WireMsg } from '../protocol/codec.js';
import { fallback, type Answer, type ClientSession, type RequestHandler } from './client-session.js';
import type { AnnouncementChannel, Directory, ListenerRecord } from './directory.js';
import { announcementRecords } from './peer-mesh.js';
import type { HostEndpoints } from './host-endpoints.js';
import type { ListenerFence } from './listener-fence.js';
import type { ConnectionLog } from './status.js';
import { LISTENERS_PER_CONTAINER, OncePerInterval } from './tenant-caps.js';

export interface RequestContext {
  hostIp: string;
  directory: Directory;
  announcer: AnnouncementChannel;
  endpoints: HostEndpoints;
  fence: Pick<ListenerFence, 'isFenced'>;
  connections: ConnectionLog;
  status: () => unknown;
  /** Re-reads the namespace registry if this session may ask (root on the host); false if not. */
  reloadRegistry: (session: ClientSession) => boolean;
  log: Logger;
}

const HOST_BACKLOG = 4096;
const UNREGISTERED_WHY = 'caller\'s network namespace is not registered (CNI plugin or freeflow register)';
/** Accelerated listeners per container (network namespace, all its sessions): tenant-caps.ts. */
export { LISTENERS_PER_CONTAINER as MAX_LISTENERS_PER_CLIENT };

/** A feature served on the same FreeFlow socket with its own message types (RDMA mode). */
export interface RouterExtension {
  handles(type: number): boolean;
  handle(session: ClientSession, msg: WireMsg, payload: Buffer, fds: number[]): Answer | Promise<Answer>;
  sessionClosed(session: ClientSession): void;
  /** The overlay addresses registered on this host (all namespaces), at start and after each
   * change of the registry (RDMA mode tells its peers which GIDs live here). */
  registryChanged?(addresses: string[]): void;
}

/** Overlay source ports for same-host pairs of unbound sockets: no kernel socket holds them, so
 * they come from a counter over the Linux ephemeral range (names only; see docs/design.md). */
class PairPorts {
  private static readonly FIRST = 32768;
  private static readonly LAST = 60999;
  private n = PairPorts.FIRST + Math.floor(Math.random() * (PairPorts.LAST - PairPorts.FIRST));
  next(): number {
    this.n = this.n >= PairPorts.LAST ? PairPorts.FIRST : this.n + 1;
    return this.n;
  }
}

export class RequestDispatcher implements RequestHandler {
  private readonly extensions: RouterExtension[] = [];
  private readonly pairPorts = new PairPorts();
  private readonly limitLog = new OncePerInterval();
  constructor(private readonly ctx: RequestContext) {}

  addExtension(ext: RouterExtension): void {
    this.extensions.push(ext);
  }

  sessionClosed(session: ClientSession): void {
    for (const ext of this.extensions) ext.sessionClosed(session);
  }

  handle(session: ClientSession, msg: WireMsg, payload: Buffer, fds: number[]): Answer | Promise<Answer> {
    const ext = this.extensions.find((e) => e.handles(msg.type));
    if (ext) return ext.handle(session, msg, payload, fds);
    native.closeAll(fds); // TCP mode takes no descriptors from clients
    switch (msg.type) {
      case MsgType.CONNECT:
        return this.connect(session, msg);
      case MsgType.LISTEN:
        return this.listen(session, msg);
      case MsgType.STATUS:
        return { reply: ok(), payload: Buffer.from(JSON.stringify(this.ctx.status())) };
      case MsgType.REGISTRY_CHANGED:
        if (this.ctx.reloadRegistry(session)) return { reply: ok() };
        this.ctx.log.warn({ pid: session.pid, uid: session.uid }, 'registry reload refused: only root in the host namespace may ask');
        return fallback(Fallback.NOT_OWNER);
      default:
        this.ctx.log.warn({ pid: session.pid, type: msg.type }, 'unknown request type');
        return fallback(Fallback.BAD_REQUEST);
    }
  }

  /** Host sockets for a connection to an overlay destination: one, or a batch the library
   * keeps for its next connects (flags = how many; only for unbound sources, whose overlay
   * port is the host port). Each is announced to the listener's router before it is handed out. */
  private connect(session: ClientSession, msg: WireMsg): Answer {
    const srcIp = wireToIpv4(msg.local_addr);
    const dstIp = wireToIpv4(msg.remote_addr);
    if (!srcIp || !dstIp || !msg.remote_port) return fallback(Fallback.BAD_REQUEST);
    const dst = `${dstIp}:${msg.remote_port}`;
    const fall = (reason: number, why: string): Answer => {
      this.ctx.connections.add({ role: 'connect', path: 'overlay-fallback', src: `${srcIp}:${msg.local_port}`, dst, reason: why, pid: session.pid });
      return fallback(reason);
    };
    if (!session.ownership.registered) return fall(Fallback.UNREGISTERED, UNREGISTERED_WHY);
    if (!session.ownership.owns(srcIp)) return fall(Fallback.NOT_OWNER, 'source address not registered for the caller\'s network namespace');
    const rec = this.ctx.directory.lookup(dstIp, msg.remote_port);
    if (!rec) return fall(Fallback.NO_LISTENER, 'no accelerated listener');

    if (rec.hostIp === this.ctx.hostIp && msg.flags & ConnectFlags.PAIR_OK) {
      const pair = this.samePair(session, srcIp, msg.local_port, dstIp, msg.remote_port, rec.hostPort);
      if (pair) return pair;
    }
    // Host sockets only towards a listener that nobody else on this host can dial (listener-fence.ts).
    if (!this.ctx.fence.isFenced(rec)) return fall(Fallback.PENDING, 'listener not fenced on this host yet');
    const count = msg.local_port ? 1 : Math.min(Math.max(msg.flags & ConnectFlags.SOCKETS_MASK, 1), Limits.MAX_CONNECT_SOCKETS);
    const socks = native.tcpSockets(this.ctx.hostIp, count, rec.hostIp, rec.hostPort);
    if (typeof socks === 'number') return fall(Fallback.INTERNAL, `host socket: ${errnoText(socks)}`);
    const records = announcementRecords(
      { clientHostIp: this.ctx.hostIp, listenerHostPort: rec.hostPort, srcIp, srcPort: msg.local_port, dstIp, dstPort: msg.remote_port },
      socks.ports,
    );
    const sameHost = rec.hostIp === this.ctx.hostIp;
    if (sameHost) this.ctx.endpoints.expect(records, this.ctx.hostIp);
    else if (!this.ctx.announcer.announce(rec.hostIp, records)) {
      native.closeAll(socks.fds);
      return fall(Fallback.NO_LISTENER, `router at ${rec.hostIp} unreachable`);
    }
    // The connection's overlay source port (for an unbound source, the first socket's host port).
    const srcPort = msg.local_port || socks.ports.readUInt16LE(0);
    this.ctx.connections.add({
      role: 'connect',
      path: sameHost ? 'same-host' : 'host-network',
      src: `${srcIp}:${srcPort}`,
      dst,
      host: `${rec.hostIp}:${rec.hostPort}`,
      pid: session.pid,
      sockets: socks.fds.length,
    });
    const reply = ok();
    reply.host_addr = ipv4ToWire(rec.hostIp);
    reply.host_port = rec.hostPort;
    reply.local_port = srcPort;
    // Each socket's host port, so that the library need not ask the kernel for it.
    return { reply, fds: socks.fds, payload: socks.ports };
  }

  /** A same-host connection as a connected AF_UNIX stream pair (see docs/design.md): the
   * listener's end is on its accept channel before the client gets its own. undefined: use a
   * host TCP socket instead (listener queue full, or it just closed). */
  private samePair(session: ClientSession, srcIp: string, srcPort: number, dstIp: string, dstPort: number, hostPort: number): Answer | undefined {
    const port = srcPort || this.pairPorts.next();
    const fd = native.acceptor.pairLocal(hostPort, srcIp, port, dstIp, dstPort);
    if (fd < 0) {
      this.ctx.log.debug({ pid: session.pid, dst: `${dstIp}:${dstPort}`, error: errnoText(fd) }, 'same-host pair not made');
      return undefined;
    }
    this.ctx.connections.add({ role: 'connect', path: 'same-host-unix', src: `${srcIp}:${port}`, dst: `${dstIp}:${dstPort}`, pid: session.pid });
    const reply = ok();
    reply.flags = ConnectFlags.PAIR;
    reply.local_port = port;
    return { reply, fds: [fd] };
  }

  private listen(session: ClientSession, msg: WireMsg): Answer {
    const ip = wireToIpv4(msg.local_addr);
    if (!ip || !msg.local_port) return fallback(Fallback.BAD_REQUEST);
    const refuse = (reason: number, why: string): Answer => {
      this.ctx.connections.add({ role: 'listen', path: 'overlay-fallback', src: `${ip}:${msg.local_port}`, dst: '-', reason: why, pid: session.pid });
      return fallback(reason);
    };
    if (!session.ownership.registered) return refuse(Fallback.UNREGISTERED, UNREGISTERED_WHY);
    let overlayIps: string[];
    if (ip === '0.0.0.0') overlayIps = session.ownership.overlayAddresses();
    else if (session.ownership.owns(ip)) overlayIps = [ip];
    else {
      this.ctx.log.warn({ pid: session.pid, ip, port: msg.local_port }, 'refused listener on an address the caller does not own');
      return refuse(Fallback.NOT_OWNER, 'address not registered for the caller\'s network namespace');
    }
    if (!overlayIps.length) return refuse(Fallback.NOT_OWNER, 'no address registered for the caller\'s network namespace');
    if (this.ctx.endpoints.countOwnedBy(session.ownership.netnsIno) >= LISTENERS_PER_CONTAINER) {
      if (this.limitLog.due(session.ownership.netnsIno)) this.ctx.log.warn({ pid: session.pid, port: msg.local_port, limit: LISTENERS_PER_CONTAINER }, 'too many accelerated listeners for one container; this one stays on the overlay (logged at most every 10 s)');
      return fallback(Fallback.LIMIT);
    }

    const l = native.tcpListen(this.ctx.hostIp, 0, HOST_BACKLOG);
    if (typeof l === 'number') return fallback(Fallback.INTERNAL);
    const pair = native.seqpacketPair();
    if (typeof pair === 'number') {
      native.close(l.fd);
      return fallback(Fallback.INTERNAL);
    }
    const [routerEnd, appEnd] = pair;
    const records: ListenerRecord[] = overlayIps.map((o) => ({ overlayIp: o, port: msg.local_port, hostIp: this.ctx.hostIp, hostPort: l.port }));
    const table = this.ctx.endpoints.add(routerEnd, l.port, records, session.ownership.netnsIno);
    if (table < 0) {
      native.close(l.fd);
      native.close(appEnd);
      this.ctx.log.error({ pid: session.pid, error: errnoText(table) }, 'admission table');
      return fallback(Fallback.INTERNAL);
    }
    this.ctx.log.info({ pid: session.pid, overlay: overlayIps.map((o) => `${o}:${msg.local_port}`), host: `${this.ctx.hostIp}:${l.port}` }, 'accelerated listener');
    // The application accepts on the host listener itself and admits what the table lists.
    return { reply: ok(), fds: [appEnd, l.fd, table] };
  }
}

function ok(): WireMsg {
  const reply = emptyMsg(MsgType.REPLY);
  reply.status = Reply.ACCEL;
  return reply;
}
