// Full RDMA mode, control path: the router side of FreeFlow's libibverbs replacement
// (libfsocket/verbs). Every resource (PD, MR, CQ, completion channel, QP) belongs to the session
// (one container process's router socket) that created it; every handle in a request is checked
// against that session before the native engine (native/rdma) sees it, and everything is freed
// when the session closes. The data path never passes through here: work requests and
// completions are shared-memory rings served by the engine's C++ thread.
import { randomInt } from 'node:crypto';
import { readdirSync, readFileSync } from 'node:fs';
import type { Logger } from '../../log.js';
import { native, READABLE } from '../../native.js';
import { emptyMsg, FF_RDMA_ARGS_SIZE, ipv4ToWire, MsgType, wireToIpv4, type WireMsg } from '../../protocol/codec.js';
import type { Answer, ClientSession } from '../client-session.js';
import type { RouterExtension } from '../requests.js';
import { ConnectionManager, KEEP_DESTROYED } from './cm.js';
import { MAX_FDS_PER_CONTAINER, MAX_MAPPINGS_PER_CONTAINER, MAX_OBJECTS_PER_CONTAINER, MAX_RDMA_SESSIONS_PER_CONTAINER, Tenancy } from './tenancy.js';
import { GidDirectory, isIpv4, MAX_PEER_GIDS } from './gid-directory.js';

interface RdmaNative {
  rdmaAddMr(key: number, pd: number, pid: number, addr: number, len: number, iova: number, access: number, viewFd: number, viewAddr: number, viewOff: number, viewLen: number): number;
  rdmaDelMr(key: number): number;
  rdmaAddChannel(id: number, fd: number): number;
  rdmaDelChannel(id: number): number;
  rdmaAddCq(id: number, fd: number, depth: number, channel: number): number;
  rdmaDelCq(id: number): number;
  rdmaAddQp(qpn: number, pid: number, pd: number, scq: number, rcq: number, fd: number, sqd: number, rqd: number, sigAll: boolean, gid: Buffer, srq: number): number;
  rdmaAddSrq(id: number, fd: number, depth: number, pd: number): number;
  rdmaDelSrq(id: number): number;
  rdmaModifyQp(qpn: number, state: number, destQpn: number, dgid: Buffer | null, access: number, rnrRetry: number, minRnrTimer: number): number;
  rdmaDelQp(qpn: number): number;
  rdmaSetRate(bytesPerSec: number): void;
  rdmaSafetyStats(): { bellContainers: number; spuriousWakeups: number; bellMutes: number; unlockedChunks: number; memOwners: number; ctlWaitMaxUs: number; holdMaxUs: number };
  /** Starts the engines' transport; every connection proves clusterKey (native/rdma/peer_auth.h). */
  rdmaStartTransport(hostIp: string, port: number, peers: string[], clusterKey: Buffer): number;
  rdmaCmSend(conn: number, data: Buffer): boolean;
  rdmaCmPeers(): number[];
  rdmaCmTake(): { conn: number; data: Buffer }[];
  rdmaConnPeer(conn: number): number;
  rdmaSetGidOwners(table: Buffer): void;
  rdmaStats(): {
    ops: number; bytes: number; errors: number; served: number; qps: number; mrs: number; cqs: number; mapped: number; placed: number;
    srqs: number; channels: number; views: number; pending: number; naks: number; refused: number; gids: number;
  };
}
const rdma = native as unknown as RdmaNative;

const EPERM = 1, ENOENT = 2, ENOMEM = 12, EBUSY = 16, ENODEV = 19, EINVAL = 22, EMFILE = 24, EOPNOTSUPP = 95;
// enum ibv_qp_attr_mask bits the router looks at
const QP_STATE = 1, QP_ACCESS_FLAGS = 1 << 3, QP_AV = 1 << 7, QP_RNR_RETRY = 1 << 11, QP_MIN_RNR_TIMER = 1 << 15, QP_DEST_QPN = 1 << 20;
const QPT_RC = 2, QPT_UC = 3;
const MAX_MR = 2 ** 40;
const PAGE = 4096; // unit of the REG_MR view fields (x86-64 and arm64 base pages)
/** How often the extension looks for peer connections that came up (and then tells them this
 * host's GIDs), and how often it tells all of them again regardless. */
