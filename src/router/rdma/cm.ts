// RDMA connection manager of full RDMA mode (the router side of libfsocket/verbs/rdmacm.c).
// A listener is an overlay ip:port of a container on this host; a connection request creates a
// new id on the listener's side and a CONNECT_REQUEST event on its channel. Handshake:
//   connector CM_CONNECT -> acceptor CONNECT_REQUEST -> acceptor CM_ACCEPT (its QP is RTS) ->
//   connector ESTABLISHED (its library moves its QP to RTS, then CM_RTU) -> acceptor ESTABLISHED.
// Disconnect (or a process going away) moves both QPs to ERR by number (flushing posted work
// requests, never touching a QP the application already destroyed) and tells both ends.
// Cross-host: a request for an address with no listener here goes to every peer router (over
// the engines' transport, as JSON); the one with the listener answers and the handshake goes on
// between the two routers with the same messages ('req', 'nol', 'acc', 'rej', 'rtu', 'disc').
// Events are CM_EVENT records written to the channel's socket (SOCK_SEQPACKET) that the library
// gave us. A destroyed channel's socket stays open, so that a thread still blocked in
// rdma_get_cm_event sees no EOF (as with the kernel's rdma_cm), but only for the last
// KEEP_DESTROYED channels of a process: older ones are closed, and all when the process goes.
// Ids and channels count against the container's caps (tenancy.ts, across its sessions), and so do
// the ids a connection request creates on the listener's side (a full listener rejects it).
// Messages from peer routers are checked field by field: a malformed one is dropped. A peer
// speaks only for its own host (docs/security-rdma-qp.md): a connection request goes only to
// the router of the host the GID directory (gid-directory.ts) names for the address, and only
// that router's answers count; a request from a peer must name a connector whose GID and
// address live on that peer's host; 'rtu' and 'disc' for an id count only from the router of
// the host its peer id lives on.
import { randomInt } from 'node:crypto';
import type { Logger } from '../../log.js';
import { native } from '../../native.js';
import { emptyMsg, encode, FF_RDMA_ARGS_SIZE, ipv4ToWire, MsgType, wireToIpv4, type WireMsg } from '../../protocol/codec.js';
import type { Answer, ClientSession } from '../client-session.js';

const EINVAL = 22, ENOENT = 2, EADDRINUSE = 98, EADDRNOTAVAIL = 99, EPERM = 1;
// enum rdma_cm_event_type
const ADDR_RESOLVED = 0, ADDR_ERROR = 1, ROUTE_RESOLVED = 2, CONNECT_REQUEST = 4, REJECTED = 8, ESTABLISHED = 9, DISCONNECTED = 10;
const REJ_NO_LISTENER = 28; // IB CM reject reason "invalid service ID", what rdma_cm reports
const REJ_NO_RESOURCES = 3; // IB CM reject reason "no resources": the listener's process is at its cap
const MAX_PRIVATE = 255;
const CONNECT_RETRY_MS = 2000; // how long a connection request waits for a listener to appear

/** destroyed: ids still naming it get no more events; fd -1: its descriptor is closed. */
interface Channel { h: number; fd: number; session: ClientSession; destroyed?: boolean }
/** Destroyed event channels per process whose socket the router keeps open (see above). */
export const KEEP_DESTROYED = 16;
interface CmId {
  h: number;
  session: ClientSession;
  channel: Channel;
  gid: Buffer;
  ip?: string;
  port: number;
  listenKey?: string;
  qpn: number;
  peer?: CmId;
  remote?: { conn: number; h: number; peer: number }; // the peer id lives on another host's router (index in --peers)
  state: 'idle' | 'connecting' | 'connected' | 'done';
}

export interface CmNet {
  send(conn: number, msg: object): boolean;
  /** Connections to the peer routers that are up. */
  peers(): number[];
}

