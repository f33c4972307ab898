// The embedded directory: every router keeps a full copy of all accelerated listeners,
// learned from its peers over the host network (TCP, the shared wire record). Each router
// sends its own listeners and announcements on the connection it opens to each peer, and
// receives the peers' on the connections they open to it. A peer that goes away takes its
// listeners with it; reconnecting resends the full local state.
//
// Who counts as a peer (docs/design.md, "Only routers speak as routers"): a connection from one
// of the `--peers` addresses (a filter) that proves, before any frame is read, that it holds
// the cluster key (peer-auth.ts: the proof); and a peer speaks only for its own host: listener
// records and announcements naming another host are ignored. The connections we dial prove
// the other end too, so our listeners and announcements go only to routers.
import net from 'node:net';
import type { Logger } from '../log.js';
import { decode, emptyMsg, encode, FIELD_LAYOUT, ipv4ToWire, MSG_SIZE, MsgType, OFFSET, PeerAuth, wireToIpv4, type WireMsg } from '../protocol/codec.js';
import { listenerKey, type AnnouncementBatch, type AnnouncementChannel, type Directory, type ListenerRecord } from './directory.js';
import { authenticatePeer, PeerAuthError } from './peer-auth.js';

const RECONNECT_MS = 500;
const MAX_FRAME = MSG_SIZE + 65536;
/** Unsent bytes to a peer beyond which it counts as unreachable (connects use the overlay). */
const MAX_PEER_BACKLOG = 16 << 20;
/** A refusal repeated from one address is logged again at most this often (with a count). */
const REFUSAL_LOG_MS = 60_000;

export interface PeerMeshOptions {
  hostIp: string;
  port: number;
  /** The other routers' host addresses: dialled, and the only ones accepted. */
  peers: string[];
  /** The cluster key (cluster-key.ts); required when there are peers. */
  key?: Buffer;
  log: Logger;
}

interface Outbound {
  ip: string;
  socket?: net.Socket;
  connected: boolean;
  timer?: NodeJS.Timeout;
}

/** Inbound connections refused from one of our peers' addresses (status shows them). */
interface Refusals {
  count: number;
  last: string; // why
  lastFrom: string; // address:port
}

/** Logs a repeated complaint about one address once, then at most every REFUSAL_LOG_MS with
 * the number left unsaid: a hostile container behind its host's NAT can dial us in a loop. */
class QuietLog {
  private readonly said = new Map<string, { at: number; unsaid: number }>();
  constructor(private readonly log: Logger) {}

  warn(key: string, fields: Record<string, unknown>, msg: string): void {
    const now = Date.now();
    const s = this.said.get(key);
    if (s && now - s.at < REFUSAL_LOG_MS) {
      s.unsaid++;
      return;
    }
    if (this.said.size >= 1024 && !s) this.said.delete(this.said.keys().next().value!); // bounded: oldest out
    this.log.warn({ ...fields, ...(s?.unsaid ? { unsaidSince: new Date(s.at).toISOString(), unsaid: s.unsaid } : {}) }, msg);
    this.said.set(key, { at: now, unsaid: 0 });
  }

  /** The next complaint about key is said at once (the address behaved again). */
  reset(key: string): void {
    this.said.delete(key);
  }
}

export function recordToMsg(type: number, rec: ListenerRecord): WireMsg {
  const m = emptyMsg(type);
  m.local_addr = ipv4ToWire(rec.overlayIp);
  m.local_port = rec.port;
  m.host_addr = ipv4ToWire(rec.hostIp);
  m.host_port = rec.hostPort;
  return m;
}

export function msgToRecord(m: WireMsg): ListenerRecord | undefined {
  const overlayIp = wireToIpv4(m.local_addr);
  const hostIp = wireToIpv4(m.host_addr);
  if (!overlayIp || !hostIp || !m.local_port || !m.host_port) return undefined;
  return { overlayIp, port: m.local_port, hostIp, hostPort: m.host_port };
}

