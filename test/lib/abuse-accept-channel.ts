// Abuses the library's side of an accelerated listener the way a hostile container could:
// LISTENs with a hand-made request, then sends junk over the accept channel (garbage bytes,
// ADMIT_MISS without a descriptor, with a descriptor that is no connection of the listener)
// and overwrites the shared admission table with random bytes. Prints what it did as JSON.
// Run inside a container namespace: node --import tsx test/lib/abuse-accept-channel.ts
//   <router socket> <own overlay ip> <port>
import { randomBytes } from 'node:crypto';
import { fstatSync, writeSync } from 'node:fs';
import { native } from '../../src/native.js';
import { emptyMsg, encode, MsgType } from '../../src/protocol/codec.js';
import { rawRequest, request } from './raw-request.js';

const [socket, ip, port] = process.argv.slice(2);
const r = await rawRequest(socket, request('LISTEN', [ip, Number(port)], ['0.0.0.0', 0]));
if (r.fds.length !== 3) {
  console.log(JSON.stringify({ fds: r.fds.length }));
  process.exit(1);
}
const [chan, hostListener, table] = r.fds;
const miss = encode({ ...emptyMsg(MsgType.ADMIT_MISS), pid: process.pid });
const pair = native.seqpacketPair();
const sent = [
  native.sendMsg(chan, randomBytes(50)),
  native.sendMsg(chan, miss),
  native.sendMsg(chan, miss, typeof pair === 'number' ? [] : [pair[0]]),
  native.sendMsg(chan, miss, [hostListener]),
  native.sendMsg(chan, encode({ ...emptyMsg(MsgType.ACCEPTED), pid: process.pid }), [table]),
];
const size = fstatSync(table).size;
for (let off = 0; off < size; off += 65536) writeSync(table, randomBytes(65536), 0, 65536, off);
// Give the router a moment to read it all before the channel closes.
await new Promise((res) => setTimeout(res, 300));
console.log(JSON.stringify({ sent, tableBytes: size }));
for (const fd of [...r.fds, ...(typeof pair === 'number' ? [] : pair)]) native.close(fd);
