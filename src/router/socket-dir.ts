// The socket directory is shared with containers (they connect to the router's socket there and
// load libfsocket.so from it), so the router must never be turned against the host through it:
// it must be a real directory (not a link a container planted) that only root can write, and the
// socket path in it is replaced only if it is a socket (native seqpacketListen, which also sets
// the socket's mode before the socket gets its public name). Containers mount it read-only
// (docker/README.md); connecting to a Unix socket needs no write access to the mount.
//
// Why "only root can write" is the whole guarantee: every later step (lstat of the socket path,
// bind, chmod, rename) names entries in this directory, and only a writer of the directory can
// create, replace or remove one. So the directory itself, and its parent (which could swap the
// whole directory), must be writable by root alone; a sticky parent such as /tmp is fine, since
// there only the owner of an entry (root) may rename or remove it.
import { lstatSync, mkdirSync, statSync, type Stats } from 'node:fs';
import { dirname } from 'node:path';

const STICKY = 0o1000;

/** Throws with what to do unless dir is fit to hold the router's socket at socketPath. */
export function checkSocketDir(dir: string, socketPath: string): void {
  mkdirSync(dir, { recursive: true, mode: 0o755 });
  const me = process.geteuid?.() ?? 0;
  const st = lstatSync(dir);
  if (st.isSymbolicLink() || !st.isDirectory()) throw new Error(`socket directory ${dir} is not a directory (a symlink is refused); give --socket-dir a real directory`);
  if (st.uid !== me) throw new Error(`socket directory ${dir} is owned by uid ${st.uid}, not by root (the router's user): chown root ${dir}, or give --socket-dir a directory only root can write`);
  if (st.mode & 0o022) throw new Error(`socket directory ${dir} is writable by group or others (mode ${modeText(st)}): chmod go-w ${dir} (containers mount it read-only; only the router writes there)`);
  const parent = dirname(dir);
  const up = statSync(parent); // where a link there leads: /var/run -> /run is fine
  if (up.mode & 0o022 && !(up.mode & STICKY)) {
    throw new Error(`the parent of socket directory ${dir}, ${parent}, is writable by group or others without the sticky bit (mode ${modeText(up)}), so the directory could be swapped: chmod go-w ${parent}, or use a directory under one only root can write`);
  }
  let at;
  try {
    at = lstatSync(socketPath);
  } catch {
    return; // nothing there yet
  }
  if (!at.isSocket()) throw new Error(`${socketPath} exists and is not a socket (a planted link or file?); the router replaces only a stale socket: remove it and start again`);
}

function modeText(st: Stats): string {
  return (st.mode & 0o7777).toString(8);
}
