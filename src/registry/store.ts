// The registry of container network namespaces: which overlay addresses each namespace was
// given by the network plugin. It is the router's only source of identity (docs/security.md):
// a container's own view of its addresses (what it put on `lo`, what a fresh `unshare -Urn`
// namespace holds) counts for nothing. Written by root on the host (`freeflow register`, the
// CNI plugin), one file per namespace in the router's state directory, which containers never
// see; read by the router at start and whenever a writer tells it the registry changed.
import { closeSync, constants, fstatSync, lstatSync, mkdirSync, openSync, readdirSync, readFileSync, renameSync, statSync, statfsSync, unlinkSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { isIPv4 } from 'node:net';

/** statfs magic of nsfs, the file system of namespace files (/run/netns/X, /proc/PID/ns/net). */
const NSFS_MAGIC = 0x6e736673;

export interface Registration {
  /** The namespace file given at registration (a path; kept to re-check the namespace at start). */
  netns: string;
  /** The namespace's identity as the kernel sees it: its nsfs inode. */
  ino: number;
  /** IPv4 overlay addresses the network plugin assigned. */
  ips: string[];
  /** The overlay network's name (CNI's network name); addresses are unique within one. */
  network: string;
  /** The container runtime's id, when registered by the CNI plugin (lets DEL work without the netns). */
  containerId?: string;
  at: string;
}

export class RegistryError extends Error {}

export function defaultStateDir(name: string): string {
  return `/run/freeflow/${name}`;
}

function netnsDir(stateDir: string): string {
  return join(stateDir, 'netns');
}

/** The nsfs inode of a network namespace file; throws RegistryError if it is not one. */
export function netnsInode(path: string): number {
  let st;
  try {
    st = statSync(path);
  } catch (err) {
    throw new RegistryError(`cannot read network namespace ${path}: ${(err as Error).message}`);
  }
  let magic = 0;
  try {
    magic = Number(statfsSync(path).type);
  } catch {
    /* reported below */
  }
  if (magic !== NSFS_MAGIC) throw new RegistryError(`${path} is not a network namespace file (such as /run/netns/NAME or /proc/PID/ns/net)`);
  return st.ino;
}

/** Creates dir (and parents) as root-only, refusing a symlink or a directory others can write:
 * whoever can write the registry can be any container. */
export function ensurePrivateDir(dir: string): void {
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  const st = lstatSync(dir);
  if (!st.isDirectory()) throw new RegistryError(`${dir} is not a directory (a symlink is refused)`);
  if (st.uid !== 0 && process.getuid?.() === 0) throw new RegistryError(`${dir} is owned by uid ${st.uid}, not root`);
  if (st.mode & 0o022) throw new RegistryError(`${dir} is writable by group or others (mode ${(st.mode & 0o777).toString(8)}); chmod go-w it`);
}

export function parseIps(list: string[]): string[] {
  const ips = list.flatMap((x) => x.split(',')).map((x) => x.trim()).filter(Boolean);
  for (const ip of ips) if (!isIPv4(ip)) throw new RegistryError(`not an IPv4 address: ${ip}`);
  if (!ips.length) throw new RegistryError('at least one address is needed');
  return [...new Set(ips)];
}

function parseRegistration(text: string): Registration | undefined {
  try {
    const r = JSON.parse(text);
    if (typeof r.netns !== 'string' || !Number.isSafeInteger(r.ino) || !Array.isArray(r.ips) || typeof r.network !== 'string') return undefined;
    if (!r.ips.every((ip: unknown) => typeof ip === 'string' && isIPv4(ip))) return undefined;
    return r as Registration;
  } catch {
    return undefined;
  }
}

/** All registrations on file (unreadable or malformed files are skipped). */
export function readRegistrations(stateDir: string): Registration[] {
  const dir = netnsDir(stateDir);
  let names: string[];
  try {
    names = readdirSync(dir);
  } catch {
    return [];
  }
  const out: Registration[] = [];
  for (const n of names) {
    if (!/^\d+\.json$/.test(n)) continue;
    try {
      const r = parseRegistration(readFileSync(join(dir, n), 'utf8'));
      if (r && `${r.ino}.json` === n) out.push(r);
    } catch {
      /* removed meanwhile */
    }
  }
  return out;
}

/** Whether a registration's namespace still exists under its path (same inode). */
export function isLive(r: Registration): boolean {
  try {
    return netnsInode(r.netns) === r.ino;
  } catch {
    return false;
  }
}

/** Registers a namespace with its addresses. An address registered to another namespace that
 * still exists is a conflict (two containers never share an identity); a registration whose
 * namespace is gone is removed instead. Re-registering a namespace replaces its entry. The
 * check spans all networks while the directory is keyed by address alone (docs/security.md). */
export function register(stateDir: string, netnsPath: string, ips: string[], network = 'default', containerId?: string): Registration {
  const ino = netnsInode(netnsPath);
  const dir = netnsDir(stateDir);
  ensurePrivateDir(stateDir);
  ensurePrivateDir(dir);
  for (const other of readRegistrations(stateDir)) {
    if (other.ino === ino) continue;
    const shared = other.ips.filter((ip) => ips.includes(ip));
    if (!shared.length) continue;
    if (isLive(other)) throw new RegistryError(`${shared.join(', ')} already registered to network namespace ${other.netns} (inode ${other.ino}, network ${other.network})`);
    removeFile(join(dir, `${other.ino}.json`));
  }
  const reg: Registration = { netns: netnsPath, ino, ips, network, ...(containerId ? { containerId } : {}), at: new Date().toISOString() };
  writePrivateFile(join(dir, `${ino}.json`), JSON.stringify(reg) + '\n');
  return reg;
}

/** Removes the registration of a namespace (by its file) or of a container id. Returns what was removed. */
export function unregister(stateDir: string, by: { netnsPath?: string; containerId?: string }): Registration[] {
  let ino: number | undefined;
  if (by.netnsPath) {
    try {
      ino = netnsInode(by.netnsPath);
    } catch (err) {
      if (!by.containerId) throw err; // CNI DEL: the namespace may already be gone
    }
  }
  const gone = readRegistrations(stateDir).filter((r) => r.ino === ino || (by.containerId !== undefined && r.containerId === by.containerId));
  for (const r of gone) removeFile(join(netnsDir(stateDir), `${r.ino}.json`));
  return gone;
}

function removeFile(path: string): void {
  try {
    unlinkSync(path);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
}

/** Writes via a fresh temporary file (O_EXCL|O_NOFOLLOW, mode 0600) renamed into place, so a
 * reader never sees half a file and a planted link is never followed. */
function writePrivateFile(path: string, text: string): void {
  const tmp = `${path}.${process.pid}.tmp`;
  removeFile(tmp);
  const fd = openSync(tmp, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, 0o600);
  try {
    writeSync(fd, text);
    if (fstatSync(fd).mode & 0o077) throw new RegistryError(`${tmp} was created with a loose mode`);
  } finally {
    closeSync(fd);
  }
  renameSync(tmp, path);
}