export interface CmHost {
  gidOf(session: ClientSession): Buffer | undefined;
  /** True if QP qpn belongs to a session of process pid (the library's verbs connection). */
  qpOwnedBy(qpn: number, pid: number): boolean;
  /** Moves QP qpn to ERR if it still exists. */
  qpToErr(qpn: number): void;
  /** 0 if the session may hold one more object (holdsFd: a channel, which keeps a descriptor
   * open in the router), else the errno of the cap it reached. */
  admit(session: ClientSession, holdsFd: boolean): number;
  /** True if a container process on this host has that overlay address. */
  isLocal(ip: string): boolean;
  /** The host an overlay address is registered on (GID directory): -1 this one, a peer's
   * index in --peers, or undefined (unknown or disputed). */
  ownerOf(ip: string): number | undefined;
  /** The peer router at the other end of a transport connection (index in --peers), or -1. */
  peerOf(conn: number): number;
}

function reply(status: number, h: number[] = [], fill?: (m: WireMsg) => void): Answer {
  const m = emptyMsg(MsgType.REPLY);
  m.status = status;
  fill?.(m);
  const payload = Buffer.alloc(FF_RDMA_ARGS_SIZE);
  h.forEach((x, i) => payload.writeUInt32LE(x >>> 0, i * 4));
  return { reply: m, payload };
}
const fail = (e: number) => reply(-e);

/** v if it is a dotted IPv4 address, else undefined (peer routers' fields are checked). */
function ipv4(v: unknown): string | undefined {
  if (typeof v !== 'string') return undefined;
  try {
    ipv4ToWire(v);
    return v;
  } catch {
    return undefined;
  }
}

export class ConnectionManager {
  private readonly channels = new Map<number, Channel>();
  private readonly ids = new Map<number, CmId>();
  private readonly listeners = new Map<string, CmId>();
  private next = 1;
  private readonly pending = new Map<number, { left: number; timer: NodeJS.Timeout; peer: number }>(); // cross-host requests, and the peer asked
  /** Ids and open channels per session (what counts against its cap). */
  private readonly owned = new Map<ClientSession, { ids: number; channels: number }>();
  /** Destroyed channels whose descriptor is still open, oldest first, per session. */
  private readonly kept = new Map<ClientSession, Channel[]>();
  private keptCount = 0;
  net?: CmNet;

  constructor(private readonly host: CmHost, private readonly log: Logger) {}

  /** "ip:port" of every rdma_cm listener on this host. */
  listening(): string[] {
    return [...this.listeners.keys()];
  }

  /** What the connection manager holds, for RDMA_STATS. */
  held(): { ids: number; channels: number; kept: number; listeners: number; pending: number; sessions: number } {
    return { ids: this.ids.size, channels: this.channels.size, kept: this.keptCount, listeners: this.listeners.size, pending: this.pending.size, sessions: this.owned.size };
  }

  ownedBy(session: ClientSession): { ids: number; channels: number } {
    return this.owned.get(session) ?? { ids: 0, channels: 0 };
  }

  private own(session: ClientSession, ids: number, channels: number): void {
    const o = this.owned.get(session) ?? { ids: 0, channels: 0 };
    o.ids += ids;
    o.channels += channels;
    if (o.ids || o.channels) this.owned.set(session, o);
    else this.owned.delete(session);
  }

  private addId(id: CmId): void {
    this.ids.set(id.h, id);
    this.own(id.session, 1, 0);
  }

  /** Destroys a channel: it no longer counts against the session's cap, and its descriptor is
   * kept open (one of the session's last KEEP_DESTROYED) or closed now (close). */
  private destroyChannel(ch: Channel, close: boolean): void {
    if (this.channels.get(ch.h) !== ch) return;
    this.channels.delete(ch.h);
    ch.destroyed = true;
    this.own(ch.session, 0, -1);
    if (close) return this.closeFd(ch);
    const kept = this.kept.get(ch.session) ?? [];
    kept.push(ch);
    this.kept.set(ch.session, kept);
    this.keptCount++;
    if (kept.length > KEEP_DESTROYED) {
      this.keptCount--;
      this.closeFd(kept.shift()!);
    }
  }