const ANNOUNCE_CHECK_MS = 250;
const ANNOUNCE_EVERY_MS = 5000;
/** Default TCP port of the engines' router-to-router transport (the TCP-mode peer port + 1). */
export const RDMA_PORT = 7472;
// Caps hold per container (network namespace) across all its sessions: tenancy.ts.
/** The router's soft limit on open files (what Node raised it to). */
function openFileLimit(): number {
  try {
    const m = /^Max open files\s+(\d+)/m.exec(readFileSync('/proc/self/limits', 'utf8'));
    if (m) return Number(m[1]);
  } catch {
    /* not Linux: keep the default below */
  }
  return 1024;
}
const CREATES = new Set<number>([MsgType.RDMA_CREATE_SRQ, MsgType.RDMA_ALLOC_PD, MsgType.RDMA_REG_MR, MsgType.RDMA_CREATE_CHANNEL, MsgType.RDMA_CREATE_CQ, MsgType.RDMA_CREATE_QP]);

interface Args { h: number[]; v: number[] }

function readArgs(payload: Buffer): Args {
  const b = Buffer.alloc(FF_RDMA_ARGS_SIZE);
  payload.copy(b, 0, 0, Math.min(payload.length, FF_RDMA_ARGS_SIZE));
  const h = [0, 1, 2, 3, 4, 5].map((i) => b.readUInt32LE(i * 4));
  const v = [0, 1, 2, 3].map((i) => Number(b.readBigUInt64LE(24 + i * 8)));
  return { h, v };
}

function answer(status: number, h: number[] = [], msg?: (m: WireMsg) => void): Answer {
  const reply = emptyMsg(MsgType.REPLY);
  reply.status = status;
  msg?.(reply);
  const payload = Buffer.alloc(FF_RDMA_ARGS_SIZE);
  h.forEach((x, i) => payload.writeUInt32LE(x >>> 0, i * 4));
  return { reply, payload };
}
const fail = (errno: number) => answer(-errno);

interface SessionRes {
  gid: Buffer;
  pds: Set<number>;
  mrs: Map<number, number>; // key -> pd
  channels: Set<number>;
  cqs: Map<number, number>; // cq -> channel
  qps: Map<number, { pd: number; scq: number; rcq: number; srq: number }>;
  srqs: Map<number, number>; // srq -> pd
  viewKeys: Set<number>; // MRs registered with a view (each a mapping in the router)
  owner: number; // the engine's memory owner of this session (tenancy.ts)
}

export interface RdmaOptions {
  log: Logger;
  /** Bytes per second each container may send through the engine; 0 = unlimited. */
  rateLimit?: number;
  /** Cross-host: this host's address, the peer routers' addresses and the engines' TCP port. */
  hostIp?: string;
  peers?: string[];
  port?: number;
  /** The cluster key the peer engines prove (src/router/cluster-key.ts); required with peers. */
  clusterKey?: Buffer;
}

export class RdmaExtension implements RouterExtension {
  private readonly sessions = new Map<ClientSession, SessionRes>();
  private readonly usedKeys = new Set<number>();
  private readonly usedQpns = new Set<number>();
  /** Completion channels of all sessions (each holds a descriptor in the engine). */
  private channelFds = 0;
  /** Descriptors all sessions together may keep open in the router through channels: half
   * the process's limit, so that applications can never exhaust the router's descriptor table
   * (its sockets, the engine's transport, the view files it maps). */
  private readonly fdBudget = Math.max(64, Math.floor(openFileLimit() / 2));
  private readonly capWarned = new WeakSet<ClientSession>();
  private nextId = 1;
  private readonly cm: ConnectionManager;
  /** Which host each GID lives on (gid-directory.ts). */
  private readonly gids = new GidDirectory();
  private announced = { peers: '', at: 0 };
  private conflictsLogged = '';

