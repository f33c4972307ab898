// RDMA mode, tenant isolation on the control path (docs/security-rdma-memory.md): which
// container (network namespace) each router session belongs to, what binds a session to its
// process, and the caps that hold for a container across all of its sessions.
//
// - A session is bound at RDMA_OPEN to the process that connected (a pidfd from SO_PEERPIDFD,
//   pinned by the kernel at connect()) and to the /proc/self/mem file that process sends: the
//   engine reaches memory outside MR views only through that file, which stays tied to the
//   process's address space (native/rdma/memory.h). When the process exits the session is
//   closed and everything it held freed, whoever still holds its socket.
// - An MR must lie in memory mapped in the calling process (readable, and writable when it
//   grants local write), as ibv_reg_mr on a NIC fails with EFAULT otherwise.
// - Each container has its own doorbell page (native/rdma/doorbells.h).
// - Caps count everything a container's sessions hold together (MAX_*_PER_CONTAINER below).
import { readFileSync } from 'node:fs';
import type { Logger } from '../../log.js';
import { native, READABLE } from '../../native.js';
import type { ClientSession } from '../client-session.js';

/** Objects one container may hold over all its sessions, of every kind together (PDs, MRs, CQs,
 * QPs, SRQs, completion channels, rdma_cm ids and event channels); one more fails with ENOMEM. */
export const MAX_OBJECTS_PER_CONTAINER = 65536;
/** Of those, the ones that keep a descriptor open in the router (completion channels and live
 * rdma_cm event channels); one more fails with EMFILE. */
export const MAX_FDS_PER_CONTAINER = 1024;
/** Of those, the ones the router maps (CQ, QP and SRQ rings; MR views): one more ring fails with
 * ENOMEM, one more MR is registered without a view (it still works, through the mem file). */
export const MAX_MAPPINGS_PER_CONTAINER = 8192;
/** Sessions of one container bound at RDMA_OPEN (each keeps a pidfd and a mem file open). */
export const MAX_RDMA_SESSIONS_PER_CONTAINER = 256;

const ESRCH = 3, EINVAL = 22, EMFILE = 24, EFAULT = 14;

interface TenancyNative {
  rdmaDoorbell(container: number): number;
  rdmaDoorbellDrop(container: number): void;
  rdmaAddMemOwner(owner: number, container: number): number;
  rdmaSetMemOwner(owner: number, fd: number): number;
  rdmaDelMemOwner(owner: number): void;
  rdmaPeerPidfd(sessionFd: number): number;
  rdmaPidfdAlive(pidfd: number): boolean;
}
const rdma = native as unknown as TenancyNative;

interface Binding {
  /** The engine's memory owner of this session (Mr::pid, Qp::pid in native/rdma/engine.cc). */
  owner: number;
  pidfd: number;
  watch: number;
  /** The process sent a mem file the engine accepted. */
  mem: boolean;
}

interface Container {
  sessions: Set<ClientSession>;
  bound: number;
  /** The engine made this container's doorbell page. */
  bell: boolean;
}

/** Mappings the router may make for applications in all: half of vm.max_map_count, so the
 * router's own (heap, libraries, transport) always find room. */
function mappingBudget(): number {
  try {
    return Math.max(1024, Math.floor(Number(readFileSync('/proc/sys/vm/max_map_count', 'utf8')) / 2));
  } catch {
    return 32765;
  }
}

/** True if [addr, addr+len) is mapped in process pid without gaps, readable, and writable if
 * `write` (from /proc/<pid>/maps, which lists mappings in address order). */
export function mappedIn(pid: number, addr: number, len: number, write: boolean): boolean {
  let maps: string;
  try {
    maps = readFileSync(`/proc/${pid}/maps`, 'latin1');
  } catch {
    return false;
  }
  const end = addr + len;
  let covered = addr;
  for (const line of maps.split('\n')) {
    const m = /^([0-9a-f]+)-([0-9a-f]+) (\S{4})/.exec(line);
    if (!m) continue;
    const lo = parseInt(m[1], 16), hi = parseInt(m[2], 16);
    if (hi <= covered) continue;
    if (lo > covered || m[3][0] !== 'r' || (write && m[3][1] !== 'w')) return false;
    covered = hi;
    if (covered >= end) return true;
  }
  return false;
}

export class Tenancy {
  private readonly containers = new Map<number, Container>();
  private readonly bindings = new Map<ClientSession, Binding>();
  private nextOwner = 1;
  readonly mappingBudget = mappingBudget();

  constructor(private readonly log: Logger) {}

  /** The container of a session: the network namespace it connected from. */
  containerOf(session: ClientSession): number {
    return session.ownership.netnsIno;
  }

  /** The sessions of session's container that hold RDMA resources (session's included). */
  sessionsWith(session: ClientSession): Iterable<ClientSession> {
    return this.containers.get(this.containerOf(session))?.sessions ?? [session];
  }

