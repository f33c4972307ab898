// Sends one hand-made request to a router socket and prints the reply as JSON. Run inside a
// testbed namespace to ask "as" a container: node --import tsx test/lib/raw-request.ts
//   <socket> <CONNECT|LISTEN> <localIp> <localPort> <remoteIp> <remotePort>
import { native } from '../../src/native.js';
import { emptyMsg, encode, ipv4ToWire, MsgType, type WireMsg } from '../../src/protocol/codec.js';
import { RawSession } from './raw-session.js';

export async function rawRequest(socket: string, bytes: Buffer, fds: number[] = [], timeoutMs = 2000): Promise<{ reply?: WireMsg; fds: number[]; closed?: boolean }> {
  const s = new RawSession(socket, timeoutMs);
  try {
    const r = await s.raw(bytes, fds);
    return r.closed ? { fds: [], closed: true } : { reply: r.msg, fds: r.fds };
  } finally {
    s.close();
  }
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