  private readonly tenancy: Tenancy;

  constructor(private readonly opts: RdmaOptions) {
    this.tenancy = new Tenancy(opts.log);
    this.cm = new ConnectionManager(
      {
        gidOf: (session) => this.resources(session)?.gid,
        qpOwnedBy: (qpn, pid) => [...this.sessions].some(([s, r]) => s.pid === pid && r.qps.has(qpn)),
        isLocal: (ip) => [...this.sessions.values()].some((r) => wireToIpv4(r.gid) === ip),
        qpToErr: (qpn) => {
          for (const r of this.sessions.values()) if (r.qps.has(qpn)) rdma.rdmaModifyQp(qpn, 6, -1, null, -1, -1, -1);
        },
        admit: (session, holdsFd) => this.admit(session, this.sessions.get(session), holdsFd),
        ownerOf: (ip) => this.gids.ownerOf(ip),
        peerOf: (conn) => rdma.rdmaConnPeer(conn),
      },
      opts.log,
    );
    rdma.rdmaSetRate(opts.rateLimit ?? 0);
    if (opts.hostIp && opts.peers?.length) {
      if (!opts.clusterKey) throw new Error('the RDMA engines need the cluster key to reach peers');
      const efd = rdma.rdmaStartTransport(opts.hostIp, opts.port ?? RDMA_PORT, opts.peers, opts.clusterKey);
      if (efd < 0) throw new Error(`cannot start the RDMA engines' transport: ${efd}`);
      this.cm.net = {
        send: (conn, m) => rdma.rdmaCmSend(conn, Buffer.from(JSON.stringify(m))),
        peers: () => rdma.rdmaCmPeers(),
      };
      // The engine makes efd readable when connection-manager messages from peers arrive.
      if (efd >= 0)
        native.watch(efd, READABLE, () => {
          for (const { conn, data } of rdma.rdmaCmTake()) {
            try {
              const m = JSON.parse(data.toString());
              if (m?.t === 'gids') this.peerGids(conn, m.ips);
              else this.cm.onNet(conn, m);
            } catch (err) {
              opts.log.warn({ error: (err as Error).message }, 'bad RDMA CM message from a peer router');
            }
          }
        });
      // Each peer router learns which GIDs live here when its connection comes up, and again
      // every ANNOUNCE_EVERY_MS (a restarted peer, a lost message).
      setInterval(() => this.announce(), ANNOUNCE_CHECK_MS).unref();
    }
  }

  /** This host's registered addresses changed (Router: at start and on REGISTRY_CHANGED). */
  registryChanged(addresses: string[]): void {
    if (this.gids.setLocal(addresses)) this.directoryChanged();
    this.announced.at = 0;
    if (this.cm.net) this.announce(); // tell the peers now (a new container may connect at once)
  }

  private announce(): void {
    const up = rdma.rdmaCmPeers();
    const key = up.join(',');
    const now = Date.now();
    if (key === this.announced.peers && now - this.announced.at < ANNOUNCE_EVERY_MS) return;
    const ips = this.gids.localAddresses().slice(0, MAX_PEER_GIDS);
    for (const conn of up) rdma.rdmaCmSend(conn, Buffer.from(JSON.stringify({ t: 'gids', ips })));
    this.announced = { peers: key, at: now };
  }

