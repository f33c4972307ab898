// The cluster key: 256 random bits every router of a cluster holds, with which routers prove
// to each other that they are routers (src/router/peer-auth.ts; docs/security.md ("Routers prove a cluster key")).
// A host address and a privileged source port prove nothing: a container's traffic leaving
// its host through masquerading NAT carries both.
//
// File format, one line (what `freeflow keygen` prints):
//   freeflow-cluster-key-v1 <64 lowercase or uppercase hex digits>
// The file must be private to its owner (no group or other permission bits), as ssh demands
// of private keys: whoever reads it can speak as a router.
import { randomBytes } from 'node:crypto';
import { closeSync, fstatSync, openSync, readFileSync } from 'node:fs';
import { PeerAuth } from '../protocol/codec.js';

export const KEY_FILE_TAG = 'freeflow-cluster-key-v1';
/** Where the docs and the messages suggest keeping it. */
export const DEFAULT_KEY_PATH = '/etc/freeflow/cluster.key';

export class ClusterKeyError extends Error {
  override name = 'ClusterKeyError';
}

/** The command that makes a key file, for messages. */
export function keygenHint(path = DEFAULT_KEY_PATH): string {
  return `freeflow keygen > ${path} && chmod 600 ${path}`;
}

/** A new key file's text (one line, newline-terminated). */
export function generateKeyFile(): string {
  return `${KEY_FILE_TAG} ${randomBytes(PeerAuth.KEY_SIZE).toString('hex')}\n`;
}

/** The key in a key file's text; `source` names the file in the error. */
export function parseKeyFile(text: string, source: string): Buffer {
  const hexLen = 2 * PeerAuth.KEY_SIZE;
  const m = new RegExp(`^${KEY_FILE_TAG} ([0-9a-fA-F]{${hexLen}})\\r?\\n?$`).exec(text);
  if (!m) throw new ClusterKeyError(`${source} is not a FreeFlow cluster key: expected one line "${KEY_FILE_TAG} <${hexLen} hex digits>" as \`freeflow keygen\` prints (make one with: ${keygenHint(source)})`);
  return Buffer.from(m[1], 'hex');
}

/** Reads and checks a key file: it exists, is a regular file, is private to its owner, and
 * holds a key. Mode and contents are read from one open descriptor, so a file swapped
 * between the two is not accepted. */
export function loadKeyFile(path: string): Buffer {
  let fd: number;
  try {
    fd = openSync(path, 'r');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') throw new ClusterKeyError(`cluster key file ${path} does not exist; make one on one host with: ${keygenHint(path)}, and copy it to every router's host`);
    if (code === 'EACCES') throw new ClusterKeyError(`cannot read cluster key file ${path}: permission denied (the router reads it as root)`);
    throw new ClusterKeyError(`cannot read cluster key file ${path}: ${code ?? (err as Error).message}`);
  }
  try {
    const st = fstatSync(fd);
    if (!st.isFile()) throw new ClusterKeyError(`cluster key file ${path} is not a regular file`);
    if (st.mode & 0o077)
      throw new ClusterKeyError(`cluster key file ${path} is accessible by group or others (mode ${(st.mode & 0o777).toString(8).padStart(4, '0')}); anyone who reads it can speak as a router: chmod 600 ${path}`);
    if (st.size > 4096) throw new ClusterKeyError(`${path} is not a FreeFlow cluster key (${st.size} bytes)`);
    return parseKeyFile(readFileSync(fd, 'utf8'), path);
  } finally {
    closeSync(fd);
  }
}

/** The key a router needs: with peers it must have one (routers talk only to routers that
 * prove it); alone it needs none, but a key file it is given must still be valid. */
export function clusterKeyFor(peers: string[], keyFile: string | undefined): Buffer | undefined {
  const key = keyFile ? loadKeyFile(keyFile) : undefined;
  if (peers.length && !key)
    throw new ClusterKeyError(
      `--peers given but no cluster key: routers accept only peers that prove they hold the cluster's shared key. ` +
        `Make one on one host with: ${keygenHint()}, copy that file (mode 600, root only) to every router's host, ` +
        `and pass --cluster-key-file ${DEFAULT_KEY_PATH} (env FFR_CLUSTER_KEY_FILE)`,
    );
  return key;
}
