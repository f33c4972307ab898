// Which IPv4 addresses belong to a process's network namespace, read from /proc/<pid>/net
// (which shows the namespace of that process). The router uses it to refuse overlay addresses
// a container does not own: a container cannot listen or connect as another container.
import { readFileSync } from 'node:fs';

/** Parses /proc/net/fib_trie: an address followed by a "/32 host LOCAL" leaf is local. */
export function parseLocalAddresses(fibTrie: string): Set<string> {
  const out = new Set<string>();
  const lines = fibTrie.split('\n');
  for (let i = 0; i < lines.length - 1; i++) {
    const m = /^[\s|]*[|+]-- (\d+\.\d+\.\d+\.\d+)\s*$/.exec(lines[i]);
    if (m && /\/32 host LOCAL/.test(lines[i + 1])) out.add(m[1]);
  }
  return out;
}

export function localAddressesOf(pid: number): Set<string> {
  try {
    return parseLocalAddresses(readFileSync(`/proc/${pid}/net/fib_trie`, 'utf8'));
  } catch {
    return new Set();
  }
}

const MISS_REREAD_MS = 1000;

/** Per-process cache; re-reads on a miss (at most once a second, so a client repeating a
 * refused request cannot make the router read /proc in a loop) to accept new addresses. */
export class NetnsOwnership {
  private addrs: Set<string> | undefined;
  private readAt = 0;
  constructor(private readonly pid: number) {}

  owns(ip: string): boolean {
    if (this.addrs?.has(ip)) return true;
    if (this.addrs && Date.now() - this.readAt < MISS_REREAD_MS) return false;
    this.addrs = localAddressesOf(this.pid);
    this.readAt = Date.now();
    return this.addrs.has(ip);
  }

  /** The namespace's own non-loopback addresses (what a wildcard listener listens on). */
  overlayAddresses(): string[] {
    if (!this.addrs) {
      this.addrs = localAddressesOf(this.pid);
      this.readAt = Date.now();
    }
    return [...this.addrs].filter((a) => !a.startsWith('127.'));
  }
}