  /** A peer router's list of the addresses registered on its host (the whole list). */
  private peerGids(conn: number, ips: unknown): void {
    const peer = rdma.rdmaConnPeer(conn);
    if (peer < 0 || !Array.isArray(ips) || ips.length > MAX_PEER_GIDS || !ips.every((ip) => typeof ip === 'string' && isIpv4(ip))) {
      this.opts.log.warn({ conn, peer }, 'rdma: malformed GID list from a peer router; ignored');
      return;
    }
    if (this.gids.setPeer(peer, (ips as string[]).map((ip) => wireToIpv4(ipv4ToWire(ip))!))) this.directoryChanged();
  }

  private directoryChanged(): void {
    rdma.rdmaSetGidOwners(this.gids.table());
    const conflicts = [...this.gids.conflicts].slice(0, 16).map(([ip, peers]) => ({ ip, peers: peers.map((p) => this.opts.peers?.[p] ?? p), local: this.gids.localAddresses().includes(ip) }));
    const text = JSON.stringify(conflicts);
    if (conflicts.length && text !== this.conflictsLogged)
      this.opts.log.warn({ conflicts, total: this.gids.conflicts.size }, 'rdma: peer routers claim GIDs of this host or of each other; those claims are refused');
    this.conflictsLogged = text;
  }

  handles(type: number): boolean {
    return (type >= MsgType.RDMA_OPEN && type <= MsgType.RDMA_DESTROY_SRQ) || this.cm.handles(type);
  }

  /** RDMA_STATS: the engine's counters, the rdma_cm listeners and, under `resources`, every
   * kind of object the router holds for applications (all 0 once they are gone). */
  stats() {
    const e = rdma.rdmaStats();
    const safety = rdma.rdmaSafetyStats();
    const held = { pds: 0, mrs: 0, cqs: 0, qps: 0, srqs: 0, channels: 0 };
    for (const r of this.sessions.values()) {
      held.pds += r.pds.size;
      held.mrs += r.mrs.size;
      held.cqs += r.cqs.size;
      held.qps += r.qps.size;
      held.srqs += r.srqs.size;
      held.channels += r.channels.size;
    }
    const cm = this.cm.held();
    const resources = {
      sessions: this.sessions.size,
      ...held,
      mrKeys: this.usedKeys.size,
      qpNumbers: this.usedQpns.size,
      channelFds: this.channelFds,
      cmIds: cm.ids,
      cmChannels: cm.channels,
      cmDestroyedChannelsOpen: cm.kept,
      cmListeners: cm.listeners,
      cmPending: cm.pending,
      cmSessions: cm.sessions,
      engineQps: e.qps,
      engineMrs: e.mrs,
      engineCqs: e.cqs,
      engineSrqs: e.srqs,
      engineChannels: e.channels,
      engineViews: e.views,
      enginePending: e.pending,
      ...this.tenancy.held(),
      engineMemOwners: safety.memOwners,
      engineDoorbellPages: safety.bellContainers,
    };
    let fds = -1;
    try {
      fds = readdirSync('/proc/self/fd').length;
    } catch {
      /* not Linux */
    }
    const limits = {
      objectsPerContainer: MAX_OBJECTS_PER_CONTAINER, fdsPerContainer: MAX_FDS_PER_CONTAINER, mappingsPerContainer: MAX_MAPPINGS_PER_CONTAINER,
      rdmaSessionsPerContainer: MAX_RDMA_SESSIONS_PER_CONTAINER, fdBudget: this.fdBudget, mappingBudget: this.tenancy.mappingBudget, destroyedChannelsOpen: KEEP_DESTROYED,
    };
    const isolation = {
      spuriousWakeups: safety.spuriousWakeups, bellMutes: safety.bellMutes, unlockedChunks: safety.unlockedChunks, ctlWaitMaxUs: safety.ctlWaitMaxUs,
      holdMaxUs: safety.holdMaxUs, mappings: this.mappings(),
    };
    return { sessions: this.sessions.size, ...e, gidConflicts: this.gids.conflicts.size, cmRefused: [...this.cm.refusals.values()].reduce((a, b) => a + b, 0), cmListeners: this.cm.listening().slice(0, 1024), fds, limits, isolation, resources };
  }

