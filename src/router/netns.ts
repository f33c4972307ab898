// Who a caller is: the network namespace it connected from (read by the kernel, through
// SO_PEERPIDFD, when the router accepted it; native/syscalls.cc) and the overlay addresses
// registered for that namespace (src/registry/store.ts). Nothing the caller can change about
// its own namespace (an address on `lo`, a fresh `unshare -Urn`) adds an address here.
import { closeSync, fstatSync, openSync } from 'node:fs';
import type { Logger } from '../log.js';
import { readRegistrations, type Registration } from '../registry/store.js';

interface Pinned {
  reg: Registration;
  /** An open descriptor of the namespace: it cannot be freed while registered, so its inode
   * cannot be reused by a later namespace that would inherit the registration. */
  pin: number;
}

export class NetnsRegistry {
  private byIno = new Map<number, Pinned>();

  constructor(private readonly stateDir: string, private readonly log: Logger) {}

  /** Re-reads the state directory: new registrations are pinned after checking that their path
   * still names the same namespace, removed ones are released. */
  reload(): void {
    const next = new Map<number, Pinned>();
    for (const reg of readRegistrations(this.stateDir)) {
      const old = this.byIno.get(reg.ino);
      if (old && old.reg.at === reg.at) {
        next.set(reg.ino, old);
        continue;
      }
      const pin = pinNamespace(reg);
      if (pin < 0) {
        this.log.warn({ netns: reg.netns, ino: reg.ino, ips: reg.ips }, 'registered network namespace is gone or replaced; ignoring its registration');
        continue;
      }
      next.set(reg.ino, { reg, pin });
      this.log.info({ netns: reg.netns, ino: reg.ino, ips: reg.ips, network: reg.network }, 'network namespace registered');
    }
    // Release every pin the new map does not keep (replaced or removed registrations).
    for (const [ino, p] of this.byIno) {
      if (next.get(ino) === p) continue;
      if (!next.has(ino)) this.log.info({ netns: p.reg.netns, ino, ips: p.reg.ips }, 'network namespace unregistered');
      closeSync(p.pin);
    }
    this.byIno = next;
  }

  addressesOf(ino: number): string[] | undefined {
    return this.byIno.get(ino)?.reg.ips;
  }

  list(): Registration[] {
    return [...this.byIno.values()].map((p) => p.reg);
  }

  close(): void {
    for (const p of this.byIno.values()) closeSync(p.pin);
    this.byIno.clear();
  }
}

function pinNamespace(reg: Registration): number {
  let fd = -1;
  try {
    fd = openSync(reg.netns, 'r');
    if (fstatSync(fd).ino === reg.ino) return fd;
  } catch {
    /* gone */
  }
  if (fd >= 0) closeSync(fd);
  return -1;
}

/** One session's view: the addresses registered for the namespace it connected from. Looked up
 * at every request, so a registration made after the process connected counts at once and an
 * unregistration revokes at once. */
export class NetnsOwnership {
  constructor(private readonly registry: NetnsRegistry, readonly netnsIno: number) {}

  get registered(): boolean {
    return this.netnsIno !== 0 && this.registry.addressesOf(this.netnsIno) !== undefined;
  }

  owns(ip: string): boolean {
    return this.overlayAddresses().includes(ip);
  }

  /** The namespace's registered overlay addresses (what a wildcard listener listens on). */
  overlayAddresses(): string[] {
    return (this.netnsIno && this.registry.addressesOf(this.netnsIno)) || [];
  }
}