  private closeFd(ch: Channel): void {
    native.close(ch.fd);
    ch.fd = -1;
  }

  handles(type: number): boolean {
    return type >= MsgType.CM_CREATE_CHANNEL && type <= MsgType.CM_DESTROY_CHANNEL;
  }

  handle(session: ClientSession, msg: WireMsg, h: number[], priv: Buffer, fd: number, take: () => void): Answer {
    if (priv.length > MAX_PRIVATE) return fail(EINVAL);
    if (msg.type === MsgType.CM_CREATE_CHANNEL) {
      if (fd < 0) return fail(EINVAL);
      const errno = this.host.admit(session, true);
      if (errno) return fail(errno);
      take();
      const ch: Channel = { h: this.next++, fd, session };
      this.channels.set(ch.h, ch);
      this.own(session, 0, 1);
      return reply(0, [ch.h]);
    }
    if (msg.type === MsgType.CM_DESTROY_CHANNEL) {
      // Ids left on the channel get no more events, as with the kernel's rdma_cm.
      const ch = this.channels.get(h[0]);
      if (!ch || ch.session !== session) return fail(ENOENT);
      this.destroyChannel(ch, false);
      return reply(0);
    }
    if (msg.type === MsgType.CM_CREATE_ID) {
      const ch = this.channels.get(h[0]);
      const gid = this.host.gidOf(session);
      if (!ch || ch.session !== session) return fail(ENOENT);
      if (!gid) return fail(EADDRNOTAVAIL);
      const errno = this.host.admit(session, false);
      if (errno) return fail(errno);
      const id: CmId = { h: this.next++, session, channel: ch, gid, port: 0, qpn: 0, state: 'idle' };
      this.addId(id);
      return reply(0, [id.h]);
    }
    const id = this.ids.get(h[0]);
    if (!id || id.session !== session) return fail(ENOENT);
    switch (msg.type) {
      case MsgType.CM_BIND: {
        // A listening id keeps its address (the kernel's rdma_bind_addr wants an idle id):
        // moving it would leave its old listener entry behind.
        if (id.listenKey) return fail(EINVAL);
        const ip = wireToIpv4(msg.local_addr) ?? '0.0.0.0';
        if (ip !== '0.0.0.0' && !session.ownership.owns(ip)) return fail(EADDRNOTAVAIL);
        id.ip = ip;
        id.port = msg.local_port || randomInt(20000, 60000);
        return reply(0, [], (m) => {
          m.local_addr = ipv4ToWire(ip);
          m.local_port = id.port;
        });
      }
      case MsgType.CM_LISTEN: {
        if (id.ip === undefined || !id.port) return fail(EINVAL);
        if (id.listenKey) return reply(0); // listening already: rdma_listen again changes only the backlog
        const key = `${id.ip}:${id.port}`;
        if (this.listeners.has(key)) return fail(EADDRINUSE);
        this.listeners.set(key, id);
        id.listenKey = key;
        return reply(0);
      }
      case MsgType.CM_RESOLVE_ADDR: {
        const dst = wireToIpv4(msg.remote_addr);
        if (!dst || !msg.remote_port) {
          this.emit(id, ADDR_ERROR, { status: -EINVAL });
          return fail(EINVAL);
        }
        const src = wireToIpv4(id.gid)!;
        id.ip = src;
        id.port ||= randomInt(20000, 60000);
        this.emit(id, ADDR_RESOLVED, {});
        return reply(0, [], (m) => {
          m.local_addr = ipv4ToWire(src);
          m.local_port = id.port;
        });
      }
      case MsgType.CM_RESOLVE_ROUTE:
        this.emit(id, ROUTE_RESOLVED, {});
        return reply(0);
      case MsgType.CM_CONNECT: {
        // rdma_connect needs a resolved (or bound) address: the listener is told where it comes from.
        if (id.state !== 'idle' || id.ip === undefined) return fail(EINVAL);
        if (h[1] && !this.host.qpOwnedBy(h[1], session.pid)) return fail(EPERM);
        id.qpn = h[1];
        id.state = 'connecting';
        const dst = wireToIpv4(msg.remote_addr) ?? '';
        this.attemptConnect(id, dst, msg.remote_port, priv, Date.now() + CONNECT_RETRY_MS);
        return reply(0);
      }
      case MsgType.CM_ACCEPT: {
        const c = id.peer;
        if ((!c && !id.remote) || id.state !== 'connecting') return fail(EINVAL);
        if (h[1] && !this.host.qpOwnedBy(h[1], session.pid)) return fail(EPERM);
        id.qpn = h[1];
        if (id.remote) {
          id.state = 'connected';
          this.net?.send(id.remote.conn, { t: 'acc', cid: id.remote.h, sid: id.h, qpn: id.qpn, gid: id.gid.toString('hex'), priv: priv.toString('base64') });
          return reply(0);
        }
        if (!c) return fail(EINVAL);
        id.state = c.state = 'connected';
        this.emit(c, ESTABLISHED, { newId: 1, peerQpn: id.qpn, peerGid: id.gid, priv });
        return reply(0);
      }
      case MsgType.CM_RTU: {
        if (id.remote && id.state === 'connected') this.net?.send(id.remote.conn, { t: 'rtu', sid: id.remote.h, qpn: id.qpn, gid: id.gid.toString('hex') });
        const s = id.peer;
        if (s && id.state === 'connected') this.emit(s, ESTABLISHED, { peerQpn: id.qpn, peerGid: id.gid });
        return reply(0);
      }
      case MsgType.CM_REJECT: {
        this.log.info({ pid: session.pid }, 'rdma_cm connection rejected by the application');
        if (id.remote && id.state === 'connecting') {
          id.state = 'done';
          this.net?.send(id.remote.conn, { t: 'rej', cid: id.remote.h, priv: priv.toString('base64') });
          return reply(0);
        }
        const c = id.peer;
        if (!c || id.state !== 'connecting') return fail(EINVAL);
        id.state = c.state = 'done';
        this.emit(c, REJECTED, { status: REJ_NO_LISTENER, priv });
        return reply(0);
      }
      case MsgType.CM_DISCONNECT:
        this.disconnect(id, true);
        return reply(0);
      case MsgType.CM_DESTROY_ID:
        this.destroy(id);
        return reply(0);
      default:
        return fail(EINVAL);
    }
  }