  /** A session starts holding RDMA resources: it gets a memory owner (no memory reachable
   * outside views until bind). */
  join(session: ClientSession): number {
    const ino = this.containerOf(session);
    let c = this.containers.get(ino);
    if (!c) this.containers.set(ino, (c = { sessions: new Set(), bound: 0, bell: false }));
    c.sessions.add(session);
    const owner = this.nextOwner;
    this.nextOwner = this.nextOwner >= 0x7ffffffe ? 1 : this.nextOwner + 1;
    rdma.rdmaAddMemOwner(owner, ino);
    this.bindings.set(session, { owner, pidfd: -1, watch: 0, mem: false });
    return owner;
  }

  owner(session: ClientSession): number {
    return this.bindings.get(session)?.owner ?? 0;
  }

  bound(session: ClientSession): boolean {
    return (this.bindings.get(session)?.pidfd ?? -1) >= 0;
  }

  /** RDMA_OPEN: binds the session to the process that connected (once) and to the mem file it
   * sent (memFd, -1 if none; taken over here). fdsFree: descriptors the router-wide budget has
   * left. Returns 0 or an errno. */
  bind(session: ClientSession, memFd: number, fdsFree: number): number {
    const b = this.bindings.get(session);
    const c = this.containers.get(this.containerOf(session));
    if (!b || !c) {
      if (memFd >= 0) native.close(memFd);
      return EINVAL;
    }
    if (b.pidfd < 0) {
      if (c.bound >= MAX_RDMA_SESSIONS_PER_CONTAINER || fdsFree < 2) {
        if (memFd >= 0) native.close(memFd);
        return EMFILE;
      }
      const pidfd = rdma.rdmaPeerPidfd(session.fd);
      if (pidfd < 0) {
        // The process that connected is gone: whoever holds its connection now gets nothing.
        if (memFd >= 0) native.close(memFd);
        return ESRCH;
      }
      b.pidfd = pidfd;
      c.bound++;
      b.watch = native.watch(pidfd, READABLE, () => {
        this.log.info({ pid: session.pid }, 'rdma: the process of a session exited; closing the session and freeing what it held');
        session.close();
      });
    }
    if (memFd < 0 || b.mem) {
      if (memFd >= 0) native.close(memFd);
      return 0;
    }
    const rc = rdma.rdmaSetMemOwner(b.owner, memFd); // takes memFd (closes it on failure)
    if (rc < 0) return -rc;
    b.mem = true;
    return 0;
  }

  /** A descriptor of the container's doorbell page for RDMA_OPEN, or -errno. */
  doorbell(session: ClientSession): number {
    const ino = this.containerOf(session);
    const c = this.containers.get(ino);
    if (!c) return -EINVAL;
    const fd = rdma.rdmaDoorbell(ino);
    if (fd >= 0) c.bell = true;
    return fd;
  }

  /** 0 if [addr, addr+len) may be registered by session with `access` (fullyShared: a view
   * covers all of it), else EFAULT (not the caller's memory, or outside a view without a mem
   * file) or ESRCH (the caller is gone). */
  checkRegion(session: ClientSession, addr: number, len: number, access: number, fullyShared: boolean): number {
    const b = this.bindings.get(session);
    if (!fullyShared && !b?.mem) return EFAULT;
    if (!mappedIn(session.pid, addr, len, (access & 1) !== 0)) return EFAULT;
    // The maps read were the caller's only if its pid was not reused meanwhile.
    if (b && b.pidfd >= 0 && !rdma.rdmaPidfdAlive(b.pidfd)) return ESRCH;
    return 0;
  }

  /** The session is gone (its resources are freed already): its owner, pidfd and, with the
   * container's last session, the doorbell page. */
  leave(session: ClientSession): void {
    const b = this.bindings.get(session);
    const ino = this.containerOf(session);
    const c = this.containers.get(ino);
    if (b) {
      this.bindings.delete(session);
      if (b.pidfd >= 0) {
        native.unwatch(b.watch);
        native.close(b.pidfd);
        if (c) c.bound--;
      }
      rdma.rdmaDelMemOwner(b.owner);
    }
    if (!c) return;
    c.sessions.delete(session);
    if (c.sessions.size) return;
    if (c.bell) rdma.rdmaDoorbellDrop(ino);
    this.containers.delete(ino);
  }

  /** Descriptors the bindings keep open in the router (pidfds, mem files, doorbell pages). */
  fds(): number {
    let n = 0;
    for (const b of this.bindings.values()) n += (b.pidfd >= 0 ? 1 : 0) + (b.mem ? 1 : 0);
    for (const c of this.containers.values()) n += c.bell ? 1 : 0;
    return n;
  }

  held(): { containers: number; pidfds: number; memFiles: number; doorbellPages: number } {
    let pidfds = 0, memFiles = 0, doorbellPages = 0;
    for (const b of this.bindings.values()) {
      pidfds += b.pidfd >= 0 ? 1 : 0;
      memFiles += b.mem ? 1 : 0;
    }
    for (const c of this.containers.values()) doorbellPages += c.bell ? 1 : 0;
    return { containers: this.containers.size, pidfds, memFiles, doorbellPages };
  }
}
