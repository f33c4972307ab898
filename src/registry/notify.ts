// Tells a running router that the namespace registry changed (REGISTRY_CHANGED), so that a
// registration counts from the next request on. A router that is not running reads the
// registry when it starts, so "no router" is not an error for the writers.
import { native, READABLE, errnoText } from '../native.js';
import { decode, emptyMsg, encode, MSG_SIZE, MsgType, Reply } from '../protocol/codec.js';

export type NotifyResult = 'reloaded' | 'no-router' | 'refused';

export function notifyRouter(socketPath: string, timeoutMs = 3000): Promise<NotifyResult> {
  const fd = native.seqpacketConnect(socketPath);
  if (fd < 0) return Promise.resolve('no-router');
  const req = emptyMsg(MsgType.REGISTRY_CHANGED);
  req.pid = process.pid;
  req.seq = 1;
  native.sendMsg(fd, encode(req));
  return new Promise((resolve, reject) => {
    const done = (err?: Error, value?: NotifyResult) => {
      clearTimeout(timer);
      native.unwatch(watch);
      native.close(fd);
      if (err) reject(err);
      else resolve(value!);
    };
    const timer = setTimeout(() => done(new Error(`router at ${socketPath} did not answer`)), timeoutMs);
    const watch = native.watch(fd, READABLE, () => {
      const r = native.recvMsg(fd, MSG_SIZE);
      if (typeof r === 'number') return done(new Error(`router closed the connection (${r < 0 ? errnoText(r) : 'EOF'})`));
      const m = decode(r.data);
      done(undefined, m.type === MsgType.REPLY && m.status === Reply.ACCEL ? 'reloaded' : 'refused');
    });
  });
}
