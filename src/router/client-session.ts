// One container process's connection to the router. Reads requests, asks the router for an
// answer, sends the reply (with an fd when there is one). Whatever arrives, the router stays
// up: malformed input gets a BAD_REQUEST fallback reply, never an exception.
import type { Logger } from '../log.js';
import { native, EAGAIN, READABLE, errnoText } from '../native.js';
import { decode, emptyMsg, encode, Fallback, Limits, MSG_SIZE, MsgType, Reply, WireError, type WireMsg } from '../protocol/codec.js';
import type { NetnsOwnership } from './netns.js';
import { MESSAGES_PER_TURN, type TurnBudget } from './tenant-caps.js';

/** What the kernel told the router about the process at the other end when it accepted it. */
export interface Peer {
  pid: number;
  uid: number;
  ownership: NetnsOwnership;
}

export interface Answer {
  reply: WireMsg;
  fd?: number; // sent with the reply, then closed in the router
  fds?: number[]; // several, likewise
  payload?: Buffer;
}

export interface RequestHandler {
  /** payload: bytes after the fixed record; fds: descriptors the client attached (the handler
   * owns them). Synchronous answers keep TCP-mode connect() latency minimal; extensions (RDMA)
   * may answer later. */
  handle(session: ClientSession, msg: WireMsg, payload: Buffer, fds: number[]): Answer | Promise<Answer>;
  sessionClosed?(session: ClientSession): void;
}

export { MESSAGES_PER_TURN };

export function fallback(reason: number): Answer {
  const reply = emptyMsg(MsgType.REPLY);
  reply.status = Reply.FALLBACK;
  reply.flags = reason;
  return { reply };
}

export class ClientSession {
  readonly pid: number;
  readonly uid: number;
  readonly ownership: NetnsOwnership;
  private watchId = 0;
  private closed = false;

  constructor(
    readonly fd: number,
    peer: Peer,
    private readonly handler: RequestHandler,
    private readonly log: Logger,
    private readonly onClose: (s: ClientSession) => void,
    /** The budget this session shares with the other sessions of its container (the router's). */
    private readonly fair?: { turns: TurnBudget; container: number },
  ) {
    this.pid = peer.pid;
    this.uid = peer.uid;
    this.ownership = peer.ownership;
  }

  start(): void {
    this.watchId = native.watch(this.fd, READABLE, () => this.readAll());
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    native.unwatch(this.watchId);
    native.close(this.fd);
    this.handler.sessionClosed?.(this);
    this.onClose(this);
  }

  private readAll(): void {
    // A budget per wake-up, and per turn for the whole container (fair draining, tenant-caps.ts):
    // the watch is level-triggered, so what is left is read on the next turn of the event loop,
    // after every other waiting client's turn.
    const fair = this.fair;
    for (let n = 0; n < MESSAGES_PER_TURN && !this.closed; n++) {
      if (fair && !fair.turns.has(fair.container)) return;
      const r = native.recvMsg(this.fd, MSG_SIZE + Limits.MAX_PAYLOAD);
      if (r === -EAGAIN) return;
      if (typeof r === 'number') {
        this.close();
        return;
      }
      fair?.turns.spend(fair.container);
      this.respond(r.data, r.fds, r.truncated);
    }
  }

  private respond(data: Buffer, fds: number[], truncated: boolean): void {
    const seq = data.length >= 12 ? data.readUInt32LE(8) : 0;
    let answer: Answer | Promise<Answer>;
    try {
      if (truncated) throw new WireError('message truncated');
      const msg = decode(data);
      if (data.length !== MSG_SIZE + msg.payload_len) throw new WireError(`message of ${data.length} bytes, header says ${MSG_SIZE}+${msg.payload_len}`);
      answer = this.handler.handle(this, msg, data.subarray(MSG_SIZE), fds);
    } catch (err) {
      native.closeAll(fds);
      answer = this.failed(err);
    }
    if (answer instanceof Promise) answer.catch((err) => this.failed(err)).then((a) => this.send(seq, a));
    else this.send(seq, answer);
  }

  private failed(err: unknown): Answer {
    const bad = err instanceof WireError;
    this.log.warn({ pid: this.pid, error: (err as Error).message }, bad ? 'malformed request' : 'request failed');
    return fallback(bad ? Fallback.BAD_REQUEST : Fallback.INTERNAL);
  }

  private send(seq: number, answer: Answer): void {
    const fds = answer.fds ?? (answer.fd !== undefined ? [answer.fd] : []);
    if (this.closed) {
      native.closeAll(fds);
      return;
    }
    answer.reply.seq = seq;
    const n = native.sendMsg(this.fd, encode(answer.reply, answer.payload), fds);
    native.closeAll(fds);
    if (n < 0) {
      this.log.warn({ pid: this.pid, error: errnoText(n) }, 'cannot reply; dropping client');
      this.close();
    }
  }
}
