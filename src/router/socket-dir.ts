// The socket directory is shared with containers (they connect to the router's socket there and
// load libfsocket.so from it), so the router must never be turned against the host through it:
// it must be a real directory (not a link a container planted) that only root can write, and the
// socket path in it is replaced only if it is a socket (native seqpacketListen). Containers mount
// it read-only (docker/README.md); connecting to a Unix socket needs no write access to the mount.
import { lstatSync, mkdirSync } from 'node:fs';

/** Throws with what to do unless dir is fit to hold the router's socket at socketPath. */
export function checkSocketDir(dir: string, socketPath: string): void {
  mkdirSync(dir, { recursive: true, mode: 0o755 });
  const st = lstatSync(dir);
  if (st.isSymbolicLink() || !st.isDirectory()) throw new Error(`socket directory ${dir} is not a directory (a symlink is refused); give --socket-dir a real directory`);
  if (process.getuid?.() === 0 && st.uid !== 0) throw new Error(`socket directory ${dir} is owned by uid ${st.uid}, not root: chown root ${dir}`);
  if (st.mode & 0o022) throw new Error(`socket directory ${dir} is writable by group or others (mode ${(st.mode & 0o777).toString(8)}): chmod go-w ${dir}`);
  let at;
  try {
    at = lstatSync(socketPath);
  } catch {
    return; // nothing there yet
  }
  if (!at.isSocket()) throw new Error(`${socketPath} exists and is not a socket (a planted link or file?); the router replaces only a stale socket: remove it and start again`);
}