  private findListener(ip: string, port: number): CmId | undefined {
    return this.listeners.get(`${ip}:${port}`) ?? this.wildcard(ip, port);
  }

  /** Like a CM request that is retried: a listener that appears within CONNECT_RETRY_MS is
   * found (perftest -R servers close and reopen their listener between two connections). */
  private attemptConnect(id: CmId, dst: string, port: number, priv: Buffer, deadline: number): void {
    if (this.ids.get(id.h) !== id || id.state !== 'connecting') return;
    const l = this.findListener(dst, port);
    if (l) {
      if (this.host.admit(l.session, false)) {
        id.state = 'done';
        this.emit(id, REJECTED, { status: REJ_NO_RESOURCES });
        return;
      }
      const s: CmId = { h: this.next++, session: l.session, channel: l.channel, gid: l.gid, ip: dst, port, qpn: 0, peer: id, state: 'connecting' };
      this.addId(s);
      id.peer = s;
      this.emit(l, CONNECT_REQUEST, { newId: s.h, peerQpn: id.qpn, peerGid: id.gid, local: [dst, port], remote: [id.ip!, id.port], priv });
      return;
    }
    // Another host's address: only the router of the host it is registered on is asked (the
    // GID directory names it once that router has announced its registrations).
    const owner = this.host.ownerOf(dst);
    const conn = owner !== undefined && owner >= 0 ? this.net?.peers().find((c) => this.host.peerOf(c) === owner) : undefined;
    if (conn !== undefined && !this.host.isLocal(dst)) {
      this.log.info({ pid: id.session.pid, dst: `${dst}:${port}`, peer: owner }, 'rdma_cm connect: asking the peer router of that host');
      const req = { t: 'req', cid: id.h, dst, port, qpn: id.qpn, gid: id.gid.toString('hex'), src: id.ip, sport: id.port, priv: priv.toString('base64') };
      const sent = this.net!.send(conn, req);
      const timer = setTimeout(() => this.noListener(id.h), CONNECT_RETRY_MS + 3000);
      this.pending.set(id.h, { left: 1, timer, peer: owner! });
      if (!sent) this.noListener(id.h);
      return;
    }
    if (Date.now() < deadline) {
      setTimeout(() => this.guarded(() => this.attemptConnect(id, dst, port, priv, deadline)), 50);
      return;
    }
    this.log.info({ pid: id.session.pid, dst: `${dst}:${port}`, listeners: [...this.listeners.keys()] }, 'rdma_cm connect: no listener');
    id.state = 'done';
    this.emit(id, REJECTED, { status: REJ_NO_LISTENER });
  }