  /** Descriptors the connection manager keeps open: live event channels and destroyed ones
   * still held for their last events. */
  private cmDescriptors(): number {
    const { channels, kept } = this.cm.held();
    return channels + kept;
  }

  /** Descriptors the router keeps open for applications: channels, rdma_cm event channels,
   * and what binds sessions (pidfds, mem files, doorbell pages). */
  private routerFds(): number {
    return this.channelFds + this.cmDescriptors() + this.tenancy.fds();
  }

  /** Mappings the router holds for applications: CQ, QP and SRQ rings and MR views. */
  private mappings(res?: SessionRes): number {
    if (res) return res.cqs.size + res.qps.size + res.srqs.size + res.viewKeys.size;
    let n = 0;
    for (const r of this.sessions.values()) n += this.mappings(r);
    return n;
  }

  /** What all sessions of session's container hold together. */
  private containerHolds(session: ClientSession): { objects: number; fds: number; mappings: number } {
    let objects = 0, fds = 0, mappings = 0;
    for (const s of this.tenancy.sessionsWith(session)) {
      const r = this.sessions.get(s);
      const cm = this.cm.ownedBy(s);
      objects += (r ? this.count(r) : 0) + cm.ids + cm.channels;
      fds += (r?.channels.size ?? 0) + cm.channels;
      mappings += r ? this.mappings(r) : 0;
    }
    return { objects, fds, mappings };
  }

  /** True if the router may map one more ring or view for session's container. */
  private mayMap(session: ClientSession): boolean {
    return this.containerHolds(session).mappings < MAX_MAPPINGS_PER_CONTAINER && this.mappings() < this.tenancy.mappingBudget;
  }

  /** 0 if the session may create one more object (holdsFd: one that keeps a descriptor open
   * in the router; mapping: one the router maps), else the errno to answer: ENOMEM over
   * MAX_OBJECTS_PER_CONTAINER objects, MAX_MAPPINGS_PER_CONTAINER mappings or the router's
   * mapping budget, EMFILE over MAX_FDS_PER_CONTAINER descriptors or the router-wide budget.
   * All sessions of a container count together. */
  private admit(session: ClientSession, _res: SessionRes | undefined, holdsFd: boolean, mapping = false): number {
    const held = this.containerHolds(session);
    let errno = 0;
    if (held.objects >= MAX_OBJECTS_PER_CONTAINER) errno = ENOMEM;
    else if (holdsFd && held.fds >= MAX_FDS_PER_CONTAINER) errno = EMFILE;
    else if (holdsFd && this.routerFds() >= this.fdBudget) errno = EMFILE;
    else if (mapping && !this.mayMap(session)) errno = ENOMEM;
    if (errno && !this.capWarned.has(session)) {
      this.capWarned.add(session);
      this.opts.log.warn(
        {
          pid: session.pid, netns: this.tenancy.containerOf(session), maxObjects: MAX_OBJECTS_PER_CONTAINER, maxFds: MAX_FDS_PER_CONTAINER,
          maxMappings: MAX_MAPPINGS_PER_CONTAINER, routerFdBudget: this.fdBudget, routerMappingBudget: this.tenancy.mappingBudget, error: errno === ENOMEM ? 'ENOMEM' : 'EMFILE',
        },
        'rdma: a container reached its resource cap; further creations fail',
      );
    }
    return errno;
  }

