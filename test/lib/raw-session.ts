// A hand-made router client for the tests that talk to the router without libfsocket or
// libibverbs (raw-request.ts, listen-many.ts, test/rdma/raw-*.ts): one router session (socket
// connection) sending requests, possibly many at once, and taking the replies in order.
import { native, READABLE } from '../../src/native.js';
import { decode, emptyMsg, encode, FF_RDMA_ARGS_SIZE, MSG_SIZE, type WireMsg } from '../../src/protocol/codec.js';

/** A reply: its header (msg), and for RDMA mode the handles of its ff_rdma_args payload (h). */
export interface Reply { status: number; msg?: WireMsg; h: number[]; fds: number[]; payload: Buffer; closed?: boolean }

/** The ff_rdma_args payload of a request: six u32 handles, four u64 values. */
export function rdmaArgs(h: number[] = [], v: (number | bigint)[] = []): Buffer {
  const b = Buffer.alloc(FF_RDMA_ARGS_SIZE);
  h.forEach((x, i) => b.writeUInt32LE(x >>> 0, i * 4));
  v.forEach((x, i) => b.writeBigUInt64LE(BigInt(x), 24 + i * 8));
  return b;
}

export class RawSession {
  private seq = 1;
  private readonly waiting: { resolve: (r: Reply) => void; timer: NodeJS.Timeout }[] = [];
  private readonly watchId: number;
  readonly fd: number;
  closed = false;

  constructor(readonly socket: string, private readonly timeoutMs = 5000) {
    this.fd = native.seqpacketConnect(socket);
    if (this.fd < 0) throw new Error(`connect ${socket}: ${native.strerror(-this.fd)}`);
    this.watchId = native.watch(this.fd, READABLE, () => this.readable());
  }

  private readable(): void {
    for (;;) {
      const r = native.recvMsg(this.fd, MSG_SIZE + 65536);
      if (r === -11) return; // EAGAIN
      if (typeof r === 'number' || r.data.length === 0) {
        this.closed = true;
        native.unwatch(this.watchId);
        for (const w of this.waiting.splice(0)) {
          clearTimeout(w.timer);
          w.resolve({ status: 0, h: [], fds: [], payload: Buffer.alloc(0), closed: true });
        }
        return;
      }
      const w = this.waiting.shift();
      const p = r.data.subarray(MSG_SIZE);
      const msg = decode(r.data);
      const reply: Reply = { status: msg.status, msg, h: [0, 1, 2, 3, 4, 5].map((i) => (p.length >= (i + 1) * 4 ? p.readUInt32LE(i * 4) : 0)), fds: r.fds, payload: p };
      if (!w) {
        native.closeAll(r.fds);
        continue;
      }
      clearTimeout(w.timer);
      w.resolve(reply);
    }
  }

  /** Sends bytes as one message (anything, also malformed) and waits for the next reply. */
  raw(bytes: Buffer, fds: number[] = []): Promise<Reply> {
    if (this.closed) return Promise.resolve({ status: 0, h: [], fds: [], payload: Buffer.alloc(0), closed: true });
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no reply from ${this.socket}`)), this.timeoutMs);
      this.waiting.push({ resolve, timer });
      const n = native.sendMsg(this.fd, bytes, fds);
      if (n < 0) {
        this.waiting.pop();
        clearTimeout(timer);
        reject(new Error(`send: ${native.strerror(-n)}`));
      }
    });
  }

  /** One well-formed request: header fields from hdr, then args (or payload as given). */
  call(type: number, h: number[] = [], v: (number | bigint)[] = [], fds: number[] = [], payload?: Buffer, hdr: Partial<WireMsg> = {}): Promise<Reply> {
    const m = Object.assign(emptyMsg(type), hdr);
    m.seq = this.seq++;
    m.pid = process.pid;
    return this.raw(encode(m, payload ?? rdmaArgs(h, v)), fds);
  }

  /** status of each of n requests made by make(i), at most `window` outstanding at a time. */
  async many(n: number, make: (i: number) => Promise<Reply>, window = 32): Promise<Reply[]> {
    const out: Reply[] = [];
    for (let i = 0; i < n; i += window) out.push(...(await Promise.all(Array.from({ length: Math.min(window, n - i) }, (_, k) => make(i + k)))));
    return out;
  }

  close(): void {
    if (!this.closed) native.unwatch(this.watchId);
    this.closed = true;
    native.close(this.fd);
  }
}
