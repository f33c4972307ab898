// One container process's connection to the router. Reads requests, asks the router for an
// answer, sends the reply (with an fd when there is one). Whatever arrives, the router stays
// up: malformed input gets a BAD_REQUEST fallback reply, never an exception.
import type { Logger } from '../log.js';
import { native, EAGAIN, READABLE, errnoText } from '../native.js';
import { decode, emptyMsg, encode, Fallback, MSG_SIZE, MsgType, Reply, WireError, type WireMsg } from '../protocol/codec.js';
import { NetnsOwnership } from './netns.js';

export interface Answer {
  reply: WireMsg;
  fd?: number; // sent with the reply, then closed in the router
  payload?: Buffer;
}

export interface RequestHandler {
  handle(session: ClientSession, msg: WireMsg): Answer;
}

export function fallback(reason: number): Answer {
  const reply = emptyMsg(MsgType.REPLY);
  reply.status = Reply.FALLBACK;
  reply.flags = reason;
  return { reply };
}

export class ClientSession {
  readonly ownership: NetnsOwnership;
  private watchId = 0;
  private closed = false;

  constructor(
    readonly fd: number,
    readonly pid: number,
    private readonly handler: RequestHandler,
    private readonly log: Logger,
    private readonly onClose: (s: ClientSession) => void,
  ) {
    this.ownership = new NetnsOwnership(pid);
  }

  start(): void {
    this.watchId = native.watch(this.fd, READABLE, () => this.readAll());
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    native.unwatch(this.watchId);
    native.close(this.fd);
    this.onClose(this);
  }

  private readAll(): void {
    while (!this.closed) {
      const r = native.recvMsg(this.fd, MSG_SIZE + 64);
      if (r === -EAGAIN) return;
      if (typeof r === 'number') {
        this.close();
        return;
      }
      for (const fd of r.fds) native.close(fd); // clients have no business sending us fds
      this.respond(r.data, r.truncated);
    }
  }

  private respond(data: Buffer, truncated: boolean): void {
    let answer: Answer;
    let seq = data.length >= 12 ? data.readUInt32LE(8) : 0;
    try {
      if (truncated || data.length !== MSG_SIZE) throw new WireError(`message of ${data.length} bytes, expected ${MSG_SIZE}`);
      const msg = decode(data);
      seq = msg.seq;
      answer = this.handler.handle(this, msg);
    } catch (err) {
      const bad = err instanceof WireError;
      this.log.warn({ pid: this.pid, error: (err as Error).message }, bad ? 'malformed request' : 'request failed');
      answer = fallback(bad ? Fallback.BAD_REQUEST : Fallback.INTERNAL);
    }
    answer.reply.seq = seq;
    const n = native.sendMsg(this.fd, encode(answer.reply, answer.payload), answer.fd !== undefined ? [answer.fd] : []);
    if (answer.fd !== undefined) native.close(answer.fd);
    if (n < 0) {
      this.log.warn({ pid: this.pid, error: errnoText(n) }, 'cannot reply; dropping client');
      this.close();
    }
  }
}
