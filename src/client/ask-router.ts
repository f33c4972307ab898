// One request to a router over its FreeFlow socket and its one reply, for the host-side tools
// (`freeflow status`, `register`, the CNI plugin). Containers' requests come from libfsocket.
import { native, READABLE, errnoText } from '../native.js';
import { decode, emptyMsg, encode, MSG_SIZE, type WireMsg } from '../protocol/codec.js';

export class NoRouter extends Error {}

/** Sends a request of `type`; resolves with the reply and its payload. Rejects with NoRouter if
 * nothing listens at `path`, or an Error if the router closes or stays silent. */
export function askRouter(path: string, type: number, timeoutMs: number, maxReply = MSG_SIZE): Promise<{ reply: WireMsg; payload: Buffer }> {
  const fd = native.seqpacketConnect(path);
  if (fd < 0) return Promise.reject(new NoRouter(`no router at ${path}: ${errnoText(fd)}`));
  const req = emptyMsg(type);
  req.pid = process.pid;
  req.seq = 1;
  native.sendMsg(fd, encode(req));
  return new Promise((resolve, reject) => {
    const done = (err?: Error, value?: { reply: WireMsg; payload: Buffer }) => {
      clearTimeout(timer);
      native.unwatch(watch);
      native.close(fd);
      if (err) reject(err);
      else resolve(value!);
    };
    const timer = setTimeout(() => done(new Error(`router at ${path} did not answer`)), timeoutMs);
    const watch = native.watch(fd, READABLE, () => {
      const r = native.recvMsg(fd, maxReply);
      if (typeof r === 'number') return done(new Error(`router closed the connection (${r < 0 ? errnoText(r) : 'EOF'})`));
      const reply = decode(r.data);
      done(undefined, { reply, payload: r.data.subarray(MSG_SIZE, MSG_SIZE + reply.payload_len) });
    });
  });
}