  // Never throws: every descriptor that came with the request is closed here exactly once or
  // handed on (took), so the caller must not close any of them again.
  handle(session: ClientSession, msg: WireMsg, payload: Buffer, fds: number[]): Answer {
    const fd = fds.length ? fds[0] : -1;
    for (const extra of fds.slice(1)) native.close(extra);
    let took = false;
    try {
      if (msg.type === MsgType.RDMA_STATS) return { ...answer(0), payload: Buffer.from(JSON.stringify(this.stats())) };
      const res = this.resources(session);
      if (!res) return fail(ENODEV);
      const a = readArgs(payload);
      if (this.cm.handles(msg.type)) return this.cm.handle(session, msg, a.h, payload.subarray(FF_RDMA_ARGS_SIZE), fd, () => (took = true));
      return this.dispatch(session, res, msg, a, fd, () => (took = true));
    } catch (err) {
      this.opts.log.warn({ pid: session.pid, type: msg.type, error: (err as Error).message }, 'rdma request failed');
      return fail(EINVAL);
    } finally {
      if (fd >= 0 && !took) native.close(fd);
    }
  }

  private resources(session: ClientSession): SessionRes | undefined {
    let res = this.sessions.get(session);
    if (res) return res;
    const ip = session.ownership.overlayAddresses()[0];
    if (!ip) return undefined;
    res = {
      gid: ipv4ToWire(ip), pds: new Set(), mrs: new Map(), channels: new Set(), cqs: new Map(), qps: new Map(), srqs: new Map(),
      viewKeys: new Set(), owner: this.tenancy.join(session),
    };
    this.sessions.set(session, res);
    this.opts.log.debug({ pid: session.pid, ip }, 'rdma session');
    return res;
  }

  private count(res: SessionRes): number {
    return res.pds.size + res.mrs.size + res.channels.size + res.cqs.size + res.qps.size + res.srqs.size;
  }