/** The ANNOUNCE records of one CONNECT batch, back to back: one per host socket, whose port
 * (uint16 LE in `ports`, as the router's native tcpSockets returns them) is the record's client
 * host port and, for an unbound source (batch.srcPort 0), its overlay source port too. The
 * shared fields are encoded once: this is on the connect path of every prefetched socket. */
export function announcementRecords(batch: AnnouncementBatch, ports: Buffer): Buffer {
  const m = emptyMsg(MsgType.ANNOUNCE);
  m.host_addr = ipv4ToWire(batch.clientHostIp);
  m.aux_port = batch.listenerHostPort;
  m.local_addr = ipv4ToWire(batch.srcIp);
  m.local_port = batch.srcPort;
  m.remote_addr = ipv4ToWire(batch.dstIp);
  m.remote_port = batch.dstPort;
  const template = encode(m);
  const n = ports.length >> 1;
  const out = Buffer.allocUnsafe(MSG_SIZE * n);
  for (let i = 0; i < n; i++) {
    const base = i * MSG_SIZE;
    template.copy(out, base);
    const port = ports.readUInt16LE(2 * i);
    out.writeUInt16LE(port, base + OFFSET.host_port);
    if (!batch.srcPort) out.writeUInt16LE(port, base + OFFSET.local_port);
  }
  return out;
}

const TYPE_OFFSET = FIELD_LAYOUT.find((f) => f.name === 'type')!.offset;
const PAYLOAD_LEN_OFFSET = FIELD_LAYOUT.find((f) => f.name === 'payload_len')!.offset;

/** Splits a TCP byte stream into wire records; throws on a malformed record. Runs of
 * ANNOUNCE records are handed over undecoded, as one buffer (a connect burst is one batch). */
export class FrameReader {
  private buf: Buffer = Buffer.alloc(0);
  push(chunk: Buffer, onMsg: (m: WireMsg) => void, onAnnounces: (records: Buffer) => void): void {
    this.buf = this.buf.length ? Buffer.concat([this.buf, chunk]) : chunk;
    let runStart = -1;
    let off = 0;
    const endRun = () => {
      if (runStart >= 0) onAnnounces(this.buf.subarray(runStart, off));
      runStart = -1;
    };
    while (this.buf.length - off >= MSG_SIZE) {
      // Announcements (32 per connect batch) are only framed here, never decoded: the native
      // acceptor checks them. Decoding each one showed up in the listener router's profile.
      const payloadLen = this.buf.readUInt32LE(off + PAYLOAD_LEN_OFFSET);
      const total = MSG_SIZE + payloadLen;
      if (total > MAX_FRAME) throw new Error(`frame too large: ${total}`);
      if (this.buf.length - off < total) break;
      if (this.buf.readUInt16LE(off + TYPE_OFFSET) === MsgType.ANNOUNCE && !payloadLen) {
        if (runStart < 0) runStart = off;
        off += total;
        continue;
      }
      endRun();
      onMsg(decode(this.buf.subarray(off, off + MSG_SIZE)));
      off += total;
    }
    endRun();
    this.buf = this.buf.subarray(off);
  }
}

export class PeerMesh implements Directory, AnnouncementChannel {
  private readonly local = new Map<string, ListenerRecord>();
  private readonly remote = new Map<string, ListenerRecord>();
  private readonly outbound = new Map<string, Outbound>();
  private readonly inbound = new Set<net.Socket>();
  private readonly refusals = new Map<string, Refusals>();
  private handshakes = 0; // inbound connections still proving the key
  private readonly quiet: QuietLog;
  private announcementHandler: (records: Buffer, fromIp: string) => void = () => {};
  private server?: net.Server;
  private closed = false;

  constructor(private readonly opts: PeerMeshOptions) {
    if (opts.peers.length && opts.key?.length !== PeerAuth.KEY_SIZE) throw new Error('routers with peers need the cluster key');
    this.quiet = new QuietLog(opts.log);
  }

