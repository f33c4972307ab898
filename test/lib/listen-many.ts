// Asks a router for many accelerated listeners on ONE client connection, keeping every reply's
// descriptors open (a listener lives as long as its accept channel), and prints a JSON tally of
// the replies. Run inside a container namespace:
//   node --import tsx test/lib/listen-many.ts <socket> <ownIp> <firstPort> <count>
import { native, READABLE } from '../../src/native.js';
import { decode, MSG_SIZE } from '../../src/protocol/codec.js';
import { request } from './raw-request.js';

const [socket, ip, first, count] = process.argv.slice(2);
const fd = native.seqpacketConnect(socket);
if (fd < 0) throw new Error(`connect ${socket}: ${native.strerror(-fd)}`);
const kept: number[] = [];
const tally: Record<string, number> = {};
const reply = () =>
  new Promise<ReturnType<typeof decode>>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('no reply')), 5000);
    const w = native.watch(fd, READABLE, () => {
      const r = native.recvMsg(fd, MSG_SIZE + 65536);
      clearTimeout(timer);
      native.unwatch(w);
      if (typeof r === 'number') return reject(new Error(`router closed the connection (${r})`));
      kept.push(...r.fds);
      resolve(decode(r.data));
    });
  });
for (let i = 0; i < Number(count); i++) {
  native.sendMsg(fd, request('LISTEN', [ip, Number(first) + i], ['0.0.0.0', 0]));
  const m = await reply();
  const key = `status${m.status}/flags${m.flags}`;
  tally[key] = (tally[key] ?? 0) + 1;
}
console.log(JSON.stringify({ tally, fds: kept.length }));
native.closeAll(kept);
native.close(fd);
