// Which host each RDMA GID (a container's IPv4-mapped overlay address) lives on, from the
// registrations: this host's registry (src/registry, what the CNI plugin or `freeflow register`
// wrote), and what each peer router announces of its own registry over the engines' transport
// ({t: 'gids', ips} messages, see extension.ts). A peer router speaks only for its own host, so:
//   - an address registered here is never taken from a peer;
//   - an address two peers claim belongs to neither (refused until one stops claiming it): a
//     lying router can deny service to addresses it claims, but never take their traffic;
//   - a peer's announcement replaces its previous one (an unregistered container disappears).
// The engine (native/rdma/engine.cc, SetGidOwners) asks only the owner's router where a QP is
// and takes requests naming a source GID only from its owner's router; the connection manager
// (cm.ts) does the same for rdma_cm messages.
import { ipv4ToWire } from '../../protocol/codec.js';

/** True if v is a dotted IPv4 address (what a registration holds). */
export function isIpv4(v: string): boolean {
  try {
    ipv4ToWire(v);
    return true;
  } catch {
    return false;
  }
}

/** Owner of an address: this host, or the index of a peer router in --peers. */
export const LOCAL = -1;
/** Addresses a peer may announce (its message is at most 1 MiB of JSON anyway). */
export const MAX_PEER_GIDS = 65536;

export class GidDirectory {
  private local = new Set<string>();
  private readonly peers = new Map<number, Set<string>>();
  private owners = new Map<string, number>();
  /** Claims refused at the last computation: address -> the peers that claimed it. */
  conflicts = new Map<string, number[]>();

  /** This host's registered addresses; true if the directory changed. */
  setLocal(ips: Iterable<string>): boolean {
    const next = new Set(ips);
    if (next.size === this.local.size && [...next].every((ip) => this.local.has(ip))) return false;
    this.local = next;
    return this.compute();
  }

  /** What peer router `peer` announced (its whole list); true if the directory changed. */
  setPeer(peer: number, ips: Iterable<string>): boolean {
    const next = new Set(ips);
    const old = this.peers.get(peer);
    if (old && next.size === old.size && [...next].every((ip) => old.has(ip))) return false;
    this.peers.set(peer, next);
    return this.compute();
  }

  /** LOCAL, a peer's index, or undefined (nobody, or disputed). */
  ownerOf(ip: string): number | undefined {
    return this.owners.get(ip);
  }

  localAddresses(): string[] {
    return [...this.local];
  }

  get size(): number {
    return this.owners.size;
  }

  /** The engine's table: per address its GID (16 bytes) and owner (int32 LE). */
  table(): Buffer {
    const b = Buffer.alloc(20 * this.owners.size);
    let o = 0;
    for (const [ip, owner] of this.owners) {
      ipv4ToWire(ip).copy(b, o);
      b.writeInt32LE(owner, o + 16);
      o += 20;
    }
    return b;
  }

  private compute(): boolean {
    const owners = new Map<string, number>();
    const claims = new Map<string, number[]>();
    for (const ip of this.local) owners.set(ip, LOCAL);
    for (const [peer, ips] of this.peers)
      for (const ip of ips) {
        const c = claims.get(ip);
        if (c) c.push(peer);
        else claims.set(ip, [peer]);
      }
    const conflicts = new Map<string, number[]>();
    for (const [ip, by] of claims) {
      if (owners.has(ip) || by.length > 1) conflicts.set(ip, by);
      else owners.set(ip, by[0]);
    }
    const changed = owners.size !== this.owners.size || [...owners].some(([ip, o]) => this.owners.get(ip) !== o);
    this.owners = owners;
    this.conflicts = conflicts;
    return changed;
  }
}