  private dispatch(session: ClientSession, res: SessionRes, msg: WireMsg, a: Args, fd: number, take: () => void): Answer {
    const { h, v } = a;
    if (CREATES.has(msg.type)) {
      const maps = msg.type === MsgType.RDMA_CREATE_CQ || msg.type === MsgType.RDMA_CREATE_QP || msg.type === MsgType.RDMA_CREATE_SRQ;
      const errno = this.admit(session, res, msg.type === MsgType.RDMA_CREATE_CHANNEL, maps);
      if (errno) return fail(errno);
    }
    switch (msg.type) {
      case MsgType.RDMA_OPEN: {
        // Binds the session to its process: the pidfd of the process that connected (the
        // session closes when it exits) and the /proc/self/mem file it sent, the only way the
        // engine reaches its memory outside views (tenancy.ts). With the GID goes a descriptor
        // of the container's doorbell page (sealed memfd, struct ff_doorbells) that the library
        // rings after posting while the engine sleeps.
        if (fd >= 0) take();
        const errno = this.tenancy.bind(session, fd, this.fdBudget - this.routerFds());
        if (errno) return fail(errno);
        const bell = this.tenancy.doorbell(session);
        if (bell < 0) return fail(-bell);
        return { ...answer(0, [], (m) => res.gid.copy(m.local_addr)), fd: bell };
      }
      case MsgType.RDMA_ALLOC_PD: {
        const pd = this.nextId++;
        res.pds.add(pd);
        return answer(0, [pd]);
      }
      case MsgType.RDMA_DEALLOC_PD: {
        if (!res.pds.has(h[0])) return fail(ENOENT);
        if ([...res.mrs.values(), ...res.srqs.values()].includes(h[0]) || [...res.qps.values()].some((q) => q.pd === h[0])) return fail(EBUSY);
        res.pds.delete(h[0]);
        return answer(0);
      }
      case MsgType.RDMA_REG_MR: {
        const [pd, access] = h;
        const [addr, len, iova] = v;
        if (!res.pds.has(pd)) return fail(ENOENT);
        if (!len || len > MAX_MR || !Number.isSafeInteger(addr + len) || !Number.isSafeInteger(iova + len)) return fail(EINVAL);
        // Remote write/atomic access requires local write, as the verbs spec says.
        if ((access & (2 | 8)) && !(access & 1)) return fail(EINVAL);
        let key: number;
        do key = randomInt(1, 0xffffffff);
        while (this.usedKeys.has(key));
        // A view (part of the region in shared memory) is an optimisation: one the engine
        // refuses (unsealed file, out of range) fails the registration, as a bad argument.
        // Without a descriptor (fd -1) the engine ignores the view fields. Past the container's
        // or the router's mapping cap the region is registered without its view.
        const [, , viewPages, viewOffPages] = h;
        let viewFd = fd;
        if (fd >= 0) take();
        if (fd >= 0 && !this.mayMap(session)) {
          native.close(fd);
          viewFd = -1;
        }
        // The region must be the caller's own mapped memory; outside a view the engine reaches
        // it only through the session's mem file.
        const shared = viewFd >= 0 && v[3] <= addr && v[3] + viewPages * PAGE >= addr + len;
        const bad = this.tenancy.checkRegion(session, addr, len, access, shared);
        if (bad) {
          if (viewFd >= 0) native.close(viewFd);
          return fail(bad);
        }
        const rc = rdma.rdmaAddMr(key, pd, res.owner, addr, len, iova, access, viewFd, v[3], viewOffPages * PAGE, viewPages * PAGE);
        if (rc < 0) return fail(-rc);
        this.usedKeys.add(key);
        res.mrs.set(key, pd);
        if (viewFd >= 0) res.viewKeys.add(key);
        return answer(0, [key, key]);
      }
      case MsgType.RDMA_DEREG_MR: {
        if (!res.mrs.has(h[0])) return fail(ENOENT);
        rdma.rdmaDelMr(h[0]);
        res.mrs.delete(h[0]);
        res.viewKeys.delete(h[0]);
        this.usedKeys.delete(h[0]);
        return answer(0);
      }
      case MsgType.RDMA_CREATE_CHANNEL: {
        if (fd < 0) return fail(EINVAL);
        const id = this.nextId++;
        take();
        const rc = rdma.rdmaAddChannel(id, fd); // the engine owns (or has closed) fd now
        if (rc < 0) return fail(-rc);
        res.channels.add(id);
        this.channelFds++;
        return answer(0, [id]);
      }
      case MsgType.RDMA_DESTROY_CHANNEL: {
        if (!res.channels.has(h[0])) return fail(ENOENT);
        if ([...res.cqs.values()].includes(h[0])) return fail(EBUSY);
        rdma.rdmaDelChannel(h[0]); // closes the engine's descriptor
        res.channels.delete(h[0]);
        this.channelFds--;
        return answer(0);
      }
      case MsgType.RDMA_CREATE_CQ: {
        const [depth, channel] = h;
        if (fd < 0) return fail(EINVAL);
        if (channel && !res.channels.has(channel)) return fail(ENOENT);
        const id = this.nextId++;
        take();
        const rc = rdma.rdmaAddCq(id, fd, depth, channel);
        if (rc < 0) return fail(-rc);
        res.cqs.set(id, channel);
        return answer(0, [id]);
      }
      case MsgType.RDMA_DESTROY_CQ: {
        if (!res.cqs.has(h[0])) return fail(ENOENT);
        if ([...res.qps.values()].some((q) => q.scq === h[0] || q.rcq === h[0])) return fail(EBUSY);
        rdma.rdmaDelCq(h[0]);
        res.cqs.delete(h[0]);
        return answer(0);
      }
      case MsgType.RDMA_CREATE_SRQ: {
        const [pd, depth] = h;
        if (fd < 0) return fail(EINVAL);
        if (!res.pds.has(pd)) return fail(ENOENT);
        const id = this.nextId++;
        take();
        const rc = rdma.rdmaAddSrq(id, fd, depth, pd);
        if (rc < 0) return fail(-rc);
        res.srqs.set(id, pd);
        return answer(0, [id]);
      }
      case MsgType.RDMA_DESTROY_SRQ: {
        if (!res.srqs.has(h[0])) return fail(ENOENT);
        if ([...res.qps.values()].some((q) => q.srq === h[0])) return fail(EBUSY);
        rdma.rdmaDelSrq(h[0]);
        res.srqs.delete(h[0]);
        return answer(0);
      }
      case MsgType.RDMA_CREATE_QP: {
        const [pd, scq, rcq, type, sqd, rqd] = h;
        const srq = v[1];
        if (fd < 0) return fail(EINVAL);
        if (!res.pds.has(pd) || !res.cqs.has(scq) || !res.cqs.has(rcq)) return fail(ENOENT);
        if (srq && res.srqs.get(srq) !== pd) return fail(srq && res.srqs.has(srq) ? EINVAL : ENOENT);
        if (type !== QPT_RC && type !== QPT_UC) return fail(EOPNOTSUPP);
        const qpn = this.allocQpn();
        take();
        const rc = rdma.rdmaAddQp(qpn, res.owner, pd, scq, rcq, fd, sqd, rqd, v[0] !== 0, res.gid, srq);
        if (rc < 0) {
          this.usedQpns.delete(qpn);
          return fail(-rc);
        }
        res.qps.set(qpn, { pd, scq, rcq, srq });
        return answer(0, [qpn]);
      }
      case MsgType.RDMA_MODIFY_QP: {
        const [qpn, mask, state, dest, access, rnr] = h;
        if (!res.qps.has(qpn)) return fail(ENOENT);
        if ((mask & QP_STATE) && state > 6) return fail(EINVAL);
        const rc = rdma.rdmaModifyQp(
          qpn, state, mask & QP_DEST_QPN ? dest : -1, mask & QP_AV ? msg.remote_addr : null, mask & QP_ACCESS_FLAGS ? access & 0xff : -1,
          mask & QP_RNR_RETRY ? rnr & 7 : -1, mask & QP_MIN_RNR_TIMER ? (rnr >>> 8) & 31 : -1,
        );
        return rc < 0 ? fail(-rc) : answer(0);
      }
      case MsgType.RDMA_DESTROY_QP: {
        if (!res.qps.has(h[0])) return fail(ENOENT);
        rdma.rdmaDelQp(h[0]);
        res.qps.delete(h[0]);
        this.usedQpns.delete(h[0]);
        return answer(0);
      }
      default:
        return fail(EPERM);
    }
  }

