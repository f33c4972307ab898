// What one container may hold of the router, in one place, and the per-container accounting
// behind it. A container is its network namespace: the inode the kernel reported for the caller
// when the router accepted its connection (SO_PEERPIDFD, src/router/netns.ts), never anything
// the caller says. Caps count per container, not per router connection, because a container
// can open as many router connections as it likes. docs/security.md ("No tenant can hold or
// starve the router") says what each guarantees and how it is tested.

/** Router connections (sessions) one container may hold at once. A process holds one (the
 * library opens it lazily and a forked child opens its own), so this is "processes of one
 * container using FreeFlow at the same moment": nginx with its workers, a pre-forking server, a
 * shell loop of short-lived clients all fit. Each costs the router a descriptor, a watch and a
 * session object; 256 per container keeps a host of hundreds of containers far below the
 * router's descriptor limit (Node raises it to the hard limit, 2^19 or 2^20 on common hosts).
 * Beyond it a new connection is closed right after accept, which the library treats as "no
 * router": the plain overlay. */
export const SESSIONS_PER_CONTAINER = 256;

/** Accelerated listeners one container may hold across all its sessions. Each costs the router a
 * host listener, an accept channel (two descriptors) and a 256 KiB admission table (a memfd,
 * whose pages exist once written): 1024 is far above what a service listens on, and bounds a
 * container to ~2048 descriptors and 256 MiB of tables. Beyond it: FALLBACK/LIMIT, the plain
 * overlay for that listener. */
export const LISTENERS_PER_CONTAINER = 1024;

/** Requests answered per turn of the event loop for one session, and for one container across
 * all its sessions (TurnBudget), before every other session with requests waiting gets its turn
 * (the watch is level-triggered: the rest is read on the next turn). Per container too, since a
 * container may hold 256 sessions: per session alone, 256 flooding sessions would make another
 * container wait 256 x 64 requests a turn. A CONNECT costs the router some 10-40 us, so each
 * flooding container delays another's request by ~1-3 ms per turn at most, while a batch this
 * size still amortizes the wake-up. */
export const MESSAGES_PER_TURN = 64;

/** After EMFILE, ENFILE or ENOMEM accepting a router connection: stop watching the router socket
 * this long. The pending connection keeps the socket readable, so without a pause the loop would
 * be woken again at once, forever (100% CPU while out of descriptors). 100 ms is 10 attempts a
 * second at most, and far below the library's 2 s wait for its router, so callers waiting in
 * the backlog are served soon after descriptors are free again. */
export const ACCEPT_PAUSE_MS = 100;

/** A limit hit is logged at most once per container per interval, not once per attempt (a
 * container can make thousands of attempts a second; the log must not become the attack). */
export const LIMIT_LOG_INTERVAL_MS = 10_000;

/** The key under which callers whose network namespace is unknown or not registered are counted:
 * all of them together are one container. They only ever get fallback answers, and a process
 * can make new network namespaces (unshare -n) at will, so each new namespace must not bring a
 * fresh allowance. Registered namespaces, and the router's own (root's freeflow register and
 * status on the host), are counted by their inode. */
export const UNREGISTERED = 0;

/** Counts what each container holds of one resource, against one cap. */
export class PerContainer {
  private readonly held = new Map<number, number>();

  constructor(readonly cap: number) {}

  count(container: number): number {
    return this.held.get(container) ?? 0;
  }

  /** Takes one unit for container; false (and nothing taken) if it already holds cap. */
  take(container: number): boolean {
    const n = this.count(container);
    if (n >= this.cap) return false;
    this.held.set(container, n + 1);
    return true;
  }

  /** Gives back one unit taken with take(). */
  release(container: number): void {
    const n = this.count(container) - 1;
    if (n > 0) this.held.set(container, n);
    else this.held.delete(container);
  }

  /** Containers holding anything. */
  get containers(): number {
    return this.held.size;
  }
}

/** Requests answered per container in the current turn of the event loop (fair draining across
 * containers; a session asks before each request it reads). Forgotten at the end of each turn. */
export class TurnBudget {
  private readonly used = new Map<number, number>();
  private clearing = false;

  constructor(readonly perTurn = MESSAGES_PER_TURN) {}

  /** True if container may have one more request answered in this turn. */
  has(container: number): boolean {
    return (this.used.get(container) ?? 0) < this.perTurn;
  }

  spend(container: number): void {
    this.used.set(container, (this.used.get(container) ?? 0) + 1);
    if (this.clearing) return;
    this.clearing = true;
    // Runs after this turn's poll callbacks: every waiting session had its wake-up by then.
    setImmediate(() => {
      this.used.clear();
      this.clearing = false;
    });
  }
}

/** True at most once per key per interval: for "limit hit" log lines. */
export class OncePerInterval {
  private readonly last = new Map<number, number>();

  constructor(private readonly intervalMs = LIMIT_LOG_INTERVAL_MS) {}

  due(key: number, now = Date.now()): boolean {
    const at = this.last.get(key);
    if (at !== undefined && now - at < this.intervalMs) return false;
    if (this.last.size >= 4096) for (const [k, t] of this.last) if (now - t >= this.intervalMs) this.last.delete(k);
    this.last.set(key, now);
    return true;
  }
}
