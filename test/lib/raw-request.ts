// Sends one hand-made request to a router socket and prints the reply as JSON. Run inside a
// testbed namespace to ask "as" a container: node --import tsx test/lib/raw-request.ts
//   <socket> <CONNECT|LISTEN> <localIp> <localPort> <remoteIp> <remotePort>
import { native, READABLE } from '../../src/native.js';
import { decode, emptyMsg, encode, ipv4ToWire, MSG_SIZE, MsgType } from '../../src/protocol/codec.js';

export function rawRequest(socket: string, bytes: Buffer, fds: number[] = [], timeoutMs = 2000): Promise<{ reply?: ReturnType<typeof decode>; fds: number[]; closed?: boolean }> {
  const fd = native.seqpacketConnect(socket);
  if (fd < 0) return Promise.reject(new Error(`connect ${socket}: ${native.strerror(-fd)}`));
  native.sendMsg(fd, bytes, fds);
  return new Promise((resolve, reject) => {
    const finish = (v: { reply?: ReturnType<typeof decode>; fds: number[]; closed?: boolean } | Error) => {
      clearTimeout(timer);
      native.unwatch(w);
      native.close(fd);
      v instanceof Error ? reject(v) : resolve(v);
    };
    const timer = setTimeout(() => finish(new Error('no reply')), timeoutMs);
    const w = native.watch(fd, READABLE, () => {
      const r = native.recvMsg(fd, MSG_SIZE + 65536);
      if (typeof r === 'number') return finish({ fds: [], closed: true });
      finish({ reply: decode(r.data), fds: r.fds });
    });
  });
}

export function request(type: 'CONNECT' | 'LISTEN', local: [string, number], remote: [string, number]): Buffer {
  const m = emptyMsg(MsgType[type]);
  m.pid = process.pid;
  m.seq = 7;
  m.local_addr = ipv4ToWire(local[0]);
  m.local_port = local[1];
  m.remote_addr = ipv4ToWire(remote[0]);
  m.remote_port = remote[1];
  return encode(m);
}

if (process.argv[1]?.endsWith('raw-request.ts')) {
  const [socket, type, lip, lport, rip, rport] = process.argv.slice(2);
  const r = await rawRequest(socket, request(type as 'CONNECT' | 'LISTEN', [lip, Number(lport)], [rip, Number(rport)]));
  for (const fd of r.fds) native.close(fd);
  console.log(JSON.stringify({ status: r.reply?.status, flags: r.reply?.flags, type: r.reply?.type, gotFd: r.fds.length > 0 }));
}