  private wildcard(ip: string, port: number): CmId | undefined {
    const l = this.listeners.get(`0.0.0.0:${port}`);
    if (l && !l.session.ownership.owns(ip))
      this.log.info({ pid: l.session.pid, ip, gid: wireToIpv4(l.gid), own: l.session.ownership.overlayAddresses() }, 'rdma_cm wildcard listener does not own the address');
    return l && l.session.ownership.owns(ip) ? l : undefined;
  }

  private disconnect(id: CmId, tellSelf: boolean): void {
    if (id.remote) {
      if (id.state !== 'connected' && id.state !== 'connecting') return;
      id.state = 'done';
      if (id.qpn) this.host.qpToErr(id.qpn);
      if (tellSelf) this.emit(id, DISCONNECTED, {});
      this.net?.send(id.remote.conn, { t: 'disc', h: id.remote.h });
      return;
    }
    const p = id.peer;
    if (!p || (id.state !== 'connected' && id.state !== 'connecting')) return;
    id.state = p.state = 'done';
    if (id.qpn) this.host.qpToErr(id.qpn);
    if (p.qpn) this.host.qpToErr(p.qpn);
    if (tellSelf) this.emit(id, DISCONNECTED, {});
    if (this.ids.get(p.h) === p) this.emit(p, DISCONNECTED, {});
  }

  private noListener(cid: number): void {
    const p = this.pending.get(cid);
    if (!p) return;
    clearTimeout(p.timer);
    this.pending.delete(cid);
    const id = this.ids.get(cid);
    if (!id) return;
    this.log.info({ pid: id.session.pid, listeners: [...this.listeners.keys()] }, 'rdma_cm connect: no listener on any host');
    id.state = 'done';
    this.emit(id, REJECTED, { status: REJ_NO_LISTENER });
  }

  /** Runs a timer's work: a fault in it is logged, never thrown out of a timer (where it would
   * reach the process's last-resort handler with the state half changed). */
  private guarded(fn: () => void): void {
    try {
      fn();
    } catch (err) {
      this.log.warn({ error: (err as Error).message }, 'rdma_cm: internal error');
    }
  }

