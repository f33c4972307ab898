// Opens many connections to a router socket at once, as a hostile container would, and reports
// how many the router serves: each sends one CONNECT (to an address with no listener) and counts
// a reply or a close. Run inside a testbed namespace: node --import tsx many-sessions.ts SOCKET N IP
import { native } from '../../src/native.js';
import { decode, MSG_SIZE, MsgType } from '../../src/protocol/codec.js';
import { request } from './raw-request.js';

const [socket, count, ip] = process.argv.slice(2);
const fds: number[] = [];
for (let i = 0; i < Number(count); i++) {
  const fd = native.seqpacketConnect(socket);
  if (fd >= 0) fds.push(fd);
}
let served = 0;
let closed = 0;
let silent = 0;
const req = request('CONNECT', [ip, 0], ['10.244.9.9', 9]);
const sent = fds.map((fd) => native.sendMsg(fd, req) >= 0);
await new Promise((r) => setTimeout(r, 2000)); // the router answers (or closes) meanwhile
fds.forEach((fd, i) => {
  const r = sent[i] ? native.recvMsg(fd, MSG_SIZE + 4096) : 0; // non-blocking: -EAGAIN if no answer
  if (typeof r !== 'number' && decode(r.data).type === MsgType.REPLY) served++;
  else if (r === 0 || (typeof r === 'number' && r !== -11)) closed++;
  else silent++;
});
console.log(JSON.stringify({ opened: fds.length, served, closed, silent }));
// Held open until killed, so the test can check the router with all of them connected.
setInterval(() => {}, 1000);