  async start(): Promise<void> {
    // Alone (no peers), nobody may connect: no peer port at all.
    if (!this.opts.peers.length) return;
    this.server = net.createServer((s) => this.acceptPeer(s));
    await new Promise<void>((resolve, reject) => {
      this.server!.once('error', reject);
      this.server!.listen(this.opts.port, this.opts.hostIp, () => resolve());
    });
    this.server.on('error', (err) => this.opts.log.error({ err }, 'peer listener error'));
    for (const ip of this.opts.peers) if (ip !== this.opts.hostIp) this.connectPeer({ ip, connected: false });
  }

  close(): void {
    this.closed = true;
    this.server?.close();
    for (const o of this.outbound.values()) {
      clearTimeout(o.timer);
      o.socket?.destroy();
    }
    for (const s of this.inbound) s.destroy();
  }

  publish(rec: ListenerRecord): void {
    this.local.set(listenerKey(rec.overlayIp, rec.port), rec);
    this.broadcast(encode(recordToMsg(MsgType.LISTEN_ADD, rec)));
  }

  withdraw(rec: ListenerRecord): void {
    const key = listenerKey(rec.overlayIp, rec.port);
    if (this.local.get(key)?.hostPort !== rec.hostPort) return;
    this.local.delete(key);
    this.broadcast(encode(recordToMsg(MsgType.LISTEN_DEL, rec)));
  }

  lookup(overlayIp: string, port: number): ListenerRecord | undefined {
    const key = listenerKey(overlayIp, port);
    return this.local.get(key) ?? this.remote.get(key);
  }

  entries(): ListenerRecord[] {
    return [...this.local.values(), ...this.remote.values()];
  }

  /** Per peer: whether our connection to it is up (proved both ways), and how many inbound
   * connections from its address were refused (no or a wrong proof) and the last reason. */
  peerStates(): { ip: string; connected: boolean; refused: number; lastRefusal?: string; lastFrom?: string }[] {
    return [...this.outbound.values()].map((o) => {
      const r = this.refusals.get(o.ip);
      return { ip: o.ip, connected: o.connected, refused: r?.count ?? 0, ...(r ? { lastRefusal: r.last, lastFrom: r.lastFrom } : {}) };
    });
  }

  announce(hostIp: string, records: Buffer): boolean {
    const o = this.outbound.get(hostIp);
    if (!o?.connected || !o.socket) return false;
    // A peer that stopped reading (hung, or its host overloaded) must not grow this router
    // without bound: past the limit its listeners are reached over the overlay until it drains.
    if (o.socket.writableLength > MAX_PEER_BACKLOG) return false;
    o.socket.write(records);
    return true;
  }

  onAnnouncements(handler: (records: Buffer, fromIp: string) => void): void {
    this.announcementHandler = handler;
  }

  private broadcast(frame: Buffer): void {
    for (const o of this.outbound.values()) if (o.connected) o.socket!.write(frame);
  }

  // Any source port: since the key is the proof, a privileged one would prove nothing more
  // (docs/design.md), and an ephemeral one never collides with another router's.
  private connectPeer(o: Outbound): void {
    this.outbound.set(o.ip, o);
    const s = net.connect({ host: o.ip, port: this.opts.port, localAddress: this.opts.hostIp });
    o.socket = s;
    s.setNoDelay(true);
    s.on('connect', () => {
      authenticatePeer(s, { key: this.opts.key!, role: 'dialler', ownIp: this.opts.hostIp, peerIp: o.ip }).then(
        () => {
          if (s.destroyed) return;
          o.connected = true;
          this.quiet.reset(`out:${o.ip}`);
          this.opts.log.info({ peer: o.ip }, 'connected to peer router');
          s.on('data', () => {}); // peers send us nothing on this connection
          s.resume();
          const hello = emptyMsg(MsgType.PEER_HELLO);
          hello.host_addr = ipv4ToWire(this.opts.hostIp);
          s.write(encode(hello));
          for (const rec of this.local.values()) s.write(encode(recordToMsg(MsgType.LISTEN_ADD, rec)));
        },
        (err: Error) => {
          this.quiet.warn(`out:${o.ip}`, { peer: o.ip }, `peer router did not prove the cluster key: ${err.message}; retrying`);
          s.destroy();
        },
      );
    });
    s.on('error', () => {}); // then 'close': retried below
    s.on('close', () => {
      if (o.connected) this.opts.log.warn({ peer: o.ip }, 'lost peer router');
      o.connected = false;
      if (this.closed) return;
      o.timer = setTimeout(() => this.connectPeer(o), RECONNECT_MS);
    });
  }