  /** A connection-manager message from the peer router on transport connection conn (JSON
   * parsed, otherwise unchecked: every field is validated here, malformed messages dropped). */
  onNet(conn: number, m: any): void {
    if (typeof m !== 'object' || m === null || Array.isArray(m)) {
      this.log.warn({ conn }, 'rdma_cm: malformed message from a peer router (not an object)');
      return;
    }
    const b64 = typeof m.priv === 'string' && m.priv.length <= 4 * Math.ceil(MAX_PRIVATE / 3) && /^[A-Za-z0-9+/=]*$/.test(m.priv) ? m.priv : '';
    const priv = Buffer.from(b64, 'base64').subarray(0, MAX_PRIVATE);
    const gid = typeof m.gid === 'string' && /^[0-9a-fA-F]{32}$/.test(m.gid) ? Buffer.from(m.gid, 'hex') : Buffer.alloc(16);
    const num = (v: unknown, max = 0xffffffff) => (typeof v === 'number' && Number.isInteger(v) && v >= 0 && v <= max ? v : 0);
    const peer = this.host.peerOf(conn);
    /** Logs (once per kind and peer) a message that is not the peer's to send, and drops it. */
    const refuse = (why: string) => this.refused(peer, String(m.t), why);
    switch (m.t) {
      case 'req': {
        const dst = ipv4(m.dst), src = ipv4(m.src), port = num(m.port, 0xffff), sport = num(m.sport, 0xffff);
        const cid = num(m.cid), deadline = Date.now() + CONNECT_RETRY_MS;
        if (!dst || !src || !port || !cid) {
          this.log.warn({ conn, dst: String(m.dst).slice(0, 64), src: String(m.src).slice(0, 64), port: String(m.port).slice(0, 16) }, 'rdma_cm: malformed connection request from a peer router');
          if (cid) this.net?.send(conn, { t: 'nol', cid });
          return;
        }
        const connector = wireToIpv4(gid);
        const attempt = () => {
          // The connector must live on the sending router's host (its GID, and its address
          // unless it is unbound); until that router's registrations are known, wait as for a
          // listener.
          const owners = [this.host.ownerOf(connector ?? ''), src === '0.0.0.0' ? peer : this.host.ownerOf(src)];
          if (peer < 0 || owners.some((o) => o !== undefined && o !== peer)) {
            refuse(`connector ${connector}/${src} is not on that host`);
            this.net?.send(conn, { t: 'nol', cid });
            return;
          }
          if (owners.some((o) => o === undefined)) {
            if (Date.now() < deadline) setTimeout(() => this.guarded(attempt), 50);
            else {
              refuse(`connector ${connector}/${src} is on no known host`);
              this.net?.send(conn, { t: 'nol', cid });
            }
            return;
          }
          const l = this.findListener(dst, port);
          if (!l) {
            if (Date.now() < deadline) setTimeout(() => this.guarded(attempt), 50);
            else this.net?.send(conn, { t: 'nol', cid });
            return;
          }
          if (this.host.admit(l.session, false)) {
            this.net?.send(conn, { t: 'rej', cid, status: REJ_NO_RESOURCES });
            return;
          }
          const s: CmId = { h: this.next++, session: l.session, channel: l.channel, gid: l.gid, ip: dst, port, qpn: 0, remote: { conn, h: cid, peer }, state: 'connecting' };
          this.addId(s);
          this.emit(l, CONNECT_REQUEST, { newId: s.h, peerQpn: num(m.qpn), peerGid: gid, local: [dst, port], remote: [src, sport], priv });
        };
        attempt();
        return;
      }
      case 'nol': {
        const p = this.pending.get(num(m.cid));
        if (p && p.peer !== peer) return refuse('answer to a request it was not asked');
        if (p && --p.left <= 0) this.noListener(num(m.cid));
        return;
      }
      case 'acc': {
        const c = this.ids.get(num(m.cid)), p = this.pending.get(num(m.cid));
        if (!c || !p) return;
        if (p.peer !== peer) return refuse('answer to a request it was not asked');
        if (this.host.ownerOf(wireToIpv4(gid) ?? '') !== peer) return refuse(`acceptor GID ${wireToIpv4(gid)} is not on that host`);
        clearTimeout(p.timer);
        this.pending.delete(c.h);
        c.remote = { conn, h: num(m.sid), peer };
        c.state = 'connected';
        this.emit(c, ESTABLISHED, { newId: 1, peerQpn: num(m.qpn), peerGid: gid, priv });
        return;
      }
      case 'rej': {
        const p = this.pending.get(num(m.cid));
        if (!p) return;
        if (p.peer !== peer) return refuse('answer to a request it was not asked');
        clearTimeout(p.timer);
        this.pending.delete(num(m.cid));
        const c = this.ids.get(num(m.cid));
        if (c) {
          c.state = 'done';
          this.emit(c, REJECTED, { status: num(m.status, 0xffff) || REJ_NO_LISTENER, priv });
        }
        return;
      }
      case 'rtu': {
        const s = this.ids.get(num(m.sid));
        if (s?.remote && (s.remote.peer !== peer || this.host.ownerOf(wireToIpv4(gid) ?? '') !== peer)) return refuse('an id connected to another host, or a GID not of its host');
        if (s?.remote && s.state === 'connected') this.emit(s, ESTABLISHED, { peerQpn: num(m.qpn), peerGid: gid });
        return;
      }
      case 'disc': {
        const x = this.ids.get(num(m.h));
        if (x?.remote && x.remote.peer !== peer) return refuse('an id connected to another host');
        if (!x?.remote || (x.state !== 'connected' && x.state !== 'connecting')) return;
        x.state = 'done';
        if (x.qpn) this.host.qpToErr(x.qpn);
        this.emit(x, DISCONNECTED, {});
        return;
      }
    }
  }

