// One router per host, in the host network namespace: serves the FreeFlow socket
// (FFR_SOCKET_DIR/FFR_NAME.sock) to containers and joins the other routers' directory.
import { statSync } from 'node:fs';
import { join } from 'node:path';
import type { Logger } from '../log.js';
import { native, EAGAIN, EEXIST, HOST_SOCKET_GUARD_OBJECT, READABLE, errnoText } from '../native.js';
import { ClientSession } from './client-session.js';
import { checkSocketDir } from './socket-dir.js';
import { ACCEPT_PAUSE_MS, OncePerInterval, PerContainer, SESSIONS_PER_CONTAINER, TurnBudget, UNREGISTERED } from './tenant-caps.js';
import { NetnsOwnership, NetnsRegistry } from './netns.js';
import { ensurePrivateDir } from '../registry/store.js';
import { HostEndpoints } from './host-endpoints.js';
import { PeerMesh } from './peer-mesh.js';
import { ListenerFence, ROUTER_SOCKET_MARK } from './listener-fence.js';
import { RequestDispatcher, type RouterExtension } from './requests.js';
import { ConnectionLog } from './status.js';

export interface RouterOptions {
  name: string;
  socketDir: string;
  /** Root-only directory of the namespace registry (src/registry/store.ts); never shared with containers. */
  stateDir: string;
  hostIp: string;
  peers: string[];
  peerPort: number;
  /** The cluster key the peers prove (src/router/cluster-key.ts); required with peers. */
  clusterKey?: Buffer;
  log: Logger;
}

/** Entries of each list in a STATUS reply: the reply is one SEQPACKET message, which must fit
 * the socket's send buffer (~200 KiB by default); the totals are reported beside them. */
const STATUS_LIST_MAX = 500;
/** The caps, kept in one place with why each number: tenant-caps.ts. */
export { SESSIONS_PER_CONTAINER as MAX_SESSIONS_PER_CONTAINER } from './tenant-caps.js';

export function socketPath(dir: string, name: string): string {
  return join(dir, `${name}.sock`);
}

export class Router {
  readonly connections = new ConnectionLog();
  private readonly sessions = new Set<ClientSession>();
  private readonly extensions: RouterExtension[] = [];
  private readonly mesh: PeerMesh;
  private readonly endpoints: HostEndpoints;
  private readonly dispatcher: RequestDispatcher;
  private readonly registry: NetnsRegistry;
  private readonly fence: ListenerFence;
  /** The router's own network namespace: root callers from it may tell it the registry changed. */
  private readonly hostNetns = statSync('/proc/self/ns/net').ino;
  private serverFd = -1;
  private serverWatch = 0;
  /** Router connections per container (tenant-caps.ts). */
  private readonly sessionsOf = new PerContainer(SESSIONS_PER_CONTAINER);
  private readonly limitLog = new OncePerInterval();
  /** Requests answered per container per turn of the event loop (fair draining). */
  private readonly turns = new TurnBudget();
  /** Accept pauses since the last successful accept (an EMFILE episode is logged once). */
  private acceptPauses = 0;
  private pauseTimer?: NodeJS.Timeout;
  readonly path: string;

  constructor(private readonly opts: RouterOptions) {
    this.path = socketPath(opts.socketDir, opts.name);
    this.mesh = new PeerMesh({ hostIp: opts.hostIp, port: opts.peerPort, peers: opts.peers, key: opts.clusterKey, log: opts.log });
    this.endpoints = new HostEndpoints(this.mesh, opts.log);
    this.registry = new NetnsRegistry(opts.stateDir, opts.log);
    this.fence = new ListenerFence(opts.name, this.mesh, opts.log);
    this.mesh.onAnnouncements((records, fromIp) => this.endpoints.expect(records, fromIp));
    this.dispatcher = new RequestDispatcher({
      hostIp: opts.hostIp,
      directory: this.mesh,
      announcer: this.mesh,
      endpoints: this.endpoints,
      fence: this.fence,
      connections: this.connections,
      status: () => this.status(),
      reloadRegistry: (session) => this.reloadRegistry(session),
      log: opts.log,
    });
  }

  async start(): Promise<void> {
    checkSocketDir(this.opts.socketDir, this.path);
    ensurePrivateDir(this.opts.stateDir);
    // Read before serving: a registration written while the router was down counts at once.
    this.registry.reload();
    this.registryChanged();
    this.fence.start();
    native.setHostSocketMark(ROUTER_SOCKET_MARK);
    // No host socket may leave the router unless it can reach only its endpoint (docs/security.md).
    const guard = native.guard.start(HOST_SOCKET_GUARD_OBJECT);
    if (guard) throw new Error(`cannot start the host socket guard: ${guard}. The router needs root (CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN for cgroups), cgroup v2 and a build with clang (npm run build)`);
    await this.mesh.start();
    const fd = native.seqpacketListen(this.path, 0o777);
    if (fd < 0 && fd === -EEXIST) throw new Error(`cannot serve ${this.path}: something that is not a socket is there (a planted link or file?); remove it and start again`);
    if (fd < 0) throw new Error(`cannot serve ${this.path}: ${errnoText(fd)}`);
    this.serverFd = fd;
    this.serverWatch = native.watch(fd, READABLE, () => this.acceptClients());
    this.opts.log.info({ socket: this.path, hostIp: this.opts.hostIp, peers: this.opts.peers }, 'router started');
  }