  private acceptPeer(s: net.Socket): void {
    const ip = (s.remoteAddress ?? '').replace(/^::ffff:/, '');
    const from = `${ip}:${s.remotePort}`;
    s.on('error', () => {});
    if (!this.opts.peers.includes(ip)) return this.refuse(s, ip, from, 'from an address not in --peers');
    // Bounded: connections that never prove anything hold a descriptor for TIMEOUT_MS each.
    if (this.handshakes >= PeerAuth.MAX_PENDING) return this.refuse(s, ip, from, 'too many handshakes in progress');
    this.handshakes++;
    this.inbound.add(s);
    s.setNoDelay(true);
    authenticatePeer(s, { key: this.opts.key!, role: 'acceptor', ownIp: this.opts.hostIp, peerIp: ip }).then(
      (rest) => {
        this.handshakes--;
        if (!s.destroyed) this.servePeer(s, ip, rest);
      },
      (err: Error) => {
        this.handshakes--;
        this.refuse(s, ip, from, err instanceof PeerAuthError ? `without the cluster key: ${err.message}` : String(err));
      },
    );
  }

  private refuse(s: net.Socket, ip: string, from: string, why: string): void {
    s.destroy();
    this.inbound.delete(s);
    const r = this.refusals.get(ip);
    if (this.opts.peers.includes(ip)) this.refusals.set(ip, { count: (r?.count ?? 0) + 1, last: why, lastFrom: from });
    this.quiet.warn(`in:${ip}`, { from }, `refused peer connection ${why}`);
  }

  /** Frames from a peer that proved the key: its listeners and announcements. */
  private servePeer(s: net.Socket, ip: string, rest: Buffer): void {
    const learned = new Set<string>();
    const reader = new FrameReader();
    const onData = (chunk: Buffer) => {
      try {
        reader.push(chunk, (m) => this.onPeerMessage(m, ip, learned), (records) => this.announcementHandler(records, ip));
      } catch (err) {
        this.opts.log.warn({ peer: ip, err: (err as Error).message }, 'malformed peer message; dropping connection');
        s.destroy();
      }
    };
    s.on('close', () => {
      this.inbound.delete(s);
      for (const key of learned) this.remote.delete(key);
    });
    if (rest.length) onData(rest);
    s.on('data', onData);
    s.resume();
  }

  private onPeerMessage(m: WireMsg, fromIp: string, learned: Set<string>): void {
    if (m.type === MsgType.LISTEN_ADD || m.type === MsgType.LISTEN_DEL) {
      const rec = msgToRecord(m);
      if (!rec) throw new Error('bad listener record');
      if (rec.hostIp !== fromIp) throw new Error(`listener record for host ${rec.hostIp}`); // a peer speaks for its own host only
      const key = listenerKey(rec.overlayIp, rec.port);
      if (m.type === MsgType.LISTEN_ADD) {
        this.remote.set(key, rec);
        learned.add(key);
      } else if (this.remote.get(key)?.hostPort === rec.hostPort) {
        this.remote.delete(key);
        learned.delete(key);
      }
    } else if (m.type !== MsgType.PEER_HELLO) {
      throw new Error(`unexpected message type ${m.type}`);
    }
  }
}
