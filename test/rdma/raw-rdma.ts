// Run inside a container namespace (node --import tsx test/rdma/raw-rdma.ts <socket>): two
// sessions of one process talk to the router with hand-made RDMA requests and try to use each
// other's handles. Prints one JSON object with the status of every attempt.
import { fstatSync, ftruncateSync, openSync, unlinkSync } from 'node:fs';
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
// The doorbell page comes with RDMA_OPEN; the router maps it too, so it must not shrink.
const opened = await call(a, MsgType.RDMA_OPEN);
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
const mr = await call(a, MsgType.RDMA_REG_MR, [pd, 7], [0x10000, 4096, 0x10000]);
out.regOwn = mr.status;
out.deallocOther = (await call(b, MsgType.RDMA_DEALLOC_PD, [pd])).status;
out.regOnOtherPd = (await call(b, MsgType.RDMA_REG_MR, [pd, 7], [0x10000, 4096, 0x10000])).status;
out.deregOther = (await call(b, MsgType.RDMA_DEREG_MR, [mr.h[0]])).status;
out.cqWithoutFd = (await call(b, MsgType.RDMA_CREATE_CQ, [16, 0])).status;
out.qpOnOtherPd = (await call(b, MsgType.RDMA_CREATE_QP, [pd, 1, 1, 2, 16, 16], [], [openSync('/dev/null', 'r')])).status;
out.modifyUnknownQp = (await call(b, MsgType.RDMA_MODIFY_QP, [0xabcdef, 1, 3])).status;
out.zeroLengthMr = (await call(a, MsgType.RDMA_REG_MR, [pd, 1], [0x10000, 0, 0x10000])).status;
out.remoteWriteWithoutLocalWrite = (await call(a, MsgType.RDMA_REG_MR, [pd, 2], [0x10000, 4096, 0x10000])).status;
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
out.mrUnsealedView = (await call(a, MsgType.RDMA_REG_MR, [pd2, 7, 16, 0], [0x100000, 1 << 20, 0x100000, 0x100000], [unsealed()])).status;
out.afterwards = (await call(a, MsgType.RDMA_DEALLOC_PD, [pd2])).status;
console.log(JSON.stringify(out));
a.close();
b.close();
process.exit(0);
