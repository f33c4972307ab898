// Run inside a container namespace (node --import tsx test/rdma/raw-caps.ts <socket>): one
// process fills its container's caps with hand-made requests, rdma_cm ids and event channels
// included, passing the same descriptor again and again, and checks that every creation past
// a cap fails with a clear errno while the router keeps answering. The caps hold for the
// container across all its sessions (src/router/rdma/tenancy.ts). Prints one JSON object.
import { openSync } from 'node:fs';
import { native } from '../../src/native.js';
import { MsgType } from '../../src/protocol/codec.js';
import { RawSession, type Reply } from '../lib/raw-session.js';

const socket = process.argv[2];
const out: Record<string, unknown> = {};
const stats = async (s: RawSession) => JSON.parse((await s.call(MsgType.RDMA_STATS)).payload.toString());
const okCount = (rs: Reply[]) => rs.filter((r) => r.status === 0).length;
const firstError = (rs: Reply[]) => rs.find((r) => r.status !== 0)?.status ?? 0;
const anyFd = openSync('/dev/null', 'r'); // every request carries a new duplicate of it

const a = new RawSession(socket, 20_000);
await a.call(MsgType.RDMA_OPEN).then((r) => native.closeAll(r.fds));
const before = await stats(a);
const { objectsPerContainer, fdsPerContainer } = before.limits;
out.limits = before.limits;

// 1. Event channels, each keeping a descriptor in the router: at most fdsPerContainer.
const chans = await a.many(fdsPerContainer + 8, () => a.call(MsgType.CM_CREATE_CHANNEL, [], [], [anyFd]));
out.cmChannelsCreated = okCount(chans);
out.cmChannelOverCap = firstError(chans);
out.compChannelOverCap = (await a.call(MsgType.RDMA_CREATE_CHANNEL, [], [], [anyFd])).status; // the same cap
out.routerFdsHeld = (await stats(a)).fds - before.fds;
// Destroying them closes the router's descriptors (a create/destroy loop must not leak).
const destroyed = await a.many(chans.length, (i) => a.call(MsgType.CM_DESTROY_CHANNEL, [chans[i].h[0]]));
out.cmChannelsDestroyed = okCount(destroyed.filter((_, i) => chans[i].status === 0));
out.routerFdsAfterDestroy = (await stats(a)).fds - before.fds;
const again = await a.many(fdsPerContainer, () => a.call(MsgType.CM_CREATE_CHANNEL, [], [], [anyFd]));
out.cmChannelsAgain = okCount(again);
await a.many(again.length, (i) => a.call(MsgType.CM_DESTROY_CHANNEL, [again[i].h[0]]));

// 2. rdma_cm ids on one channel: they count against the container's object cap with the verbs
// objects.
const ch = (await a.call(MsgType.CM_CREATE_CHANNEL, [], [], [anyFd])).h[0];
const t0 = Date.now();
const ids = await a.many(objectsPerContainer, () => a.call(MsgType.CM_CREATE_ID, [ch, 0x106]), 64);
out.idMs = Date.now() - t0;
out.cmIdsCreated = okCount(ids);
out.cmIdOverCap = firstError(ids);
out.pdOverCap = (await a.call(MsgType.RDMA_ALLOC_PD)).status;
out.destroyOneId = (await a.call(MsgType.CM_DESTROY_ID, [ids[0].h[0]])).status;
out.pdAfterDestroy = (await a.call(MsgType.RDMA_ALLOC_PD)).status;

// 3. Another session of the same container shares the cap: it gets ENOMEM too, until the
// first session is gone.
const b = new RawSession(socket);
await b.call(MsgType.RDMA_OPEN).then((r) => native.closeAll(r.fds));
out.otherSessionPd = (await b.call(MsgType.RDMA_ALLOC_PD)).status;
a.close();
for (let i = 0; i < 50; i++) {
  out.otherSessionPdAfterClose = (await b.call(MsgType.RDMA_ALLOC_PD)).status;
  if (out.otherSessionPdAfterClose === 0) break;
  await new Promise((r) => setTimeout(r, 100));
}

// 4. Descriptors: all sessions of the container together keep at most fdsPerContainer
// channels in the router, however many sessions they open.
const base = await stats(b);
const sessions: RawSession[] = [];
let held = 0, capError = 0;
while (!capError && sessions.length < 12) {
  const s = new RawSession(socket, 20_000);
  sessions.push(s);
  await s.call(MsgType.RDMA_OPEN).then((r) => native.closeAll(r.fds));
  const rs = await s.many(fdsPerContainer / 4, () => s.call(MsgType.CM_CREATE_CHANNEL, [], [], [anyFd]));
  held += okCount(rs);
  capError = rs.length > okCount(rs) ? firstError(rs) : 0;
}
out.capHeld = held;
out.capError = capError;
out.sessionsUsed = sessions.length;
const st = await stats(b);
out.routerFdsAtCap = st.fds - base.fds;
for (const s of sessions) s.close();
// Their descriptors are closed with them: a new session gets a channel again.
const c = new RawSession(socket);
await c.call(MsgType.RDMA_OPEN).then((r) => native.closeAll(r.fds));
for (let i = 0; i < 50; i++) {
  out.channelAfterCap = (await c.call(MsgType.CM_CREATE_CHANNEL, [], [], [anyFd])).status;
  if (out.channelAfterCap === 0) break;
  await new Promise((r) => setTimeout(r, 100));
}
out.stillAnswers = (await c.call(MsgType.RDMA_ALLOC_PD)).status;
c.close();
b.close();
console.log(JSON.stringify(out));
process.exit(0);