  /** How many messages each peer sent that were not its to send, by kind (RDMA_STATS). */
  readonly refusals = new Map<string, number>();
  private refused(peer: number, kind: string, why: string): void {
    const key = `${peer}:${kind}`;
    const n = (this.refusals.get(key) ?? 0) + 1;
    if (this.refusals.size < 1024 || this.refusals.has(key)) this.refusals.set(key, n);
    if (n === 1 || n % 1000 === 0) this.log.warn({ peer, kind, why, count: n }, 'rdma_cm: refused a message a peer router may not send');
  }

  private destroy(id: CmId): void {
    const p = this.pending.get(id.h);
    if (p) {
      clearTimeout(p.timer);
      this.pending.delete(id.h);
    }
    this.disconnect(id, false);
    if (id.listenKey && this.listeners.get(id.listenKey) === id) this.listeners.delete(id.listenKey);
    if (this.ids.get(id.h) === id) {
      this.ids.delete(id.h);
      this.own(id.session, -1, 0);
    }
  }

  sessionClosed(session: ClientSession): void {
    for (const id of [...this.ids.values()])
      if (id.session === session) {
        if (id.listenKey) this.log.info({ pid: session.pid, listener: id.listenKey }, 'rdma_cm listener gone with its process');
        this.destroy(id);
      }
    for (const ch of [...this.channels.values()]) if (ch.session === session) this.destroyChannel(ch, true);
    for (const ch of this.kept.get(session) ?? []) this.closeFd(ch);
    this.keptCount -= this.kept.get(session)?.length ?? 0;
    this.kept.delete(session);
    this.owned.delete(session);
  }

  private emit(id: CmId, event: number, o: { newId?: number; peerQpn?: number; status?: number; peerGid?: Buffer; local?: [string, number]; remote?: [string, number]; priv?: Buffer }): void {
    if (id.channel.destroyed) return; // nobody reads its events any more
    const m = emptyMsg(MsgType.CM_EVENT);
    if (o.peerGid) o.peerGid.copy(m.host_addr);
    if (o.local) {
      m.local_addr = ipv4ToWire(o.local[0]);
      m.local_port = o.local[1];
    }
    if (o.remote) {
      m.remote_addr = ipv4ToWire(o.remote[0]);
      m.remote_port = o.remote[1];
    }
    const priv = o.priv ?? Buffer.alloc(0);
    const args = Buffer.alloc(FF_RDMA_ARGS_SIZE);
    [event, id.h, o.newId ?? 0, o.peerQpn ?? 0, o.status ?? 0, priv.length].forEach((x, i) => args.writeUInt32LE(x >>> 0, i * 4));
    const n = native.sendMsg(id.channel.fd, encode(m, Buffer.concat([args, priv])));
    if (n < 0) this.log.warn({ pid: id.session.pid, event, error: n }, 'cannot deliver RDMA CM event');
  }
}
