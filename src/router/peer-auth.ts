// The handshake that opens every router-to-router connection (peer port here; the RDMA
// engines' port in native/rdma/peer_auth.cc): each end proves it holds the cluster key
// (src/router/cluster-key.ts) before the other honours a single frame. Sizes, label and
// roles are the wire spec's (PEER_AUTH in protocol/wire-spec.mjs), shared with the C++ side.
//
// Both ends send HELLO (magic, fresh random nonce) at once; on the other's HELLO each sends
// PROOF = HMAC-SHA256(key, LABEL | its role | dialler nonce | acceptor nonce | its own host
// address) and checks the other's. Both nonces make a proof good for one connection only; the
// role keeps an acceptor's proof from being replayed as a dialler's; the address ties it to
// the host it is seen from. It authenticates the connection's start only: docs/security.md ("Routers prove a cluster key").
import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import type { Socket } from 'node:net';
import { ipv4ToWire, PeerAuth } from '../protocol/codec.js';

export type PeerRole = 'dialler' | 'acceptor';

const ROLE_BYTE: Record<PeerRole, number> = { dialler: PeerAuth.ROLE_DIALLER, acceptor: PeerAuth.ROLE_ACCEPTOR };
const LABEL = Buffer.from(PeerAuth.LABEL, 'ascii');

export class PeerAuthError extends Error {
  override name = 'PeerAuthError';
}

/** What `role` at host `hostIp` sends to prove the key on the connection with these nonces. */
export function peerProof(key: Buffer, role: PeerRole, diallerNonce: Buffer, acceptorNonce: Buffer, hostIp: string): Buffer {
  return createHmac('sha256', key)
    .update(LABEL)
    .update(Buffer.from([ROLE_BYTE[role]]))
    .update(diallerNonce)
    .update(acceptorNonce)
    .update(ipv4ToWire(hostIp))
    .digest();
}

export interface HandshakeOptions {
  key: Buffer;
  role: PeerRole;
  /** This router's host address, and the other end's as this end sees it. */
  ownIp: string;
  peerIp: string;
}

/** One end of the handshake, without I/O: feed it what arrives, send what it returns. */
export class PeerHandshake {
  /** Send first. */
  readonly hello: Buffer;
  private readonly nonce = randomBytes(PeerAuth.NONCE_SIZE);
  private peerNonce?: Buffer;
  private buf: Buffer = Buffer.alloc(0);
  private done = false;
  private failed?: string;

  constructor(private readonly opts: HandshakeOptions) {
    if (opts.key.length !== PeerAuth.KEY_SIZE) throw new PeerAuthError(`cluster key must be ${PeerAuth.KEY_SIZE} bytes`);
    this.hello = Buffer.alloc(PeerAuth.HELLO_SIZE);
    this.hello.writeUInt32LE(PeerAuth.MAGIC, 0);
    this.nonce.copy(this.hello, 4);
  }

  /** Takes received bytes. Returns our proof to send (once, when the other's HELLO is in);
   * when the other end has proved the key, `rest`: the bytes after the handshake (frames); on a
   * wrong greeting or proof, `error`: send `send` if there is one (so that the other end can
   * tell a wrong key from a dead router), then close the connection. */
  push(chunk: Buffer): { send?: Buffer; rest?: Buffer; error?: string } {
    if (this.done) return { rest: chunk };
    if (this.failed) return { error: this.failed };
    this.buf = this.buf.length ? Buffer.concat([this.buf, chunk]) : chunk;
    const out: { send?: Buffer; rest?: Buffer; error?: string } = {};
    if (!this.peerNonce) {
      if (this.buf.length >= 4 && this.buf.readUInt32LE(0) !== PeerAuth.MAGIC) return this.fail(out, 'bad greeting (not a FreeFlow router, or another handshake version)');
      if (this.buf.length < PeerAuth.HELLO_SIZE) return out;
      this.peerNonce = Buffer.from(this.buf.subarray(4, PeerAuth.HELLO_SIZE));
      this.buf = this.buf.subarray(PeerAuth.HELLO_SIZE);
      out.send = this.proof(this.opts.role, this.opts.ownIp);
    }
    if (this.buf.length < PeerAuth.MAC_SIZE) return out;
    const theirs = this.buf.subarray(0, PeerAuth.MAC_SIZE);
    const expected = this.proof(this.opts.role === 'dialler' ? 'acceptor' : 'dialler', this.opts.peerIp);
    if (!timingSafeEqual(theirs, expected)) return this.fail(out, 'wrong proof (no cluster key, or a different one)');
    this.done = true;
    out.rest = this.buf.subarray(PeerAuth.MAC_SIZE);
    this.buf = Buffer.alloc(0);
    return out;
  }

  private fail<T extends { error?: string }>(out: T, why: string): T {
    this.failed = out.error = why;
    this.buf = Buffer.alloc(0);
    return out;
  }

  private proof(role: PeerRole, hostIp: string): Buffer {
    const [dn, an] = this.opts.role === 'dialler' ? [this.nonce, this.peerNonce!] : [this.peerNonce!, this.nonce];
    return peerProof(this.opts.key, role, dn, an, hostIp);
  }
}

/** Runs the handshake on a connected socket. Resolves with the bytes that followed it, the
 * socket paused: attach the frame reader, then resume(). Rejects with a PeerAuthError on a
 * failed proof, garbage, a close, or no proof within PeerAuth.TIMEOUT_MS; the caller closes. */
export function authenticatePeer(socket: Socket, opts: HandshakeOptions, timeoutMs: number = PeerAuth.TIMEOUT_MS): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const hs = new PeerHandshake(opts);
    const finish = (err: Error | undefined, rest?: Buffer) => {
      clearTimeout(timer);
      socket.off('data', onData);
      socket.off('close', onClose);
      socket.off('error', onError);
      if (err) reject(err);
      else {
        socket.pause();
        resolve(rest!);
      }
    };
    const onData = (chunk: Buffer) => {
      const { send, rest, error } = hs.push(chunk);
      if (send) socket.write(send);
      if (error) finish(new PeerAuthError(error));
      else if (rest) finish(undefined, rest);
    };
    const onClose = () => finish(new PeerAuthError('closed during the handshake'));
    const onError = (err: Error) => finish(new PeerAuthError(`connection error during the handshake: ${err.message}`));
    const timer = setTimeout(() => finish(new PeerAuthError(`no proof within ${timeoutMs} ms`)), timeoutMs);
    socket.on('data', onData);
    socket.on('close', onClose);
    socket.on('error', onError);
    socket.write(hs.hello);
  });
}