  stop(): void {
    clearTimeout(this.pauseTimer);
    native.unwatch(this.serverWatch);
    native.close(this.serverFd);
    this.serverFd = -1;
    for (const s of [...this.sessions]) s.close();
    this.endpoints.closeAll();
    this.mesh.close();
    this.registry.close();
    this.fence.stop();
    native.guard.stop();
  }

  /** REGISTRY_CHANGED: only root in the router's own namespace (the host's) may ask, so a
   * container cannot make the router re-read the directory in a loop. */
  private reloadRegistry(session: ClientSession): boolean {
    if (session.uid !== 0 || session.ownership.netnsIno !== this.hostNetns) return false;
    this.registry.reload();
    this.registryChanged();
    return true;
  }

  private registryChanged(): void {
    const addresses = this.registry.list().flatMap((r) => r.ips);
    for (const ext of this.extensions) ext.registryChanged?.(addresses);
  }

  /** Serves another feature (RDMA mode) on the same socket; see RouterExtension. */
  addExtension(ext: RouterExtension): void {
    this.extensions.push(ext);
    this.dispatcher.addExtension(ext);
  }

  get hostIp(): string {
    return this.opts.hostIp;
  }

  status(): unknown {
    const accepts = this.endpoints.stats();
    const listeners = this.endpoints.list();
    const directory = this.mesh.entries();
    const acceptRecords = accepts.recent.map((r) => ({ at: new Date(r.atMs).toISOString(), role: 'accept', path: 'host-network', src: r.src, dst: r.dst, host: r.host }));
    return {
      name: this.opts.name,
      socket: this.path,
      hostIp: this.opts.hostIp,
      pid: process.pid,
      peers: this.mesh.peerStates(),
      clients: this.sessions.size,
      registered: this.registry.list().slice(0, STATUS_LIST_MAX).map((r) => ({ netns: r.netns, ino: r.ino, ips: r.ips, network: r.network })),
      listeners: listeners.slice(0, STATUS_LIST_MAX).map((l) => ({ host: `${this.opts.hostIp}:${l.hostPort}`, overlay: l.records.map((r) => `${r.overlayIp}:${r.port}`) })),
      listenersTotal: listeners.length,
      directory: directory.slice(0, STATUS_LIST_MAX).map((d) => ({ ...d, fenced: this.fence.has(d) })),
      directoryTotal: directory.length,
      pairing: { announced: accepts.announced, parked: accepts.parked },
      counters: { ...this.connections.counters, 'accept:host-network': accepts.delivered, 'accept:admitted-by-library': accepts.admitted, 'accept:refused-unannounced': accepts.refused },
      connections: [...this.connections.list(), ...acceptRecords].sort((a, b) => a.at.localeCompare(b.at)).slice(-256),
    };
  }

  private acceptClients(): void {
    for (;;) {
      const c = native.acceptUnix(this.serverFd);
      if (typeof c === 'number') {
        if (c === -EAGAIN) return;
        if (this.acceptPauses++ === 0) this.opts.log.warn({ error: errnoText(c), pauseMs: ACCEPT_PAUSE_MS }, 'accept on router socket failed; pausing accepts until it works again (logged once)');
        this.pauseAccepting();
        return;
      }
      if (this.acceptPauses) {
        this.opts.log.info({ pauses: this.acceptPauses }, 'accepting router connections again');
        this.acceptPauses = 0;
      }
      const container = this.containerOf(c.netns);
      if (!this.sessionsOf.take(container)) {
        native.close(c.fd);
        if (this.limitLog.due(container)) {
          this.opts.log.warn({ pid: c.pid, netns: c.netns, limit: SESSIONS_PER_CONTAINER, unregistered: container === UNREGISTERED }, 'too many router connections from one container; closing the new ones (logged at most every 10 s)');
        }
        continue;
      }
      const peer = { pid: c.pid, uid: c.uid, ownership: new NetnsOwnership(this.registry, c.netns) };
      const s = new ClientSession(c.fd, peer, this.dispatcher, this.opts.log, (gone) => {
        this.sessions.delete(gone);
        this.sessionsOf.release(container);
      }, { turns: this.turns, container });
      this.sessions.add(s);
      s.start();
    }
  }

  /** Whom a router connection counts against: its registered namespace or the router's own, else
   * all unregistered callers together (a new namespace brings no new allowance; tenant-caps.ts). */
  private containerOf(netns: number): number {
    if (netns && (netns === this.hostNetns || this.registry.addressesOf(netns))) return netns;
    return UNREGISTERED;
  }

  /** EMFILE, ENFILE, ENOMEM: stop watching the socket for a while instead of spinning on it (the
   * pending connection keeps it readable). */
  private pauseAccepting(): void {
    native.unwatch(this.serverWatch);
    this.serverWatch = 0;
    // Not unref'd: while paused this timer may be all that keeps the event loop alive (with no
    // sessions left and no peers, an unref'd one let the router exit with status 0 mid-pause).
    this.pauseTimer = setTimeout(() => {
      this.pauseTimer = undefined;
      if (this.serverFd >= 0 && !this.serverWatch) this.serverWatch = native.watch(this.serverFd, READABLE, () => this.acceptClients());
    }, ACCEPT_PAUSE_MS);
  }
}
