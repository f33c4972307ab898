// Run inside a container namespace (node --import tsx test/rdma/raw-rdma.ts <socket>): two
// sessions of one process talk to the router with hand-made RDMA requests and try to use each
// other's handles. Prints one JSON object with the status of every attempt.
import { fstatSync, ftruncateSync, openSync, readFileSync, unlinkSync } from 'node:fs';
import { constants } from 'node:os';
import { native } from '../../src/native.js';
import { MsgType } from '../../src/protocol/codec.js';
import { RawSession } from '../lib/raw-session.js';

const socket = process.argv[2];
let seq = 1;
const a = new RawSession(socket);
const b = new RawSession(socket);
const call = (s: RawSession, type: number, h: number[] = [], v: number[] = [], fds: number[] = [], payload?: Buffer) => s.call(type, h, v, fds, payload);

const out: Record<string, number> = {};
// An MR must lie in the caller's own mapped memory (docs/security-rdma-memory.md): the start of
// a private read-write mapping of at least 1 MiB of this process.
const rw = readFileSync('/proc/self/maps', 'utf8').split('\n').map((l) => /^([0-9a-f]+)-([0-9a-f]+) rw-p/.exec(l)).find((m) => m && parseInt(m[2], 16) - parseInt(m[1], 16) >= 1 << 20);
const here = rw ? parseInt(rw[1], 16) : 0;
// The doorbell page comes with RDMA_OPEN; the router maps it too, so it must not shrink. With
// the request goes this process's /proc/self/mem, as the verbs library sends it.
const opened = await call(a, MsgType.RDMA_OPEN, [], [], [openSync('/proc/self/mem', 'r+')]);
const bell = opened.fds[0] ?? -1;
out.doorbellBytes = bell >= 0 ? fstatSync(bell).size : -1;
try {
  ftruncateSync(bell, 0);
  out.doorbellShrink = 0;
} catch (e) {
  out.doorbellShrink = -(constants.errno[(e as NodeJS.ErrnoException).code as keyof typeof constants.errno] ?? 1000);
}
opened.fds.forEach((f) => native.close(f));
await call(b, MsgType.RDMA_OPEN);
const pd = (await call(a, MsgType.RDMA_ALLOC_PD)).h[0];
const mr = await call(a, MsgType.RDMA_REG_MR, [pd, 7], [here, 4096, here]);
out.regOwn = mr.status;
out.deallocOther = (await call(b, MsgType.RDMA_DEALLOC_PD, [pd])).status;
out.regOnOtherPd = (await call(b, MsgType.RDMA_REG_MR, [pd, 7], [here, 4096, here])).status;
out.deregOther = (await call(b, MsgType.RDMA_DEREG_MR, [mr.h[0]])).status;
out.cqWithoutFd = (await call(b, MsgType.RDMA_CREATE_CQ, [16, 0])).status;
out.qpOnOtherPd = (await call(b, MsgType.RDMA_CREATE_QP, [pd, 1, 1, 2, 16, 16], [], [openSync('/dev/null', 'r')])).status;
out.modifyUnknownQp = (await call(b, MsgType.RDMA_MODIFY_QP, [0xabcdef, 1, 3])).status;
out.zeroLengthMr = (await call(a, MsgType.RDMA_REG_MR, [pd, 1], [here, 0, here])).status;
out.remoteWriteWithoutLocalWrite = (await call(a, MsgType.RDMA_REG_MR, [pd, 2], [here, 4096, here])).status;
out.shortPayload = (await call(b, MsgType.RDMA_DEALLOC_PD, [], [], [], Buffer.alloc(3))).status;
out.busyPd = (await call(a, MsgType.RDMA_DEALLOC_PD, [pd])).status;
out.deregOwn = (await call(a, MsgType.RDMA_DEREG_MR, [mr.h[0]])).status;
out.deallocOwn = (await call(a, MsgType.RDMA_DEALLOC_PD, [pd])).status;
// Files without seals (a plain tmpfs file), big enough for what they claim to hold.
const unsealed = () => {
  const path = `/dev/shm/ff-raw-${process.pid}-${seq++}`;
  const fd = openSync(path, 'w+');
  ftruncateSync(fd, 1 << 20);
  unlinkSync(path);
  return fd;
};
out.cqUnsealedFile = (await call(a, MsgType.RDMA_CREATE_CQ, [16, 0], [], [unsealed()])).status;
const pd2 = (await call(a, MsgType.RDMA_ALLOC_PD)).h[0];
out.mrUnsealedView = (await call(a, MsgType.RDMA_REG_MR, [pd2, 7, 16, 0], [here, 1 << 20, here, here], [unsealed()])).status;
out.afterwards = (await call(a, MsgType.RDMA_DEALLOC_PD, [pd2])).status;
console.log(JSON.stringify(out));
a.close();
b.close();
process.exit(0);