  /** A QP number no one can predict from the numbers it got before (a counter let a
   * co-located process count its way to the number of another container's remote peer):
   * random over the 24 bits of a QP number, unique on this host, never 0 or 1 (reserved for
   * the special QPs of InfiniBand). */
  private allocQpn(): number {
    for (;;) {
      const q = randomInt(2, 0x1000000);
      if (!this.usedQpns.has(q)) {
        this.usedQpns.add(q);
        return q;
      }
    }
  }

  sessionClosed(session: ClientSession): void {
    this.cm.sessionClosed(session);
    const res = this.sessions.get(session);
    if (!res) return;
    this.sessions.delete(session);
    // QPs first: once a QP is gone its peer's next operation completes with an error.
    for (const qpn of res.qps.keys()) {
      rdma.rdmaDelQp(qpn);
      this.usedQpns.delete(qpn);
    }
    for (const srq of res.srqs.keys()) rdma.rdmaDelSrq(srq);
    for (const key of res.mrs.keys()) {
      rdma.rdmaDelMr(key);
      this.usedKeys.delete(key);
    }
    for (const cq of res.cqs.keys()) rdma.rdmaDelCq(cq);
    for (const ch of res.channels) rdma.rdmaDelChannel(ch);
    this.channelFds -= res.channels.size;
    this.tenancy.leave(session);
    this.opts.log.debug({ pid: session.pid, qps: res.qps.size, mrs: res.mrs.size }, 'rdma session closed; resources freed');
  }
}

export function createRdmaExtension(opts: RdmaOptions): RdmaExtension {
  return new RdmaExtension(opts);
}
